#!/usr/bin/env bash
# Every OpenCL kernel checked by Oclgrind for data races, barrier divergence, out-of-bounds and
# uninitialised accesses, on the launches the tests make:
#  1. builds tools/opencl/cl-capture.c as a libOpenCL.so that records each kernel launch (shape and
#     argument bytes) as an Oclgrind simulation, and checks the address-space rewrite Oclgrind needs
#     against the original kernel on PoCL, bit for bit;
#  2. runs the device tests on PoCL (tools/opencl/pocl-root.sh) with it loaded;
#  3. runs every capture under oclgrind-kernel (`ilgpu-bert bench oclgrind`), plus a planted race
#     that must be reported, and prints a line per kernel and then `N kernels, E errors`.
# Exits non-zero on any error. Needs root (the PoCL root), gcc and Debian's oclgrind (installed when
# missing). Takes ~6 minutes on 2 cores.
#
#   tools/opencl/oclgrind-check.sh [--no-build] [--captures DIR]
#       --no-build      use the test and CLI builds already there (Debug), as .ci/run does
#       --captures DIR  where the captures go (default: a fresh temporary folder)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=1
captures=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-build) build=0 ;;
        --captures) captures=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
captures=${captures:-$(mktemp -d /tmp/oclgrind-captures.XXXXXX)}
mkdir -p "$captures"
captures=$(readlink -f "$captures")
# Inside the PoCL root only /tmp and this folder are the same paths as outside.
[[ $captures == /tmp/* || $captures == "$(pwd)"/* ]] || { echo "--captures must be under /tmp or $(pwd)" >&2; exit 2; }
rm -f "$captures"/*.sim "$captures"/*.cl "$captures"/verify.log

for tool in oclgrind-kernel gcc; do
    if ! command -v $tool >/dev/null; then
        package=$([[ $tool == gcc ]] && echo gcc || echo oclgrind)
        echo "installing $package"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $package >/dev/null
    fi
done
if [[ $build == 1 ]]; then
    dotnet build tests/IlgpuBert.Tests -v q -nologo >/dev/null
    dotnet build tools/IlgpuBert.Cli -v q -nologo >/dev/null
fi

# The shim links against the PoCL root's ICD loader, which it forwards every other call to.
tools/opencl/pocl-root.sh true
root=${POCL_ROOT:-/var/cache/pocl-trixie}
shim=$(mktemp -d /tmp/cl-capture.XXXXXX)
gcc -O2 -Wall -Wextra -shared -fPIC -o "$shim/libOpenCL.so" tools/opencl/cl-capture.c \
    -Wl,--no-as-needed "$root/usr/lib/x86_64-linux-gnu/libOpenCL.so.1" -lpthread

echo "capturing the device tests' OpenCL launches into $captures"
ILGPU_BERT_TEST_DEVICES=opencl ILGPU_BERT_REQUIRE_OPENCL=1 tools/opencl/pocl-root.sh \
    "LD_LIBRARY_PATH=$shim CAPTURE_DIR=$captures CAPTURE_VERIFY=1 dotnet test --no-build --filter Category=Accelerators"
rm -rf "$shim"

echo "checking $(ls "$captures"/*.sim | wc -l) launches under Oclgrind"
dotnet tools/IlgpuBert.Cli/bin/Debug/net10.0/ilgpu-bert.dll bench oclgrind --captures "$captures"
