#!/usr/bin/env bash
# The one-command GPU check. On a machine with an NVIDIA GPU and only what tools/gpu/publish.sh ships
# (the self-contained app: the test suite, the benchmark runner, this script and the PyTorch peer;
# no .NET needed), it:
#  1. runs every device test (Category=Accelerators) on CUDA, against the double references;
#  2. runs the GPU benchmark set (IlgpuBert.Perf gpu): GEMM on BERT-base shapes beside cuBLAS, FP32 and
#     TF32 (libcublas loaded where it is found: CuBlas.cs), attention fused vs materialised, a BERT-base
#     training step;
#  3. where python3 has PyTorch with CUDA, times the same BertForPreTraining step there (FP32, TF32);
# and writes everything to one results file (atomically), the tests' summary first. Under 8 minutes on
# an H100. Exits non-zero when a test or the benchmarks fail.
#
#   app/check.sh [--out FILE] [--device cuda|cpu] [--quick] [--tests EXE] [--perf EXE]
#       --out      the results file (default: gpu-check.txt here)
#       --device   cpu with --quick is the dry run the test suite makes (GpuCheckTests) so this cannot rot
#       --quick    one small test class and the benchmarks' quick sizes
#       --tests/--perf  the two executables, when not beside this script (a build instead of a publish)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(pwd)/gpu-check.txt
device=cuda
quick=0
tests=$here/IlgpuBert.Tests
perf=$here/IlgpuBert.Perf
peer=$here/torch_bert_step.py
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=$2; shift ;;
        --device) device=$2; shift ;;
        --quick) quick=1 ;;
        --tests) tests=$2; shift ;;
        --perf) perf=$2; shift ;;
        *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
    esac
    shift
done
[[ $device == cuda || $device == cpu ]] || { echo "--device must be cuda or cpu, got $device" >&2; exit 2; }
for exe in "$tests" "$perf"; do
    [[ -x $exe ]] || { echo "$exe: not found or not executable (unpack tools/gpu/publish.sh's app, or pass --tests/--perf)" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=$work/results.txt
status=0
start=$SECONDS

{
    echo "# IlgpuBert GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), device $device"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "(no nvidia-smi)"
} >"$results"

if [[ $device == cuda ]]; then
    # ILGPU opens libcuda.so; drivers often install only libcuda.so.1.
    if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
        for lib in /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib64/libcuda.so.1; do
            if [[ -e $lib ]]; then
                mkdir -p "$work/lib" && ln -sf "$lib" "$work/lib/libcuda.so"
                export LD_LIBRARY_PATH=$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
                break
            fi
        done
    fi
    export ILGPU_BERT_TEST_DEVICES=cuda ILGPU_BERT_REQUIRE_CUDA=1
else
    export ILGPU_BERT_TEST_DEVICES=cpu-gpu-shaped
fi

echo "== device tests ($ILGPU_BERT_TEST_DEVICES)" | tee -a "$results"
filter=(-noColor -trait "Category=Accelerators")
[[ $quick == 1 ]] && filter+=(-class "IlgpuBert.Tests.ElementwiseTests")
timeout 300 "$tests" "${filter[@]}" >"$work/tests.log" 2>&1 || status=1
grep -E 'Total: [0-9]+' "$work/tests.log" | tail -1 | tee -a "$results"
grep -q 'Total: [0-9]' "$work/tests.log" || { echo "the test run printed no summary:"; tail -20 "$work/tests.log"; } | tee -a "$results"
grep -E '^\s*\[FAIL\]' "$work/tests.log" | head -40 | tee -a "$results"

echo "== benchmarks (IlgpuBert.Perf gpu)" | tee -a "$results"
bench=(gpu --device "$device" --out "$work/bench")
[[ $quick == 1 ]] && bench+=(--quick)
timeout 240 "$perf" "${bench[@]}" >"$work/bench.log" 2>&1 || { status=1; echo "the benchmarks failed:"; tail -20 "$work/bench.log"; } | tee -a "$results"
# The table the runner prints last: from its header line on.
sed -n '/^op  /,$p' "$work/bench.log" >>"$results"
[[ -f $work/bench/results.jsonl ]] && { echo; echo "results.jsonl:"; cat "$work/bench/results.jsonl"; } >>"$results"

echo "== PyTorch peer (the same BertForPreTraining step)" | tee -a "$results"
if [[ $device == cuda && -f $peer ]] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    size=(--size base --b 32 --s 128 --vocab 30522)
    [[ $quick == 1 ]] && size=(--size tiny --b 4 --s 32 --vocab 1000)
    for precision in "" --tf32; do
        timeout 120 python3 "$peer" "${size[@]}" --device cuda $precision 2>&1 | tail -1 | tee -a "$results"
    done
else
    echo "not run: $([[ $device == cuda ]] && echo 'no python3 with CUDA PyTorch' || echo 'not a CUDA run')" | tee -a "$results"
fi

echo "== $((SECONDS - start)) s, $([[ $status == 0 ]] && echo passed || echo FAILED)" | tee -a "$results"
mkdir -p "$(dirname "$out")"
cp "$results" "$out.tmp" && mv "$out.tmp" "$out"
echo "results: $out"
exit $status
