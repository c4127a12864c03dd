#!/bin/bash
# Q8BERT's question for one pretrained model: does quantization-aware fine-tuning lose less accuracy
# in int8 than post-training quantization? Per seed: fine-tune in float and quantize it with
# calibration (post-training), fine-tune with --qat int8 and quantize it with its learned ranges;
# then `compare` all four on the default task's held-out split. Build first:
#   dotnet build -c Release tools/IlgpuBert.Cli
#   perf/analysis/qat_vs_ptq.sh MODEL_DIR OUT_DIR [finetune flags...]
set -e
model=$1; out=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$here/../../tools/IlgpuBert.Cli/bin/Release/net10.0}
cli() { dotnet "$bin/ilgpu-bert.dll" "$@"; }
mkdir -p "$out"
for s in ${SEEDS:-42 1 2}; do
  start=$(date +%s)
  cli finetune --model "$model" --seed "$s" --out "$out/float$s" --overwrite "$@" > "$out/float$s.log" 2>&1
  mid=$(date +%s)
  cli finetune --model "$model" --seed "$s" --qat int8 --out "$out/qat$s" --overwrite "$@" > "$out/qat$s.log" 2>&1
  end=$(date +%s)
  rm -rf "$out/ptq$s-int8" "$out/qat$s-int8"
  cli quantize --model "$out/float$s" --out "$out/ptq$s-int8" > /dev/null
  cli quantize --model "$out/qat$s" --out "$out/qat$s-int8" > /dev/null
  cli compare --models "$out/float$s" "$out/ptq$s-int8" "$out/qat$s" "$out/qat$s-int8" --latency-examples 5 --out "$out/compare$s.md" > /dev/null
  echo "seed $s: float fine-tuning $((mid-start)) s, QAT fine-tuning $((end-mid)) s"
  cat "$out/compare$s.md"
done
