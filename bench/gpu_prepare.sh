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
# The eval part needs lm-evaluation-harness: lm-eval and what it needs beyond the machine's packages (ON_MACHINE
# below, as the lent image holds them) travel too, all pure Python, ~13 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_PYTHON=${GPU_PYTHON:-3.12}

version() {  # the version installed here, or one line saying what to install
  python -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null \
    || { echo "gpu_prepare.sh: error: $1 is not installed here: pip install -e '.[dev]' first" >&2; exit 2; }
}

# both folders are git-ignored (.gitignore), but travel: shared/ always, .whl/ through run's carry
rm -rf .whl.partial && mkdir .whl.partial
# DeepSpeed ships only a source archive: build its wheel once here (pip's cache keeps it), without ops
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w .whl.partial "deepspeed==$(version deepspeed)"
python -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl.partial \
  "hjson==$(version hjson)" "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
  "typing-extensions==$(version typing-extensions)"
# lm-eval's requirements, transitively, less those the lent machine has: name==version as installed here
ON_MACHINE="torch transformers tensorboard tiktoken safetensors numpy accelerate peft pyarrow pandas scikit-learn
  sacrebleu aiohttp huggingface-hub fsspec xxhash"
eval_wheels=$(python - "$ON_MACHINE" <<'PY'
import importlib.metadata as md, re, sys

def norm(name): return re.sub(r"[-_.]+", "-", name).lower()

def closure(roots):
    seen, stack = {}, list(roots)
    while stack:
        name = norm(stack.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            seen[name] = None  # a requirement for another platform or python
            continue
        seen[name] = dist.version
        stack += [re.split(r"[ ;<>=!~\[(]", r, 1)[0] for r in dist.requires or [] if "extra ==" not in r]
    return seen

machine = closure(sys.argv[1].split())
print(" ".join(f"{n}=={v}" for n, v in sorted(closure(["lm-eval"]).items()) if v and n not in machine))
PY
) || { echo "gpu_prepare.sh: error: lm-eval is not installed here: pip install -e '.[dev]' first" >&2; exit 2; }
for req in $eval_wheels; do  # a wheel for GPU_PYTHON where one is published, else built here (pure Python)
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl.partial "$req" 2>/dev/null \
    || python -m pip wheel -q --no-deps -w .whl.partial "$req"
done
rm -rf .whl && mv .whl.partial .whl  # a cut-off download never looks complete

R50K=0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4  # tiktoken's cache key of r50k_base: sha1 of its download URL
cache=${TIKTOKEN_CACHE_DIR:-../shared/tiktoken}
if [ ! -f shared/tiktoken/$R50K ]; then
  [ -f "$cache/$R50K" ] || { echo "gpu_prepare.sh: error: no r50k_base in the tiktoken cache $cache: set TIKTOKEN_CACHE_DIR to one that has it" >&2; exit 2; }
  chmod -R u+w shared 2>/dev/null || true; rm -rf shared/tiktoken.partial shared/tiktoken
  mkdir -p shared/tiktoken.partial && cp "$cache/$R50K" shared/tiktoken.partial/ && chmod -R u+w shared/tiktoken.partial \
    && mv shared/tiktoken.partial shared/tiktoken
fi
echo "ready: $(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)), tiktoken cache in shared/tiktoken ($(du -sh shared/tiktoken | cut -f1))"
echo "next, in the device tool: run(command='bash bench/gpu_run.sh', carry=['.whl'], timeout_s=540)"
