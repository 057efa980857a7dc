#!/usr/bin/env bash
# Run ON the lent GPU machine (after bench/gpu_prepare.sh here): installs the carried wheels, runs the check and
# leaves what must come back in $OUT: gpu_check.json, the console log with the table, nvidia-smi's view, and the
# subprocesses' logs and configs as one archive, also when the check fails or is stopped at its limit.
# Arguments go to bench/gpu_check.py (e.g. --steps 30), except --out: that is GPU_CHECK_DIR.
#
#   run(command='bash bench/gpu_run.sh', carry=['.whl'], timeout_s=540)      # the device tool's call
#   OUT=/tmp/out bash bench/gpu_run.sh --smoke --device cpu                   # the same path, here, on the CPU
# PYTHON (default python3, the machine's torch) runs everything; GPU_CHECK_DIR (default runs/gpu_check) is --out;
# GPU_RUN_LIMIT_S (default 500) stops the check in time for the logs to be gathered; GPU_RUN=check (default),
# tests (`pytest -m gpu tests/test_gpu.py`, about 3 minutes, gpu_tests.log) or both.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3
OUT=${OUT:?set OUT to the folder whose files come back}
PYTHON=${PYTHON:-python3}
CHECK_DIR=${GPU_CHECK_DIR:-runs/gpu_check}
MODE=${GPU_RUN:-check}
OUT=$(mkdir -p "$OUT" && cd -- "$OUT" >/dev/null && pwd) || { echo "gpu_run.sh: error: cannot write OUT" >&2; exit 3; }
case "$MODE" in check | tests | both) ;; *) echo "gpu_run.sh: error: GPU_RUN=$MODE: use check, tests or both" >&2; exit 3 ;; esac
for arg in "$@"; do
  case "$arg" in --out | --out=*) echo "gpu_run.sh: error: set GPU_CHECK_DIR, not --out (it is where the results are gathered from)" >&2; exit 3 ;; esac
done

# the wheels only where DeepSpeed or lm-eval is missing (the lent machine); a machine that has both keeps its own
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('deepspeed') is None or u.find_spec('lm_eval') is None)"; then
  compgen -G ".whl/*.whl" >/dev/null \
    || { echo "gpu_run.sh: error: DeepSpeed or lm-eval is not installed and no wheels travelled: run bench/gpu_prepare.sh here and carry .whl" >&2; exit 3; }
  site=${GPU_RUN_SITE:-/tmp/site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_run.sh: error: the carried wheels did not install: rerun bench/gpu_prepare.sh with GPU_PYTHON set to this python's version" >&2; exit 3; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "import deepspeed" >/dev/null 2>&1 \
    || { echo "gpu_run.sh: error: DeepSpeed does not import after the install (a dependency missing here?): $("$PYTHON" -c 'import deepspeed' 2>&1 | tail -1)" >&2; exit 3; }
fi

# the lent machine sets TIKTOKEN_CACHE_DIR to a cache without the GPT-2 BPE: then the carried one
# (bench/gpu_prepare.sh's shared/tiktoken) is the cache
if [ -d shared/tiktoken ]; then
  for file in shared/tiktoken/*; do
    [ -f "${TIKTOKEN_CACHE_DIR:-/nonexistent}/${file##*/}" ] || { export TIKTOKEN_CACHE_DIR=$PWD/shared/tiktoken; break; }
  done
fi

gather() {  # what comes back: this run's figures and logs, whatever happened to the check
  cp "$CHECK_DIR/gpu_check.json" "$OUT/" 2>/dev/null || echo "gpu_run.sh: no gpu_check.json was written" >&2
  local present=()
  for path in logs configs fp16_driver_record.json bf16_driver_record.json gpu_check.json; do
    [ -e "$CHECK_DIR/$path" ] && present+=("$path")
  done
  [ ${#present[@]} -eq 0 ] || tar czf "$OUT/logs.tar.gz" -C "$CHECK_DIR" "${present[@]}"
}

rc=0
{ nvidia-smi || echo "(no nvidia-smi)"; } >"$OUT/nvidia-smi.txt" 2>&1
if [ "$MODE" != tests ]; then
  rm -f "$CHECK_DIR/gpu_check.json"  # what comes back is this run's or nothing
  trap gather EXIT
  PYTHONUNBUFFERED=1 timeout -k 10 "${GPU_RUN_LIMIT_S:-500}" "$PYTHON" bench/gpu_check.py --out "$CHECK_DIR" "$@" 2>&1 \
    | tee "$OUT/gpu_check.log"
  rc=${PIPESTATUS[0]}
fi
if [ "$MODE" != check ]; then
  PYTHONUNBUFFERED=1 "$PYTHON" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
exit "$rc"
