#!/usr/bin/env bash
# Issue 12 on one lent GPU, in one `run` call of at most 9 minutes: the project's SFT and DPO bench rows
# (experiments/paper.yaml: sft_paper and dpo_paper on the Qwen2.5-VL-7B architecture with random weights)
# then the peer (TRL's SFTTrainer without checkpointing, DPOTrainer with it) on the same card.
# Targets it checks (bench/NOTES.md, "Training on one card: the device run"): SFT >= 8,000 tokens/s,
# DPO >= 4,000 tokens/s, peak <= 70 GiB; the peer measured 5,306 and 1,579 tokens/s (issue 8).
#
# Prepare in the repository root of the calling machine (/.anchors/ and /.whl/ are git-ignored; the wheels are
# those bench/device_generate.sh carries plus the training stack's and the peer's, about 38 MB):
#   mkdir -p .anchors && cp /work/shared/anchors/*.py .anchors/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.24.0 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#     torch-optimi==0.3.3 wandb==0.31.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 typing-extensions==4.16.0 platformdirs==4.14.8 sniffio==1.3.1 \
#     opentelemetry-api==1.45.2 trl==1.16.0
#   python3 -m pip wheel --no-deps --no-binary :all: antlr4-python3-runtime==4.9.3 -w .whl   # sdist only
# Then one device `run`: command "bash bench/device_train.sh", carry [".anchors", ".whl"], timeout_s 600.
# `bash bench/device_train.sh --tiny` runs the same steps with the tiny model on CPU (a dry run).
set -uo pipefail

out=${OUT:-/tmp/device-train}
project=(--config experiments/paper.yaml model.path=)
peer=(--steps 10)
if [[ ${1:-} == --tiny ]]; then
  project=(--config experiments/paper.yaml model=tiny)
  peer=(--steps 3 --tiny)  # the peer's tiny model takes ~13 s a step on 2 CPU cores
fi
mkdir -p "$out"

site=/tmp/site
if [[ -d .whl ]] && command -v nvidia-smi >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl \
    || exit 1
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
else  # a CPU dry run: the local environment has the project's packages; the wheels are for Python 3.12
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/trl-*.whl || exit 1
fi
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
python3 -c "import torch, transformers, lightning, optimi; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'lightning', lightning.__version__, 'optimi', optimi.__version__)" | tee "$out/versions.txt"

# The project: sft_paper and dpo_paper as configured (bf16 weights, Kahan AdamW with gradient release,
# activation checkpointing, precomputed reference), each row on a freshly built model, 2 warm-up + 10 timed steps.
timeout 250 python3 -m cme_vlm.cli bench --only sft,dpo --steps 10 --out "$out/project" "${project[@]}" 2>&1 \
  | tee "$out/project.log"

# The peer: TRL 1.16, full fine-tuning, vision frozen; SFT without checkpointing, DPO with it (out of memory without).
for args in "sft full --no-gc:120" "dpo full:140"; do
  (cd .anchors && timeout "${args#*:}" python3 anchor_trl.py ${args%:*} "${peer[@]}" 2>&1) | grep RESULT
done | tee "$out/peer.txt"
