#!/bin/bash
# One row of the pretraining study (perf/RESULTS.md, "Pretraining that transfers"): pretrain with the
# given flags (or, for a NAME starting with "random", `init` with them), then fine-tune the result on
# the embedded default task with every default and seeds 42, 1 and 2, and append the held-out
# accuracies to results.txt. Build first: dotnet build -c Release tools/IlgpuBert.Cli
#   perf/pretraining-study/run.sh NAME [pretrain or init flags...]
set -e
name=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$here/../../tools/IlgpuBert.Cli/bin/Release/net10.0}
out=${OUT:-/tmp/ilgpu-bert-study}/$name
rm -rf "$out"; mkdir -p "$out"
start=$(date +%s)
if [[ $name == random* ]]; then
  dotnet "$bin/ilgpu-bert.dll" init "$@" --out "$out/model" > "$out/pretrain.log" 2>&1
else
  dotnet "$bin/ilgpu-bert.dll" pretrain --out "$out/model" "$@" > "$out/pretrain.log" 2>&1
fi
mid=$(date +%s)
for s in ${SEEDS:-42 1 2}; do
  dotnet "$bin/ilgpu-bert.dll" finetune --model "$out/model" --seed "$s" --out "$out/ft$s" > "$out/ft$s.log" 2>&1
done
end=$(date +%s)
accs=$(for s in ${SEEDS:-42 1 2}; do grep -m1 '"accuracy"' "$out/ft$s/eval.json" | tr -dc '0-9.'; echo -n " "; done)
echo "$name pretrain=$((mid-start))s finetune=$((end-mid))s acc: $accs| $*" | tee -a "$here/results.txt"
