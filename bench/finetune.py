"""Benchmark: the value of starting from weights, as a validation loss after the same steps from scratch.

    python bench/finetune.py [--out runs/finetune] [--parent MODEL_DIR] [--domain PATH ...] [--steps 100]
                             [--lr-scales 1 1/3 1/10 1/30] [--ranks 2]

1. The parent: the quickstart's `tiny` (launch/quickstart.py's recipe, max steps and target: the modern
   recipe with Muon, ZeRO-2 bf16, on --ranks ranks) pretrained on the standard library's single-file
   modules (data_prep.stdlib_corpus), or --parent, any model folder (gpt-ds, or a Hugging Face GPT-2).
2. The domain: another style of Python, disjoint from the pretraining files: every DOMAIN_STRIDE-th of the
   standard library's own unit tests (<stdlib>/test/test_*.py, ~2 MB, ~70 files; sorted by name), or
   --domain files or folders, prepared with a val split of DOMAIN_VAL_FRACTION of its documents.
3. --steps steps on the domain, each run with the same seed, data, batch and schedule length: from scratch
   (random weights of the parent's architecture, the config's lr and the default warmup) and from the
   parent (--init-from, fine-tuning's default warmup) at each peak lr --lr-scales x the DeepSpeed config's.
Prints, for each run, the peak lr and the validation loss on the same EVAL_TOKENS domain tokens (the
same windows for every run) at the midpoint and after --steps steps, and its difference from and ratio
to scratch's; the parent's own loss there (step 0) heads the table. The losses are deterministic for a
machine; no time is measured. Writes OUT/finetune.json; each run's output is in OUT/runs/NAME.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.requires import require  # noqa: E402
from gpt_ds.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from launch.quickstart import DEFAULT_MAX_STEPS, DS_CONFIG, TARGETS, TRAIN_FLAGS  # noqa: E402

if TYPE_CHECKING:
    from gpt_ds.model_config import GPTConfig

PROG = "bench/finetune.py"
REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "launch" / "train.py")
DEFAULT_OUT = Path("runs") / "finetune"
DEFAULT_STEPS = 100
DEFAULT_LR_SCALES = ("1", "1/3", "1/10", "1/30")
DOMAIN_STRIDE = 6  # every 6th unit test of the standard library, by name: ~2 MB spread over all of them
DOMAIN_VAL_FRACTION = 0.15  # of the domain's documents (files): ~10 files, tens of thousands of tokens
EVAL_TOKENS = 32_768  # the validation budget of every evaluation: the same windows of the domain's val split
PARENT_CORPUS = "python"  # the quickstart's name for the standard library's sources (its TARGETS key)


@dataclass
class Result:
    """One run on the domain: its name, peak lr and validation losses (step -> loss)."""

    name: str
    lr: float
    val: dict[int, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    parser.add_argument("--parent", type=Path, default=None, metavar="MODEL_DIR",
                        help="the model folder to fine-tune (default: pretrain the quickstart's tiny on the "
                             "standard library's modules, into OUT/parent)")
    parser.add_argument("--domain", nargs="+", default=None, metavar="PATH",
                        help="the fine-tuning text: files or folders (default: every "
                             f"{DOMAIN_STRIDE}th of the standard library's unit tests)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps of every run on the domain (default {DEFAULT_STEPS})")
    parser.add_argument("--lr-scales", nargs="+", default=list(DEFAULT_LR_SCALES), metavar="S",
                        help="the fine-tunes' peak lrs as multiples of the DeepSpeed config's, e.g. 1/3 or 0.3 "
                             f"(default {' '.join(DEFAULT_LR_SCALES)})")
    parser.add_argument("--ranks", type=int, default=2, help="training processes of every run (default 2)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        raise UserError(f"--steps must be at least 2 (got {args.steps}): the table reports a midpoint")
    if args.ranks < 1:
        raise UserError(f"--ranks must be at least 1 (got {args.ranks})")
    args.lr_scales = [parse_scale(text) for text in args.lr_scales]
    return args


def parse_scale(text: str) -> Fraction:
    """A positive multiple of the config's lr, written as a number or a fraction (1/3)."""
    try:
        scale = Fraction(text)
    except (ValueError, ZeroDivisionError):
        scale = None
    if scale is None or scale <= 0:
        raise UserError(f"--lr-scales {text!r} is not a positive number; write e.g. 1, 0.3 or 1/3")
    return scale.limit_denominator(1000)


def check_parent(folder: Path) -> None:
    """UserError, before any work, unless --parent is a model folder (gpt-ds's or a Hugging Face GPT-2's)."""
    from gpt_ds.model_io import folder_kind, require_folder

    fix = "pass a model folder, e.g. runs/quickstart/run/model, or leave --parent out to pretrain one"
    require_folder(folder, "--parent folder", fix, "e.g. runs/quickstart/run/model")
    if folder_kind(folder) is None:
        raise UserError(f"--parent {folder} is not a model folder (no gpt-ds or Hugging Face config.json); {fix}")


def stdlib_unit_tests() -> list[Path]:
    """Every DOMAIN_STRIDE-th file of <stdlib>/test/test_*.py, sorted by name; UserError where there are none."""
    folder = Path(sysconfig.get_paths()["stdlib"]) / "test"
    tests = sorted(folder.glob("test_*.py"))
    if len(tests) < DOMAIN_STRIDE:
        raise UserError(f"the standard library's unit tests are not in {folder} (some distributions package them "
                        "apart, e.g. Debian's libpython3-testsuite); pass --domain with text files or folders")
    return tests[::DOMAIN_STRIDE]


def prepare(inputs: list[str], out: Path, val_fraction: float) -> dict:
    """`inputs` tokenized into `out` (data_prep; up to date on a rerun): the manifest."""
    import data_prep

    return data_prep.prepare(inputs, out, val_fraction=val_fraction, verbose=False)


def split_tokens(manifest: dict, split: str) -> int:
    return int((manifest["splits"].get(split) or {}).get("tokens", 0))


def pretrain_parent(out: Path, ranks: int) -> Path:
    """The quickstart's tiny, trained by the quickstart's own step 2 on the standard library's modules."""
    from data_prep.settings import DEFAULT_VAL_FRACTION
    from data_prep.stdlib_corpus import stdlib_sources
    from gpt_ds.run_dir import RunDir
    from launch.quickstart import train

    data = out / "data" / "pretrain"
    prepare([str(p) for p in stdlib_sources()], data, DEFAULT_VAL_FRACTION)
    return train(data, RunDir(out / "parent"), ranks, TARGETS[PARENT_CORPUS], DEFAULT_MAX_STEPS)


def scratch_flags(config: GPTConfig) -> list[str]:
    """launch/train.py's flags that build `config`'s architecture from random weights."""
    from gpt_ds.recipes import ARCHITECTURE_FIELDS

    flags = ["--n-layer", str(config.n_layer), "--n-head", str(config.n_head), "--n-embd", str(config.n_embd),
             "--block-size", str(config.block_size)]
    for name in ARCHITECTURE_FIELDS:
        flag, value = "--" + name.replace("_", "-"), getattr(config, name)
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(0 if value is None else value)]
    return flags


def run_args(data: Path, run_dir: Path, steps: int, extra: list[str]) -> list[str]:
    """launch/train.py's arguments of one run on the domain: the quickstart's recipe, evaluated at the midpoint
    and the end on EVAL_TOKENS tokens, no samples."""
    return ["--deepspeed_config", str(REPO / DS_CONFIG), "--data", str(data), "--out", str(run_dir),
            "--max-steps", str(steps), *TRAIN_FLAGS, "--eval-interval", str(steps // 2),
            "--eval-tokens", str(EVAL_TOKENS), "--save-interval", str(steps), "--sample-tokens", "0", *extra]


def train_run(name: str, lr: float, args: list[str], run_dir: Path, ranks: int) -> Result:
    """Train one run afresh (its output in RUN_DIR.log); its validation losses from its TensorBoard log and,
    the last, from its model folder's record."""
    from gpt_ds import tags
    from gpt_ds.distributed import launcher_command
    from gpt_ds.metrics import read_scalars
    from gpt_ds.model_io import read_model_info
    from gpt_ds.run_dir import RunDir
    from gpt_ds.train import parse_args as check_train_args

    shutil.rmtree(run_dir, ignore_errors=True)  # afresh: never a resume of an earlier bench's run
    check_train_args(args, world_size=ranks)  # bad input fails here, before any process starts
    log = run_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    command = launcher_command(ranks, TRAIN, args) if ranks > 1 else [sys.executable, TRAIN, *args]
    print(f"  {name}: python launch/train.py {' '.join(args)}", flush=True)
    with log.open("w") as output:
        code = subprocess.call(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        raise UserError(f"the {name} run stopped with exit code {code}; its output is in {log}")
    val = dict(read_scalars(RunDir(run_dir).tb).get(tags.VAL_LOSS, []))
    record = read_model_info(RunDir(run_dir).model).metadata
    if record.get("val_loss") is not None:
        val[int(record["step"])] = float(record["val_loss"])
    return Result(name, lr, val)


def parent_val_loss(parent_dir: Path, data: Path, micro_batch: int, precision: str) -> float:
    """The parent's own loss on the domain's validation windows (step 0), in the runs' precision."""
    import torch

    from gpt_ds.data import open_split
    from gpt_ds.init_from import load_parent_into, read_parent
    from gpt_ds.model import GPT
    from gpt_ds.sampler import TokenWindows, val_batches

    parent = read_parent(parent_dir)
    model = GPT(dataclasses.replace(parent.config, dropout=0.0))
    load_parent_into(model, parent)
    model = model.to(torch.bfloat16 if precision == "bf16" else torch.float32).eval()
    windows = TokenWindows(open_split(data, "val"), parent.config.block_size, "val")
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in val_batches(windows, EVAL_TOKENS, micro_batch, rank=0, world_size=1):
            _, losses = model(x, y, per_token=True)
            total += float(losses.double().sum())
            count += y.numel()
    return total / count


def table(results: list[Result], parent_loss: float, steps: int) -> str:
    """The runs' losses at the midpoint and the end, against scratch's (the first result)."""
    mid, scratch = steps // 2, results[0].val[steps]
    lines = [f"{'run':<16} {'peak lr':>9} {f'val@{mid}':>9} {f'val@{steps}':>9} {'- scratch':>10} {'/ scratch':>10}",
             f"{'parent (step 0)':<16} {'':>9} {'':>9} {parent_loss:>9.4f} {parent_loss - scratch:>+10.4f} "
             f"{parent_loss / scratch:>10.3f}"]
    for r in results:
        lines.append(f"{r.name:<16} {r.lr:>9.2e} {r.val.get(mid, float('nan')):>9.4f} {r.val[steps]:>9.4f} "
                     f"{r.val[steps] - scratch:>+10.4f} {r.val[steps] / scratch:>10.3f}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    require(PROG, {})  # the core dependencies alone
    args = parse_args(argv)
    from gpt_ds import ds_config
    from gpt_ds.init_from import read_parent

    parent_dir = args.parent
    if parent_dir is not None:
        check_parent(parent_dir)
    domain_inputs = args.domain or [str(p) for p in stdlib_unit_tests()]
    config = ds_config.resolve(ds_config.load(REPO / DS_CONFIG), DS_CONFIG, args.ranks)
    out = args.out
    print(f"[1] the domain ({len(domain_inputs)} inputs: {domain_inputs[0]} ...) into {out / 'data' / 'domain'}")
    domain = out / "data" / "domain"
    manifest = prepare(domain_inputs, domain, DOMAIN_VAL_FRACTION)
    if split_tokens(manifest, "val") == 0:
        raise UserError(f"the domain {' '.join(domain_inputs)} made no validation split; give more files")
    print(f"    {split_tokens(manifest, 'train'):,} train and {split_tokens(manifest, 'val'):,} val tokens")
    if parent_dir is None:
        print(f"[2] pretraining the parent into {out / 'parent'}")
        parent_dir = pretrain_parent(out, args.ranks)
    parent = read_parent(parent_dir)
    print(f"[2] the parent: {parent.folder} ({parent.kind}, {parent.config.n_layer} layers x {parent.config.n_embd}, "
          f"its own {parent.steps} steps, {parent.tokens} tokens)")
    parent_loss = parent_val_loss(parent_dir, domain, config.micro_batch, config.precision)
    runs = out / "runs"
    print(f"[3] {args.steps} steps of {config.train_batch_size} x {parent.config.block_size} tokens on the domain, "
          f"from scratch and from the parent (config lr {config.lr:g}); outputs in {runs}", flush=True)
    results = [train_run("scratch", config.lr, run_args(domain, runs / "scratch", args.steps, scratch_flags(parent.config)),
                         runs / "scratch", args.ranks)]
    for scale in args.lr_scales:
        name = f"init lr x{scale}"
        lr = float(f"{float(scale) * config.lr:.6g}")
        extra = ["--init-from", str(parent_dir), "--lr", str(lr)]
        folder = runs / f"init_{str(scale).replace('/', '_')}"
        results.append(train_run(name, lr, run_args(domain, folder, args.steps, extra), folder, args.ranks))
    report = table(results, parent_loss, args.steps)
    print(report)
    (out / "finetune.json").write_text(json.dumps({
        "parent": str(parent.folder), "domain": domain_inputs, "steps": args.steps, "ranks": args.ranks,
        "config_lr": config.lr, "eval_tokens": EVAL_TOKENS, "parent_val_loss": parent_loss,
        "runs": [{"name": r.name, "lr": r.lr, "val_loss": r.val} for r in results]}, indent=2) + "\n")
    best = min(results[1:], key=lambda r: r.val[args.steps])
    print(f"best fine-tune: {best.name} (peak lr {best.lr:g}): val loss {best.val[args.steps]:.4f} after {args.steps} "
          f"steps, {best.val[args.steps] - results[0].val[args.steps]:+.4f} against scratch's")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(argv), PROG)


if __name__ == "__main__":
    main()
