#!/usr/bin/env bash
# Prints the path of NVIDIA's PTX assembler, fetching it once: ptxas, cuobjdump and nvdisasm from
# CUDA 11.8 (Debian 12's non-free nvidia-cuda-toolkit package, unpacked, not installed). No GPU and
# no driver are needed. CUDA 11.8 reads PTX ISA up to 7.8, so the checks generate ISA 7.8 PTX.
#   ptxas=$(tools/cuda/ptxas.sh) && "$ptxas" -arch=sm_90 -v kernel.ptx -o kernel.cubin
# PTXAS_CACHE overrides the folder (default /var/cache/cuda-11.8-bin); needs root the first time.
set -euo pipefail
cache=${PTXAS_CACHE:-/var/cache/cuda-11.8-bin}
if [[ ! -x $cache/ptxas || ! -x $cache/cuobjdump ]]; then
    list=/etc/apt/sources.list.d/debian-non-free.sources
    if [[ ! -e $list ]]; then
        uri=$(grep -m1 -E '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}')
        printf 'Types: deb\nURIs: %s\nSuites: bookworm\nComponents: non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$list"
        apt-get update -qq >/dev/null
    fi
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq nvidia-cuda-toolkit >/dev/null 2>&1 && dpkg -x nvidia-cuda-toolkit_*.deb x)
    mkdir -p "$cache"
    cp "$tmp"/x/usr/bin/{ptxas,cuobjdump,nvdisasm} "$cache"/
    rm -rf "$tmp"
fi
echo "$cache/ptxas"
