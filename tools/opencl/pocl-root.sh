#!/usr/bin/env bash
# Runs a command against a real OpenCL 3.0 runtime with the generic address space ILGPU's OpenCL
# backend needs: PoCL 6 (a CPU device) inside a Debian 13 root. Debian 12's PoCL 3.1 reports
# "Generic address space support: No", and ILGPU then lists no OpenCL device at all.
#
#   tools/opencl/pocl-root.sh CMD...    runs CMD (with bash -c) in the current folder, inside the root
#
# The first call builds the root (debootstrap from Debian's mirror, 1-5 minutes, ~400 MB, needs
# root); later calls reuse it. The .NET SDK, ~/.nuget, /tmp and the current folder are bind-mounted,
# the current folder at the same path, so `dotnet test --no-build` runs the build made outside.
# Inside, `ilgpu-bert devices` lists `opencl:0 cpu-...`. POCL_ROOT overrides the location.
set -euo pipefail
ROOT=${POCL_ROOT:-/var/cache/pocl-trixie}
if [[ ! -e $ROOT/.ready ]]; then
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    rm -rf "$ROOT"
    log=$(mktemp)
    debootstrap --variant=minbase trixie "$ROOT" >"$log" 2>&1 || { tail -5 "$log"; echo "debootstrap of the PoCL root failed" >&2; exit 1; }
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        pocl-opencl-icd clinfo libicu76 >/dev/null
    # ILGPU opens "libOpenCL.so", which only the -dev package would provide.
    ln -sf libOpenCL.so.1 "$ROOT/usr/lib/x86_64-linux-gnu/libOpenCL.so"
    touch "$ROOT/.ready"
fi
dotnet_dir=$(dirname "$(readlink -f "$(command -v dotnet)")")
here=$(pwd)
mounts=()
bind() {
    mkdir -p "$ROOT$2"
    if ! mountpoint -q "$ROOT$2"; then mount --bind "$1" "$ROOT$2"; mounts+=("$ROOT$2"); fi
}
cleanup() { for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || true; done; }
trap cleanup EXIT
bind /proc /proc
bind /dev /dev
bind /sys /sys
bind /tmp /tmp
bind "$dotnet_dir" /usr/share/dotnet
[[ $here == /tmp* ]] || bind "$here" "$here"
[[ -d $HOME/.nuget ]] && bind "$HOME/.nuget" /root/.nuget
chroot "$ROOT" env PATH=/usr/share/dotnet:/usr/bin:/bin DOTNET_ROOT=/usr/share/dotnet HOME=/root \
    DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 \
    ILGPU_BERT_TEST_DEVICES="${ILGPU_BERT_TEST_DEVICES:-}" ILGPU_BERT_REQUIRE_OPENCL="${ILGPU_BERT_REQUIRE_OPENCL:-}" \
    bash -c "cd '$here' && $*"
