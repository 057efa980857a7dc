#!/usr/bin/env bash
# Run HERE, before a GPU window: gathers what bench/gpu_run.sh needs on a bare lent machine that has no network.
#
#   bash bench/gpu_prepare.sh            # -> .whl/ (wheels, ~5 MB) and shared/tiktoken/ (the GPT-2 BPE), both git-ignored
#
# The lent machine (bench/gpu_run.sh) has torch, transformers, tiktoken, safetensors, tensorboard, numpy, einops,
# msgpack, ninja, psutil and py-cpuinfo, but not DeepSpeed or its pydantic/hjson: those travel as wheels, at the
# versions installed here (the ones the test suite passed with). DeepSpeed is pure Python when built without ops
# (gpt-ds uses torch's fused AdamW, no DeepSpeed op is compiled), so one py3-none-any wheel serves any CUDA.
# GPU_PYTHON (default 3.12, the lent machine's python3) picks the compiled wheels' ABI (pydantic-core).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_PYTHON=${GPU_PYTHON:-3.12}

version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }

# both folders stay out of git, but travel: shared/ always, .whl/ through run's carry
mkdir -p .git/info
for path in /.whl/ /shared/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude; done

rm -rf .whl.partial && mkdir .whl.partial
# DeepSpeed ships only a source archive: build its wheel once here (pip's cache keeps it), without ops
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w .whl.partial "deepspeed==$(version deepspeed)"
python -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl.partial \
  "hjson==$(version hjson)" "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
  "typing-extensions==$(version typing-extensions)"
rm -rf .whl && mv .whl.partial .whl  # a cut-off download never looks complete

cache=${TIKTOKEN_CACHE_DIR:-../shared/tiktoken}
if [ ! -d shared/tiktoken ]; then
  [ -d "$cache" ] || { echo "gpu_prepare.sh: error: no tiktoken cache at $cache: set TIKTOKEN_CACHE_DIR to one holding r50k_base" >&2; exit 2; }
  mkdir -p shared && cp -r "$cache" shared/tiktoken.partial && chmod -R u+w shared/tiktoken.partial && mv shared/tiktoken.partial shared/tiktoken
fi
echo "ready: $(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)), tiktoken cache in shared/tiktoken ($(du -sh shared/tiktoken | cut -f1))"
echo "next, in the device tool: run(command='bash bench/gpu_run.sh', carry=['.whl'], timeout_s=480)"
