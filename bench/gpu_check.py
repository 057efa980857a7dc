"""The prepared device check: one command that tells, on a lent GPU, whether gpt-ds trains, generates and
serves there, and how fast; the same command with --smoke runs on the CPU in the test suite, so it cannot rot.

    python bench/gpu_check.py --out runs/gpu_check              # on the GPU: gpt2 (124M, context 1024), ~6-7 min
    python bench/gpu_check.py --smoke --out /tmp/gpu_check      # on the CPU: tiny, context 64, a few steps, ~2-3 min

Parts, each caught on its own (a failure is recorded with its one-line reason and the others still run):
  env         device, torch / CUDA / DeepSpeed versions, the SDPA backend the model's attention shape runs on
              (CUDA: each of flash / efficient / cudnn / math tried alone, and the one torch picks, seen in
              the profiler; CPU: "cpu")
  data        the Python standard library's sources -> `python -m data_prep` (no network, no ../shared)
  bf16        `launch/train.py` ZeRO-2 bf16 on one rank (ds_configs/zero2.json, micro-batch rewritten into
              OUT/configs), tokens/s and MFU read back from the run's TensorBoard log
  bf16_compile  the same with --compile (first step's time = the compile)
  fp16        ds_configs/zero2_fp16.json with dynamic loss scaling through this file's own small driver
              (`gpu_check.py _train_driver`, which wraps gpt_ds.train.main): two consecutive steps get an
              injected inf gradient; both must be skipped and the loss scale halved (hysteresis 2), and
              training go on. Needs CUDA: on the CPU "skipped: needs CUDA".
  overflow_driver  CPU only (on CUDA the fp16 part covers it): the same driver and injection in bf16, where
              DeepSpeed's ZeRO-2 also skips a step with non-finite gradients, so the injection cannot rot
  oom         a micro-batch of 1024 sequences: the run stops at step 1 with one line naming the knobs (exit 2,
              no traceback). Needs CUDA: on the CPU "skipped: needs CUDA".
  modern      `--recipe modern` with ds_configs/zero2_muon.json, the same steps: tokens/s, MFU
  export      `python -m gpt_ds.export` of the bf16 run, `launch/sample.py` on the device,
              `python -m gpt_ds.hf export` into OUT/hf
  generate    greedy KV-cache generation, tokens/s of gpt_ds.generate against transformers'
              GPT2LMHeadModel.generate on the same (exported) weights
  eval        `launch/eval.py` on the device (lm-evaluation-harness through the gpt-ds backend): a multiple-choice
              file from `python -m data_prep.make_mc` and bits per byte of the val split; scores and seconds
  app         the app's loading path: discovery.discover_model_folders, gpt_ds.inference.inference_device /
              load_for_inference, card.model_card, stream_continuation on the device
--parts NAME,... runs those parts and the ones they need (a rerun of what failed).
Every figure goes to OUT/gpu_check.json; a table is printed; the exit status is 1 when any part failed.
Logs of every subprocess: OUT/logs/. The tiktoken cache: gpt_ds.tokenizer.tiktoken_cache_dir (TIKTOKEN_CACHE_DIR,
else ../shared/tiktoken beside the repository, else shared/tiktoken in it, as bench/gpu_prepare.sh makes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data_prep.stdlib_corpus import write_python_corpus  # noqa: E402  (the test suite's corpus, no network)
from bench.requires import require  # noqa: E402
from gpt_ds.config_variant import SHIPPED, write_variant  # noqa: E402
from gpt_ds.tokenizer import tiktoken_cache_dir  # noqa: E402

DRIVER = "_train_driver"  # argv[1] of this file's own training driver (the fp16 part's overflow injection)
OVERFLOW_ENV = "GPU_CHECK_OVERFLOW_STEPS"  # read only by the driver: 1-based steps whose gradients get an inf
RECORD_ENV = "GPU_CHECK_DRIVER_RECORD"  # read only by the driver: where it writes its per-step record


# Shapes and budgets. GPU: gpt2 at its full context; smoke: tiny on a short context, a few steps.
GPU = dict(preset="gpt2", seq_len=1024, micro_batch=32, steps=50, fp16_steps=30, eval_tokens=16 * 1024,
           corpus_bytes=2_400_000, prompt_tokens=16, new_tokens=256, repeats=3, timeout=240, compile_timeout=360,
           mc_examples=500, eval_limit=None)
SMOKE = dict(preset="tiny", seq_len=64, micro_batch=4, steps=4, fp16_steps=8, eval_tokens=512,
             corpus_bytes=160_000, prompt_tokens=8, new_tokens=32, repeats=2, timeout=240, compile_timeout=300,
             mc_examples=40, eval_limit=20)

GPU_BUDGET_S = 460  # wall time of all parts on the GPU: an H200 took 322 s before the eval part, which needs ~60-90 s
SMOKE_BUDGET_S = 600

PARTS = ("env", "data", "bf16", "bf16_compile", "fp16", "overflow_driver", "oom", "modern", "export", "generate",
         "eval", "app")
# What each part needs to have succeeded first (--parts adds them).
NEEDS = {"bf16": ("data",), "bf16_compile": ("data",), "fp16": ("data",), "overflow_driver": ("data",),
         "oom": ("data",), "modern": ("data",), "export": ("bf16",), "generate": ("export",), "eval": ("bf16",),
         "app": ("bf16",)}


def with_needs(names: list[str]) -> list[str]:
    """The named parts and, transitively, the parts they need, in PARTS's order."""
    chosen: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in chosen:
            chosen.add(name)
            stack.extend(NEEDS.get(name, ()))
    return [name for name in PARTS if name in chosen]


class Skipped(Exception):
    """A part that does not apply here (reported as 'skipped: reason', not a failure)."""


class Failed(Exception):
    """A part's failure with its one-line reason."""


def one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.shape = dict(SMOKE if args.smoke else GPU)
        if args.steps is not None:
            self.shape["steps"] = args.steps
            self.shape["fp16_steps"] = max(args.steps, 4)
        if args.micro_batch is not None:
            self.shape["micro_batch"] = args.micro_batch
        self.device = args.device
        self.results: dict[str, dict[str, Any]] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.env["PYTHONUNBUFFERED"] = "1"
        cache = tiktoken_cache_dir()
        if cache:
            self.env["TIKTOKEN_CACHE_DIR"] = os.environ["TIKTOKEN_CACHE_DIR"] = cache
        if self.device == "cpu":  # the product picks CUDA where it sees one: hide it for a CPU check
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.data = self.out / "data"
        self.deadline = time.monotonic() + (args.budget_s or (SMOKE_BUDGET_S if args.smoke else GPU_BUDGET_S))
        self.runs = self.out / "runs"

    # -- running parts and commands ---------------------------------------------------------------
    def part(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            figures = fn() or {}
            status = "ok"
        except Skipped as err:
            figures, status = {}, f"skipped: {err}"
        except Failed as err:
            figures, status = {}, f"failed: {one_line(err)}"
        except Exception as err:  # noqa: BLE001 - every part's failure is recorded, the others still run
            traceback.print_exc()
            figures, status = {}, f"failed: {one_line(f'{type(err).__name__}: {err}')}"
        self.results[name] = {"status": status, "seconds": round(time.perf_counter() - started, 1), **figures}
        print(f"[gpu_check] {name}: {status} ({self.results[name]['seconds']} s)", flush=True)

    def command(self, name: str, argv: list[str], timeout: float, extra_env: dict[str, str] | None = None) -> str:
        """Run argv from the repository root; its output goes to OUT/logs/NAME.log. Returns stdout;
        Failed with the command's last error line when it exits non-zero or runs past `timeout`."""
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **(extra_env or {})}
        left = self.deadline - time.monotonic()
        if left < 5:
            raise Failed(f"{name}: the check's wall-time budget (--budget-s) is spent")
        timeout = min(timeout, left)
        try:
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            (logs / f"{name}.log").write_text(f"$ {' '.join(argv)}\n(timed out)\n{err.stdout or ''}\n{err.stderr or ''}")
            raise Failed(f"{name}: timed out after {timeout:.0f} s (log: {logs / name}.log)") from None
        (logs / f"{name}.log").write_text(f"$ {' '.join(argv)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}"
                                          f"\n--- stderr\n{proc.stderr}")
        if proc.returncode != 0:
            lines = [l for l in (proc.stderr + "\n" + proc.stdout).splitlines() if l.strip()]
            errors = [l for l in lines if "error" in l.lower() or "Error" in l]
            reason = (errors or lines or ["(no output)"])[-1]
            raise Failed(f"{name} exited {proc.returncode}: {reason}")
        return proc.stdout

    def need(self, *names: str) -> None:
        for name in names:
            if self.results.get(name, {}).get("status") != "ok":
                raise Failed(f"needs the {name} part, which did not succeed")

    # -- 1. the environment ------------------------------------------------------------------------
    def part_env(self) -> dict[str, Any]:
        import torch

        from gpt_ds import hardware, metrics
        from gpt_ds.model import config_from_preset

        figures: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                   "cuda": torch.version.cuda, "device": self.device}
        try:
            import deepspeed

            figures["deepspeed"] = deepspeed.__version__
            figures["deepspeed_from"] = str(Path(deepspeed.__file__).parent.parent)  # the carried wheels, or the machine's
        except Exception as err:  # noqa: BLE001 - reported, the training parts will fail with it
            figures["deepspeed"] = f"not importable ({type(err).__name__}: {one_line(err, 80)})"
        try:
            import transformers

            figures["transformers"] = transformers.__version__
        except ImportError:
            figures["transformers"] = "not installed"
        config = config_from_preset(self.shape["preset"])
        if self.device == "cpu":
            figures.update(device_name=metrics._cpu_name(), threads=torch.get_num_threads(), sdpa_backend="cpu")
            return figures
        if not torch.cuda.is_available():
            raise Failed("--device cuda but torch sees no CUDA device")
        name = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        figures.update(device_name=name, capability=f"{props.major}.{props.minor}",
                       memory_gib=round(props.total_memory / 2**30, 1), bf16=hardware.gpu_native_bf16(),
                       peak_tflops=(hardware.gpu_peak_flops(name) or 0) / 1e12 or None)
        figures.update(sdpa_backends(config.n_head, config.head_dim, self.shape["seq_len"], self.shape["micro_batch"]))
        return figures

    # -- 2. data -----------------------------------------------------------------------------------
    def part_data(self) -> dict[str, Any]:
        corpus = self.out / "corpus"
        shutil.rmtree(corpus, ignore_errors=True)
        write_python_corpus(corpus, self.shape["corpus_bytes"], files=8)
        if not self.env.get("TIKTOKEN_CACHE_DIR"):
            print("[gpu_check] warning: no tiktoken cache found (TIKTOKEN_CACHE_DIR, shared/tiktoken, ../shared/tiktoken)")
        self.command("data_prep", [sys.executable, "-m", "data_prep", "--input", str(corpus), "--out", str(self.data),
                                   "--val-fraction", "0.25", "--workers", "2", "--force", "--quiet"], timeout=300)
        manifest = json.loads((self.data / "manifest.json").read_text())
        return {"corpus_bytes": sum(p.stat().st_size for p in corpus.iterdir()),
                "manifest": {k: manifest[k] for k in manifest if "tokens" in k and isinstance(manifest[k], int)}}

    # -- 2-4. training ---------------------------------------------------------------------------------
    def ds_config(self, source: str, micro_batch: int | None = None) -> Path:
        """ds_configs/SOURCE with `micro_batch` (default: this check's), written into OUT/configs."""
        micro_batch = micro_batch or self.shape["micro_batch"]
        return write_variant(self.out / "configs" / source.replace(".json", f"_mb{micro_batch}.json"), SHIPPED / source,
                             train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=1)

    def train(self, name: str, config: str, steps: int, extra: list[str], *, driver_env: dict[str, str] | None = None,
              timeout: float | None = None) -> tuple[Path, dict[str, Any]]:
        self.need("data")
        run_dir = self.runs / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh measurement every time
        entry = [str(Path(__file__).resolve()), DRIVER] if driver_env is not None else ["launch/train.py"]
        argv = [sys.executable, *entry, "--deepspeed_config", str(self.ds_config(config)), "--data", str(self.data),
                "--out", str(run_dir), "--model", self.shape["preset"], "--seq-len", str(self.shape["seq_len"]),
                "--max-steps", str(steps), "--eval-interval", str(steps), "--eval-tokens", str(self.shape["eval_tokens"]),
                "--save-interval", str(steps), "--keep-checkpoints", "1", "--log-interval", "1",
                "--sample-tokens", "0", "--resume", "never", *extra]
        self.command(name, argv, timeout or self.shape["timeout"], extra_env=driver_env)
        return run_dir, self.train_figures(run_dir, steps)

    def train_figures(self, run_dir: Path, steps: int) -> dict[str, Any]:
        from gpt_ds import tags
        from gpt_ds.metrics import read_scalars

        scalars = read_scalars(run_dir / "tb")
        missing = [t for t in (tags.TOKENS_PER_SEC, tags.MFU, tags.TRAIN_LOSS, tags.STEP_TIME) if t not in scalars]
        if missing:
            raise Failed(f"TensorBoard log {run_dir / 'tb'} lacks {', '.join(missing)}")
        last = lambda tag: scalars[tag][-1][1] if scalars.get(tag) else None  # noqa: E731
        tokens_per_sec = last(tags.TOKENS_PER_SEC)
        if not tokens_per_sec or tokens_per_sec <= 0:
            raise Failed(f"tokens/s is {tokens_per_sec}")
        if scalars[tags.TRAIN_LOSS][-1][0] != steps:
            raise Failed(f"the log ends at step {scalars[tags.TRAIN_LOSS][-1][0]}, not {steps}")
        return {"steps": steps, "tokens_per_step": self.shape["micro_batch"] * self.shape["seq_len"],
                "tokens_per_sec": round(tokens_per_sec, 1), "mfu": last(tags.MFU),
                "step_time_s": last(tags.STEP_TIME), "first_step_s": scalars[tags.STEP_TIME][0][1],
                "memory_gib": last(tags.MEMORY_GIB), "loss_first": scalars[tags.TRAIN_LOSS][0][1],
                "loss_last": last(tags.TRAIN_LOSS), "val_loss": last(tags.VAL_LOSS)}

    def part_bf16(self) -> dict[str, Any]:
        return self.train("bf16", "zero2.json", self.shape["steps"], [])[1]

    def part_bf16_compile(self) -> dict[str, Any]:
        figures = self.train("bf16_compile", "zero2.json", self.shape["steps"], ["--compile"],
                             timeout=self.shape["compile_timeout"])[1]
        plain = self.results.get("bf16", {}).get("tokens_per_sec")
        if plain:
            figures["speedup_vs_eager"] = round(figures["tokens_per_sec"] / plain, 3)
        return figures

    def part_fp16(self) -> dict[str, Any]:
        if self.device != "cuda":
            raise Skipped("needs CUDA")
        from gpt_ds import tags
        from gpt_ds.metrics import read_scalars

        steps = self.shape["fp16_steps"]
        inject = [steps // 2, steps // 2 + 1]  # two in a row: zero2_fp16.json's hysteresis 2 halves on the second
        record_path = self.out / "fp16_driver_record.json"
        record_path.unlink(missing_ok=True)
        run_dir, figures = self.train("fp16", "zero2_fp16.json", steps, [], driver_env={
            OVERFLOW_ENV: ",".join(map(str, inject)), RECORD_ENV: str(record_path)})
        record = {r["step"]: r for r in json.loads(record_path.read_text())["steps"]}
        scales = dict(read_scalars(run_dir / "tb").get(tags.LOSS_SCALE, []))
        if not scales:
            raise Failed(f"no {tags.LOSS_SCALE} in TensorBoard")
        before, after = record[inject[0] - 1]["scale"], record[inject[-1]]["scale"]
        not_skipped = [s for s in inject if not record[s]["overflow"]]
        if not_skipped:
            raise Failed(f"injected overflow at step(s) {not_skipped} was not detected (not skipped)")
        if record[inject[-1]]["skipped_total"] - record[inject[0] - 1]["skipped_total"] != len(inject):
            raise Failed("the engine's skipped_steps did not count the injected steps")
        hysteresis = record[inject[0] - 1]["hysteresis"]
        expected = None if hysteresis is None else expected_loss_scale(before, hysteresis, len(inject))
        if (after > before / 2) if expected is None else (after != expected):
            raise Failed(f"the loss scale went {before} -> {after} over the injected overflows (hysteresis "
                         f"{hysteresis} before them); expected {expected or 'at most half'}")
        if scales.get(inject[-1]) != after:
            raise Failed(f"TensorBoard's loss scale at step {inject[-1]} is {scales.get(inject[-1])}, the engine's {after}")
        later = [r for s, r in record.items() if s > inject[-1]]
        if not later or all(r["overflow"] for r in later):
            raise Failed("no step was applied after the injected overflows")
        return {**figures, "injected_steps": inject, "loss_scale_before": before, "loss_scale_after": after,
                "loss_scale_last": record[steps]["scale"], "skipped_steps": record[steps]["skipped_total"],
                "natural_overflows": sorted(s for s, r in record.items() if r["overflow"] and s not in inject)}

    def part_overflow_driver(self) -> dict[str, Any]:
        if self.device == "cuda":
            raise Skipped("on CUDA the fp16 part checks the injection")
        steps = max(self.shape["steps"], 4)
        inject = [steps // 2]
        record_path = self.out / "bf16_driver_record.json"
        record_path.unlink(missing_ok=True)
        self.train("overflow_driver", "zero2.json", steps, [], driver_env={
            OVERFLOW_ENV: ",".join(map(str, inject)), RECORD_ENV: str(record_path)})
        record = {r["step"]: r for r in json.loads(record_path.read_text())["steps"]}
        if sorted(record) != list(range(1, steps + 1)):
            raise Failed(f"the driver recorded steps {sorted(record)}, not 1..{steps}")
        if not all(record[s]["overflow"] for s in inject) or record[steps]["skipped_total"] != len(inject):
            raise Failed(f"the injected step {inject} was not skipped: {[record[s] for s in inject]}")
        if any(r["overflow"] for s, r in record.items() if s not in inject):
            raise Failed("a step without an injection was skipped")
        return {"injected_steps": inject, "skipped_steps": record[steps]["skipped_total"]}

    def part_oom(self) -> dict[str, Any]:
        """A micro-batch far past the device's memory (gpt2 at its full context, 1024 sequences: some 300 GiB of
        activations, in smoke shapes too, where tiny would fit): the run must stop at its first step with one
        error line naming the knobs, exit 2, no traceback."""
        if self.device != "cuda":
            raise Skipped("needs CUDA")
        self.need("data")
        path = self.ds_config("zero2.json", micro_batch=1024)
        argv = [sys.executable, "launch/train.py", "--deepspeed_config", str(path), "--data", str(self.data),
                "--out", str(self.runs / "oom"), "--model", "gpt2", "--seq-len", "1024", "--max-steps", "2",
                "--eval-interval", "1000", "--eval-tokens", str(self.shape["eval_tokens"]), "--sample-tokens", "0",
                "--resume", "never"]
        shutil.rmtree(self.runs / "oom", ignore_errors=True)
        proc = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=max(5.0, min(180.0, self.deadline - time.monotonic())))
        errors = [line for line in proc.stderr.splitlines() if "launch/train.py: error:" in line]
        if proc.returncode != 2 or "Traceback" in proc.stderr or len(errors) != 1 or "ran out of memory" not in errors[0]:
            raise Failed(f"exit {proc.returncode}, {len(errors)} error line(s), traceback: {'Traceback' in proc.stderr}: "
                         f"{one_line((errors or proc.stderr.splitlines() or ['(no output)'])[-1])}")
        return {"message": one_line(errors[0], 160)}

    def part_modern(self) -> dict[str, Any]:
        figures = self.train("modern", "zero2_muon.json", self.shape["steps"], ["--recipe", "modern"])[1]
        plain = self.results.get("bf16", {}).get("tokens_per_sec")
        if plain:
            figures["vs_gpt2_recipe"] = round(figures["tokens_per_sec"] / plain, 3)
        return figures

    # -- 5. export, sample, generation -----------------------------------------------------------------
    def part_export(self) -> dict[str, Any]:
        self.need("bf16")
        run_dir = self.runs / "bf16"
        started = time.perf_counter()
        self.command("export", [sys.executable, "-m", "gpt_ds.export", str(run_dir)], timeout=180)
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        text = self.command("sample", [sys.executable, "launch/sample.py", "--model", str(run_dir / "model"),
                                       "--prompt", "def ", "--max-new-tokens", "32", "--seed", "0",
                                       "--device", self.device], timeout=180)
        sample_s = time.perf_counter() - started
        if not text.startswith("def ") or len(text.removesuffix("\n")) <= len("def "):  # whitespace is a continuation
            raise Failed(f"launch/sample.py printed no continuation: {text!r}")
        self.command("hf_export", [sys.executable, "-m", "gpt_ds.hf", "export", str(run_dir / "model"),
                                   "--out", str(self.out / "hf"), "--force"], timeout=180)
        return {"export_s": round(export_s, 1), "sample_s": round(sample_s, 1), "sample": one_line(text, 120),
                "hf_dir": str(self.out / "hf")}

    def part_generate(self) -> dict[str, Any]:
        self.need("export")
        import torch
        from transformers import GPT2LMHeadModel

        from gpt_ds.generate import Sampling, generate
        from gpt_ds.inference import inference_device
        from gpt_ds.model_io import load_model

        device, dtype = inference_device(self.device)
        ours, info = load_model(self.runs / "bf16" / "model", device=device, dtype=dtype)
        theirs = GPT2LMHeadModel.from_pretrained(str(self.out / "hf")).to(device=device, dtype=dtype).eval()
        n, repeats = self.shape["new_tokens"], self.shape["repeats"]
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, info.config.vocab_size, (1, self.shape["prompt_tokens"]), generator=generator)

        def ours_cached(count: int = n) -> list[int]:
            return generate(ours, [prompt[0].tolist()], Sampling(count, temperature=0, stop_token=None))[0]

        def transformers_generate(count: int = n) -> list[int]:
            ids = prompt.to(device)
            with torch.inference_mode():
                out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                                      min_new_tokens=count, do_sample=False, use_cache=True, pad_token_id=0,
                                      eos_token_id=None)
            return out[0, ids.shape[1]:].tolist()

        def timed(fn: Callable[..., list[int]]) -> tuple[float, list[int]]:
            fn(8)  # warm-up: allocator, kernels, lazy imports
            best, tokens = float("inf"), []
            for _ in range(repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                tokens = fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            return best, tokens

        ours_s, ours_tokens = timed(ours_cached)
        theirs_s, theirs_tokens = timed(transformers_generate)
        if len(ours_tokens) != n or len(theirs_tokens) != n:
            raise Failed(f"asked for {n} tokens, got {len(ours_tokens)} (gpt-ds) and {len(theirs_tokens)} (transformers)")
        same = next((i for i, (a, b) in enumerate(zip(ours_tokens, theirs_tokens)) if a != b), n)
        return {"dtype": str(dtype).removeprefix("torch."), "prompt_tokens": prompt.shape[1], "new_tokens": n,
                "gpt_ds_tokens_per_sec": round(n / ours_s, 1), "transformers_tokens_per_sec": round(n / theirs_s, 1),
                "ratio": round(theirs_s / ours_s, 3), "greedy_tokens_equal": f"{same}/{n}"}

    def part_eval(self) -> dict[str, Any]:
        self.need("bf16")
        from gpt_ds.eval_results import headline, read_results

        model = self.runs / "bf16" / "model"
        mc = self.out / "mc.jsonl"
        self.command("make_mc", [sys.executable, "-m", "data_prep.make_mc", str(self.data), "--out", str(mc),
                                 "--n", str(self.shape["mc_examples"]), "--ending-tokens", "8", "--force", "--quiet"],
                     timeout=120)
        limit = [] if self.shape["eval_limit"] is None else ["--limit", str(self.shape["eval_limit"])]
        started = time.perf_counter()
        self.command("eval", [sys.executable, "launch/eval.py", str(model), "--tasks", f"{mc},{self.data}",
                              "--device", self.device, *limit], timeout=300)
        eval_s = time.perf_counter() - started
        results = read_results(model, None)
        if len(results) != 2:
            raise Failed(f"launch/eval.py wrote {len(results)} result file(s) in {model}/evals, not 2")
        figures: dict[str, Any] = {"eval_s": round(eval_s, 1)}
        for result in results:
            metric, value = headline(result) or ("none", float("nan"))
            figures[metric] = round(value, 4)  # acc_norm (the multiple-choice file), bpb (the val split)
            figures["dtype"] = result.evaluated.get("dtype")
        return figures

    # -- 6. the app's loading path -------------------------------------------------------------------
    def part_app(self) -> dict[str, Any]:
        self.need("bf16")
        if str(REPO / "app") not in sys.path:
            sys.path.insert(0, str(REPO / "app"))  # as streamlit does: the app's modules import top-level
        from card import model_card
        from controls import DEFAULT_SAMPLING
        from discovery import discover_model_folders, resolve_model_folder

        from gpt_ds.generate import Sampling
        from gpt_ds.inference import encode_prompt, inference_device, load_for_inference, stream_continuation

        wanted = (self.runs / "bf16" / "model").resolve()
        found = [Path(f).resolve() for f in discover_model_folders([self.runs])]
        if wanted not in found:
            raise Failed(f"the app's discovery under {self.runs} did not find {wanted} (found {found})")
        folder = resolve_model_folder(str(wanted))
        device, dtype = inference_device(self.device)  # the app's own choice for this device
        started = time.perf_counter()
        model, info = load_for_inference(folder, device, dtype)
        load_s = time.perf_counter() - started
        on = str(next(model.parameters()).device)
        if not on.startswith(self.device):
            raise Failed(f"the app's loading path put the model on {on}, not {self.device}")
        card = model_card(model, info)
        ids = encode_prompt("def ", info.tokenizer, info.config.block_size)
        sampling = Sampling(max_new_tokens=min(64, info.config.block_size - len(ids)), temperature=DEFAULT_SAMPLING.temperature,
                            top_k=DEFAULT_SAMPLING.top_k, seed=0, stop_token=None)
        update = None
        for update in stream_continuation(model, info.tokenizer, ids, sampling):
            pass
        if update is None or update.tokens == 0:
            raise Failed("the app's stream produced no tokens")
        return {"model_device": on, "dtype": str(dtype).removeprefix("torch."), "load_s": round(load_s, 2),
                "parameters": getattr(card, "parameters", None), "stream_tokens": update.tokens,
                "stream_tokens_per_sec": round(update.tokens_per_sec, 1)}

    # -- all of it ------------------------------------------------------------------------------------
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        chosen = with_needs(self.args.parts) if self.args.parts else list(PARTS)
        for name in PARTS:
            if name in chosen:
                self.part(name, getattr(self, f"part_{name}"))
            else:
                self.results[name] = {"status": "skipped: not asked for (--parts)", "seconds": 0.0}
        failed = [n for n, r in self.results.items() if r["status"].startswith("failed")]
        report = {"smoke": self.args.smoke, "device": self.device, "shape": self.shape,
                  "seconds": round(time.perf_counter() - started, 1), "ok": not failed, "failed": failed,
                  "parts": self.results}
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(table(report))
        print(f"figures: {self.out / 'gpu_check.json'}; logs: {self.out / 'logs'}")
        return 1 if failed else 0


def expected_loss_scale(scale: float, hysteresis: int, overflows: int, min_scale: float = 1.0) -> float:
    """The loss scale after `overflows` consecutive overflowing steps, by DeepSpeed's DynamicLossScaler
    (runtime/fp16/loss_scaler.py, update_scale): an overflow with hysteresis left spends one of it; with none
    left (1) it halves the scale, down to min_scale."""
    for _ in range(overflows):
        if hysteresis > 1:
            hysteresis -= 1
        else:
            scale = max(scale / 2, min_scale)
    return scale


def sdpa_backends(n_head: int, head_dim: int, seq_len: int, batch: int) -> dict[str, Any]:
    """On CUDA: which SDPA backends run the model's causal attention shape in bf16 (each tried alone), and
    which one torch picks by itself (the aten op seen in the profiler)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(batch, n_head, seq_len, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    runs: dict[str, str] = {}
    for label in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, label, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
            torch.cuda.synchronize()
            runs[label.removesuffix("_ATTENTION").lower()] = "runs"
        except RuntimeError as err:
            runs[label.removesuffix("_ATTENTION").lower()] = f"no ({one_line(err, 60)})"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize()
    ops = {e.name for e in prof.events() if "scaled_dot_product" in e.name}
    picked = next((kind for kind, op in (("flash", "flash"), ("efficient", "efficient"), ("cudnn", "cudnn"),
                                         ("math", "math")) if any(op in name for name in ops)), f"unknown {sorted(ops)}")
    return {"sdpa_backend": picked, "sdpa_tried_alone": runs,
            "sdpa_shape": f"B{batch} H{n_head} T{seq_len} D{head_dim} bf16 causal"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# the figures each part's table row shows (the JSON holds all of them)
SHOWN = {
    "env": ("device_name", "torch", "cuda", "deepspeed", "sdpa_backend"),
    "data": ("corpus_bytes",),
    "bf16": ("tokens_per_sec", "mfu", "step_time_s", "memory_gib", "loss_last"),
    "bf16_compile": ("tokens_per_sec", "mfu", "first_step_s", "speedup_vs_eager"),
    "fp16": ("tokens_per_sec", "mfu", "loss_scale_before", "loss_scale_after", "skipped_steps"),
    "overflow_driver": ("injected_steps", "skipped_steps"),
    "modern": ("tokens_per_sec", "mfu", "loss_last", "vs_gpt2_recipe"),
    "export": ("export_s", "sample_s"),
    "generate": ("dtype", "gpt_ds_tokens_per_sec", "transformers_tokens_per_sec", "ratio", "greedy_tokens_equal"),
    "eval": ("eval_s", "acc_norm", "bpb", "dtype"),
    "app": ("model_device", "dtype", "load_s", "stream_tokens_per_sec"),
}


def table(report: dict[str, Any]) -> str:
    shape = report["shape"]
    lines = [f"gpu_check ({'smoke, ' if report['smoke'] else ''}device {report['device']}, {shape['preset']}, "
             f"{shape['micro_batch']} x {shape['seq_len']} tokens a step, {shape['steps']} steps, "
             f"{report['seconds']} s)", f"{'part':<15} {'status':<8} {'s':>6}  figures", "-" * 96]
    for name, result in report["parts"].items():
        status = result["status"]
        short = status.split(":")[0]
        figures = "  ".join(f"{key}={_fmt(result[key])}" for key in SHOWN.get(name, ()) if result.get(key) is not None)
        detail = status[len(short) + 1:].strip() if short != "ok" else figures
        lines.append(f"{name:<15} {short:<8} {result['seconds']:>6}  {one_line(detail, 140)}")
    lines.append("-" * 96)
    lines.append("result: " + ("ok" if report["ok"] else f"FAILED ({', '.join(report['failed'])})"))
    return "\n".join(lines)


def train_driver(argv: list[str]) -> None:
    """launch/train.py's gpt_ds.train.main, with an injected overflow: the 1-based steps in GPU_CHECK_OVERFLOW_STEPS
    get an inf in one parameter's gradient (a tensor hook, i.e. what an fp16 overflow in the backward looks like
    to DeepSpeed). After each engine.step the step's overflow flag, loss scale and the engine's skipped_steps
    are recorded; the record is written to GPU_CHECK_DRIVER_RECORD, also when the run fails. Only this driver
    reads the two variables: the product has no test hook."""
    import torch

    from gpt_ds import train
    from gpt_ds.errors import run_cli

    inject = {int(s) for s in os.environ.get(OVERFLOW_ENV, "").split(",") if s.strip()}
    record_path = Path(os.environ[RECORD_ENV])
    steps: list[dict[str, Any]] = []
    real_build = train.build_engine

    def build_engine(plan: Any) -> Any:
        if plan.accumulation != 1:
            raise RuntimeError("the check's driver counts one engine.step per optimizer step: use accumulation 1")
        engine = real_build(plan)
        state = {"step": 1}
        param = next(p for p in engine.module.parameters() if p.requires_grad)
        param.register_hook(lambda grad: torch.full_like(grad, float("inf")) if state["step"] in inject else grad)
        real_step = engine.step

        def step(*args: Any, **kwargs: Any) -> Any:
            result = real_step(*args, **kwargs)
            optimizer = engine.optimizer
            scale = getattr(optimizer, "cur_scale", None)
            steps.append({"step": state["step"], "injected": state["step"] in inject,
                          "overflow": bool(getattr(optimizer, "overflow", False)),
                          "scale": None if scale is None else float(scale),
                          "hysteresis": getattr(getattr(optimizer, "loss_scaler", None), "cur_hysteresis", None),
                          "skipped_total": int(engine.skipped_steps)})
            state["step"] += 1
            return result

        engine.step = step
        return engine

    def driven() -> int | None:
        try:
            return train.main(argv)
        finally:  # inside run_cli's call: its exit after a distributed run skips the interpreter's teardown
            record_path.write_text(json.dumps({"injected": sorted(inject), "steps": steps}, indent=1))

    train.build_engine = build_engine
    run_cli(driven, "gpu_check train driver")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps (the CPU test)")
    parser.add_argument("--out", default="runs/gpu_check", metavar="DIR",
                        help="where data, runs, logs and gpu_check.json go (default runs/gpu_check)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help=f"training steps of each run (default {GPU['steps']}; --smoke {SMOKE['steps']})")
    parser.add_argument("--micro-batch", type=int, default=None, metavar="B",
                        help=f"micro-batch written into the configs' variants (default {GPU['micro_batch']}; "
                             f"--smoke {SMOKE['micro_batch']})")
    parser.add_argument("--budget-s", type=float, default=None, metavar="S",
                        help=f"wall time for all parts; a command still running then is stopped and its part fails "
                             f"(default {GPU_BUDGET_S}; --smoke {SMOKE_BUDGET_S})")
    parser.add_argument("--parts", type=lambda text: [p.strip() for p in text.split(",") if p.strip()], default=None,
                        metavar="NAME,...", help=f"run only these parts and those they need: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    unknown = [name for name in args.parts or () if name not in PARTS]
    if unknown:
        parser.error(f"--parts: no part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require("bench/gpu_check.py", {"transformers": "dev"})  # the generate part's reference
    return Check(args).run()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == DRIVER:
        train_driver(sys.argv[2:])
    sys.exit(main())
