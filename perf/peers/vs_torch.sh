#!/usr/bin/env bash
# Ours beside PyTorch on this machine, interleaved (ours, then PyTorch, per round), medians and ratios:
# GEMM GFLOP/s at 512³ and the BERT-base shapes (M=2048; K, N ∈ {768, 3072}; NN and NT), and the
# training step (B=16 S=128, masked MLM + NSP, AdamW) at each size. Not part of CI.
#
#   apt-get install python3-torch libopenblas0-pthread     # Debian's PyTorch 1.13 on OpenBLAS
#   bash perf/peers/vs_torch.sh [--rounds 3] [--sizes "tiny mini small base"] [--no-gemm] [--no-step]
#
# OpenBLAS picks its kernel from the CPU it detects; set OPENBLAS_CORETYPE to override, and say which.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=3 sizes="tiny mini small base" gemm=1 step=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --no-gemm) gemm=0; shift ;;
    --no-step) step=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
dotnet build -c Release tools/IlgpuBert.Cli -v q -nologo > /dev/null
ours="dotnet tools/IlgpuBert.Cli/bin/Release/net10.0/ilgpu-bert.dll"
py=/usr/bin/python3
$py -c "import torch" 2> /dev/null || { echo "PyTorch missing: apt-get install python3-torch libopenblas0-pthread" >&2; exit 1; }
field() { grep -o "\"$1\":[0-9.]*" | head -1 | cut -d: -f2; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; torch $($py -c 'import torch; print(torch.__version__)'), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto}; $rounds rounds"
if [ $gemm = 1 ]; then
  printf '%-22s %-28s %-28s %s\n' "GEMM (GFLOP/s)" "ours per round" "PyTorch per round" "ours/PyTorch (medians)"
  for shape in "512 512 512 NN" "2048 768 768 NN" "2048 768 768 NT" "2048 3072 768 NN" "2048 3072 768 NT" "2048 768 3072 NN" "2048 768 3072 NT"; do
    set -- $shape
    a="" b=""
    for r in $(seq "$rounds"); do
      a="$a $($ours bench gemm --device cpu --m $1 --n $2 --k $3 --trans $4 --json | field gflops)"
      b="$b $($py perf/peers/torch_matmul.py $1 $2 $3 $4)"
    done
    ma=$(echo $a | median); mb=$(echo $b | median)
    printf '%-22s %-28s %-28s %.2f×\n' "$1×$2×$3 $4" "$(printf '%.0f ' $a)" "$(printf '%.0f ' $b)" "$(echo "$ma / $mb" | bc -l)"
  done
fi
if [ $step = 1 ]; then
  printf '%-22s %-28s %-28s %s\n' "training step (ms)" "ours per round" "PyTorch per round" "ours/PyTorch tokens/s (medians)"
  for size in $sizes; do
    a="" b=""
    for r in $(seq "$rounds"); do
      a="$a $($ours bench bert-step --size $size --b 16 --s 128 --json | field ms)"
      b="$b $($py perf/peers/torch_bert_step.py --size $size --b 16 --s 128 | sed 's/.*: \([0-9.]*\) ms.*/\1/')"
    done
    ma=$(echo $a | median); mb=$(echo $b | median)
    printf '%-22s %-28s %-28s %.2f×\n' "$size" "$(printf '%.0f ' $a)" "$(printf '%.0f ' $b)" "$(echo "$mb / $ma" | bc -l)"
  done
fi
