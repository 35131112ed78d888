# Sourced by bench/device_train.sh and bench/device_generate.sh: the Python to run, the carried wheels, the
# smoke that stops a device run early with its reason, and the peer's rows kept line by line.
#
# On the device machine the wheels in .whl/ (git-ignored; each script's header says which) go to /tmp/site.
# Elsewhere (`--tiny` on a CPU) the local environment has the project's packages and $PYTHON (default python3) runs.

PYTHON=${PYTHON:-python3}
out=${OUT:-/tmp/device-bench}
mkdir -p "$out"

use_wheels() {
  if [[ -d .whl ]] && command -v nvidia-smi >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
  elif compgen -G ".whl/trl-*.whl" >/dev/null; then  # a CPU dry run of the peer: TRL beside the local packages
    local site
    site=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/trl-*.whl || exit 1
    export PYTHONPATH=$site:$PWD
  fi
  export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee "$out/versions.txt"
}

# smoke SECONDS ARGS...: `cme-vlm bench ARGS --out $out/smoke`; if it fails, or a row is not measured (out of
# memory), print the reason and stop the script.
smoke() {
  local limit=$1
  shift
  echo "smoke: cme-vlm bench $*"
  local measured="import json, sys; rows = json.load(open('$out/smoke/bench.json'))['rows']
bad = [r['row'] + ': ' + r['status'] for r in rows if r['status'] != 'ok']
sys.exit('rows not measured: ' + ', '.join(bad) if bad else 0)"
  if ! timeout "$limit" "$PYTHON" -m cme_vlm.cli bench --out "$out/smoke" "$@" >"$out/smoke.log" 2>&1 \
    || ! "$PYTHON" -c "$measured" >>"$out/smoke.log" 2>&1; then
    echo "SMOKE FAILED: the measured rows and the peer are skipped. The end of $out/smoke.log:"
    tail -n 30 "$out/smoke.log"
    exit 1
  fi
  echo "smoke passed"
}

# peer SECONDS SCRIPT ARGS...: one peer script from .anchors/, its RESULT lines appended to $out/peer.txt as they come.
peer() {
  local limit=$1
  shift
  if [[ ! -d .anchors ]]; then
    echo "peer skipped: no .anchors/ (copy /work/shared/anchors/*.py there, as the header says)"
    return
  fi
  (cd .anchors && timeout "$limit" "$PYTHON" "$@" 2>&1) | grep --line-buffered RESULT | tee -a "$out/peer.txt"
}

compare() {
  "$PYTHON" -m cme_vlm.bench.compare "$out/project/bench.json" "$out/peer.txt"
}
