#!/usr/bin/env bash
# Packs the test suite and the benchmark runner as one self-contained linux-x64 app for a GPU
# machine without .NET (see ../shared/GPU.md): .gpu/app.txz, in the ignored .gpu/ folder, with the
# one-command check (tools/gpu/check.sh) and the PyTorch peer beside them.
# There:  mkdir -p /tmp/g && tar -C /tmp/g -xJf .gpu/app.txz
#         /tmp/g/app/check.sh --out $OUT/gpu-check.txt      # everything below, one results file
#         /tmp/g/app/IlgpuBert.Tests -namespace IlgpuBert.Tests -class IlgpuBert.Tests.GemmTests ...
#             kernel and model test classes run on CUDA too when a device is present; the classes that
#             read the .NET SDK's docs (pretraining, analysis, the README example) need the SDK and the
#             repository, which that machine lacks, so pick classes with -class
#         /tmp/g/app/IlgpuBert.Perf gpu --out $OUT   # benchmarks, a table last, results.jsonl
# Checked here: the packed tests (GemmTests, AttentionTests: 96 passed) and `gpu --quick` run from
# the unpacked folder on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu/app .gpu/app.txz
mkdir -p .gpu
for project in tests/IlgpuBert.Tests perf/IlgpuBert.Perf; do
    dotnet publish "$project" -c Release -r linux-x64 --self-contained \
        -p:InvariantGlobalization=true -p:DebugType=None -o .gpu/app
done
cp tools/gpu/check.sh perf/peers/torch_bert_step.py .gpu/app/
tar -C .gpu -cJf .gpu/app.txz app
rm -rf .gpu/app
ls -la .gpu/app.txz
