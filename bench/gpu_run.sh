#!/usr/bin/env bash
# Run ON the lent GPU machine (after bench/gpu_prepare.sh here): installs the carried wheels, runs the check and
# leaves what must come back in $OUT: gpu_check.json, the console log with the table, nvidia-smi's view, and the
# subprocesses' logs and configs as one archive. Arguments go to bench/gpu_check.py (e.g. --steps 30).
#
#   run(command='bash bench/gpu_run.sh', carry=['.whl'], timeout_s=480)      # the device tool's call
#   OUT=/tmp/out bash bench/gpu_run.sh --smoke --device cpu                   # the same path, here, on the CPU
# PYTHON (default python3, the machine's torch) runs everything; GPU_CHECK_DIR (default runs/gpu_check) is --out.
# GPU_RUN_TESTS=1: then also `pytest -m gpu tests/test_gpu.py` (about 3 minutes more; its log is gpu_tests.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder whose files come back}
PYTHON=${PYTHON:-python3}
CHECK_DIR=${GPU_CHECK_DIR:-runs/gpu_check}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)

# the wheels only where DeepSpeed is missing (the lent machine); a machine that has it keeps its own
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('deepspeed') is None)"; then
  compgen -G ".whl/*.whl" >/dev/null \
    || { echo "gpu_run.sh: error: DeepSpeed is not installed and no wheels travelled: run bench/gpu_prepare.sh here and carry .whl" >&2; exit 3; }
  site=${GPU_RUN_SITE:-/tmp/site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_run.sh: error: the carried wheels did not install: rerun bench/gpu_prepare.sh here" >&2; exit 3; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d shared/tiktoken ]; then
  export TIKTOKEN_CACHE_DIR="$PWD/shared/tiktoken"  # the GPT-2 BPE that travelled (no network there)
fi

rm -f "$CHECK_DIR/gpu_check.json"  # what comes back is this run's or nothing
{ nvidia-smi || echo "(no nvidia-smi)"; } >"$OUT/nvidia-smi.txt" 2>&1
PYTHONUNBUFFERED=1 "$PYTHON" bench/gpu_check.py --out "$CHECK_DIR" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
cp "$CHECK_DIR/gpu_check.json" "$OUT/" 2>/dev/null || echo "gpu_run.sh: no gpu_check.json was written" >&2
(cd "$CHECK_DIR" && tar czf "$OUT/logs.tar.gz" logs configs ./*.json 2>/dev/null)
if [ "${GPU_RUN_TESTS:-0}" = 1 ]; then
  PYTHONUNBUFFERED=1 "$PYTHON" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
exit "$rc"
