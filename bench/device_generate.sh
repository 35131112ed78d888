#!/usr/bin/env bash
# Issues 13 and 23 on one lent GPU, in one `run` call of at most 9 minutes:
#   1. a smoke: generation as configured (static cache, the decode step compiled) at the 7B widths with 2 decoder
#      layers and 2 vision blocks, 4 new tokens at batch 1 and 2; if it fails, the script prints why and stops;
#   2. the project's rows (explain at batch 1, sampled candidates at batch 1 / 8 / 32) on the Qwen2.5-VL-7B
#      architecture with random weights ($OUT/project/bench.json, rewritten after each row);
#   3. the peer (plain transformers `generate`) on the same card ($OUT/peer.txt); 4. the ratios.
# Predictions it checks: bench/NOTES.md, "Generation at the speed of the hardware" and "Speed traps removed".
#
# Prepare in the repository root of the calling machine (/.anchors/ and /.whl/ are git-ignored):
#   mkdir -p .anchors && cp /work/shared/anchors/*.py .anchors/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.24.0 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   python3 -m pip wheel --no-deps --no-binary :all: antlr4-python3-runtime==4.9.3 -w .whl   # sdist only
# Then one device `run`: command "bash bench/device_generate.sh", carry [".anchors", ".whl"], timeout_s 600.
# `bash bench/device_generate.sh --tiny [OVERRIDES]` runs the same steps with the tiny model on CPU (the peer only
# where .anchors/ holds its scripts); OVERRIDES (a.b=c) go to every cme-vlm call.
set -uo pipefail
tiny=0
if [[ ${1:-} == --tiny ]]; then
  tiny=1
  shift
fi
OUT=${OUT:-/tmp/device-generate}
source "$(dirname "$0")/device_common.sh"

if ((tiny)); then
  project=(model=tiny bench.max_new_tokens=8 "bench.generation_batch_sizes=[1,2]" bench.generation_steps=1 "$@")
  smoke_shape=()
  peer_args=(--tiny 1 8 32)
else
  project=(--config experiments/paper.yaml model.path= "$@")
  smoke_shape=(model.architecture.text_config.num_hidden_layers=2 model.architecture.vision_config.depth=2
               "model.architecture.vision_config.fullatt_block_indexes=[1]")
  peer_args=(1 8 32)
fi

use_wheels
smoke 120 --only generate "${project[@]}" "${smoke_shape[@]}" bench.max_new_tokens=4 "bench.generation_batch_sizes=[2]" \
  bench.generation_steps=1

# The project: generation=auto is the static cache and the compiled decode step on CUDA. Explain runs first, so its
# peak memory is the model's and its own; compilation happens in each row's warm-up.
timeout 330 "$PYTHON" -m cme_vlm.cli bench --only generate --out "$out/project" "${project[@]}" 2>&1 \
  | tee "$out/project.log"

# The peer: plain transformers generate, sampling 200 new tokens (its own warm-up of 4 tokens).
peer 110 anchor_generate.py "${peer_args[@]}"
compare
