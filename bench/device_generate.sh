#!/usr/bin/env bash
# Issue 13 on one lent GPU, in one `run` call of at most 9 minutes: the project's generation rows
# (explain at batch 1, sampled candidates at batch 1 / 8 / 32) on the Qwen2.5-VL-7B architecture
# with random weights, then the peer (plain transformers `generate`) on the same card.
# Predictions it checks: bench/NOTES.md, "Generation at the speed of the hardware".
#
# Prepare in the repository root of the calling machine (/.anchors/ and /.whl/ are git-ignored):
#   mkdir -p .anchors && cp /work/shared/anchors/*.py .anchors/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.24.0 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   python3 -m pip wheel --no-deps --no-binary :all: antlr4-python3-runtime==4.9.3 -w .whl   # sdist only
# Then one device `run`: command "bash bench/device_generate.sh", carry [".anchors", ".whl"], timeout_s 600.
# `bash bench/device_generate.sh --tiny` runs the same steps with the tiny model on CPU (a dry run).
set -uo pipefail

out=${OUT:-/tmp/device-generate}
project=(--config experiments/paper.yaml model.path=)
peer=(1 8 32)
if [[ ${1:-} == --tiny ]]; then
  project=(model=tiny)
  peer=(--tiny 1 8 32)
fi
mkdir -p "$out"

if [[ -d .whl ]] && command -v nvidia-smi >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# The project: generation=auto is the static cache and the compiled decode step on CUDA. Explain
# runs first, so its peak memory is the model's and its own; compilation happens in each row's warm-up.
timeout 390 python3 -m cme_vlm.cli bench --only generate --out "$out/project" "${project[@]}" 2>&1 \
  | tee "$out/project.log"

# The peer: plain transformers generate, sampling 200 new tokens (its own warm-up of 4 tokens).
(cd .anchors && timeout 120 python3 anchor_generate.py "${peer[@]}" 2>&1) | grep RESULT | tee "$out/peer.txt"
