#!/usr/bin/env bash
# Issues 12, 20 and 23 on one lent GPU, in one `run` call of at most 9 minutes:
#   1. a smoke: the paper's training settings (experiments/paper.yaml: bf16-true, optimi's Kahan AdamW with gradient
#      release, activation checkpointing, precomputed reference) at the 7B widths with 2 decoder layers and 2 vision
#      blocks, 2 steps of SFT and of DPO; if it fails, the script prints why and stops;
#   2. the project's SFT and DPO rows on the Qwen2.5-VL-7B architecture with random weights ($OUT/project/bench.json,
#      rewritten after each row);
#   3. the peer on the same card: TRL's SFTTrainer without checkpointing, DPOTrainer with it ($OUT/peer.txt, a line
#      per row as it comes); 4. the ratios (cme_vlm.bench.compare).
# Targets (bench/NOTES.md): SFT >= 8,000 tokens/s, DPO >= 6,000 tokens/s, peak <= 70 GiB; the peer measured 5,306 and
# 1,579 tokens/s on an H100 (issue 8).
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
# `bash bench/device_train.sh --tiny [OVERRIDES]` runs the same steps with the tiny model on CPU (the peer only where
# .anchors/ holds its scripts); OVERRIDES (a.b=c) go to every cme-vlm call.
set -uo pipefail
tiny=0
if [[ ${1:-} == --tiny ]]; then
  tiny=1
  shift
fi
OUT=${OUT:-/tmp/device-train}
source "$(dirname "$0")/device_common.sh"

if ((tiny)); then
  project=(--config experiments/paper.yaml model=tiny bench.answer_tokens=16 "$@")
  smoke_shape=()
  steps=(--steps 1 bench.warmup_steps=0)
  peer_args=(--steps 3 --tiny)  # the peer's tiny model takes ~13 s a step on 2 CPU cores
else
  project=(--config experiments/paper.yaml model.path= "$@")
  smoke_shape=(model.architecture.text_config.num_hidden_layers=2 model.architecture.vision_config.depth=2
               "model.architecture.vision_config.fullatt_block_indexes=[1]")
  steps=(--steps 10)
  peer_args=(--steps 8)
fi

use_wheels
"$PYTHON" -c "import lightning, optimi; print('lightning', lightning.__version__, 'optimi', optimi.__version__)" \
  | tee -a "$out/versions.txt"

smoke 100 --only sft,dpo --steps 2 bench.warmup_steps=0 "${project[@]}" "${smoke_shape[@]}"

# The project: each row on a freshly built model, bench.warmup_steps (2) untimed steps, then the timed ones.
timeout 220 "$PYTHON" -m cme_vlm.cli bench --only sft,dpo "${steps[@]}" --out "$out/project" "${project[@]}" 2>&1 \
  | tee "$out/project.log"

# The peer: TRL 1.16, full fine-tuning, vision frozen; SFT without checkpointing, DPO with it (out of memory without).
peer 90 anchor_trl.py sft full --no-gc "${peer_args[@]}"
peer 100 anchor_trl.py dpo full "${peer_args[@]}"
compare
