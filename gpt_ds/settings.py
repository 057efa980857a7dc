"""Run settings: the `RunSettings` dataclass and its command line (launch/train.py's flags), with the checks of
the values that need nothing but themselves. Parsing reads no file and imports no DeepSpeed.

One source of truth per setting: the model architecture lives in `GPTConfig` (chosen by `--model` preset),
micro-batch size, gradient accumulation, optimizer and precision live in the DeepSpeed JSON (read and resolved
by gpt_ds.ds_config), and everything else about a run lives here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_ds.errors import ArgumentParser, UserError
from gpt_ds.recipes import ARCHITECTURE_FIELDS, MUON_CONFIG, RECIPES
from gpt_ds.run_dir import RunDir
from gpt_ds.schedule import DEFAULT_DECAY_FRACTION, SCHEDULES

PROG = "launch/train.py"
DEFAULT_PRESET = "tiny"
DEFAULT_WARMUP = 100  # warmup steps of a long run; shorter schedules warm up over their first 10%
# A fine-tune (--init-from) starts from trained weights: a short warmup, for Adam's moments alone, of at most
# this many steps (2% of the schedule).
FINETUNE_WARMUP = 20
RESUME_HELP = "auto: from RUN_DIR's latest complete checkpoint if any; never: start fresh; PATH: a checkpoint tag folder"


@dataclass
class RunSettings:
    """Everything about one training run that is not the model architecture or the DeepSpeed JSON."""

    deepspeed_config: str
    data: str
    out: str
    init_from: str | None = None  # a model folder (gpt-ds or Hugging Face GPT-2) whose weights the run starts from
    model: str = DEFAULT_PRESET
    # Overrides of the preset's shape (None: the preset's); GPTConfig validates the result.
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None  # the model's context: its number of learned positions
    seq_len: int | None = None  # the training sequence length (None: the context)
    max_steps: int = 1000
    lr_decay_steps: int | None = None  # None: max_steps
    warmup_steps: int | None = None  # None: min(100, 10% of the schedule); with --init-from min(20, 2%)
    lr: float | None = None  # None: the DeepSpeed config's optimizer lr
    min_lr: float | None = None  # None: lr / 10
    target_loss: float | None = None
    eval_interval: int = 100
    eval_tokens: int = 65536
    eval_tasks: str | None = None  # multiple-choice jsonl files scored at each evaluation, comma-separated
    save_interval: int = 500
    keep_checkpoints: int = 2
    seed: int = 1337
    sampling: str = "random"  # gpt_ds.sampler.SAMPLINGS: random windows every step, or epochs without replacement
    resume: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    verify_data: bool = False  # at start, every shard's sha256 and every token (else: sizes, headers, a sample)
    strict_config: bool = False  # a key of the DeepSpeed JSON that DeepSpeed ignores: an error (else a warning)
    log_interval: int = 10
    sample_tokens: int = 48
    collective_timeout: float = 600.0  # seconds a collective waits for the other ranks before this rank gives up
    peak_tflops: float | None = None  # the device's peak for MFU (None: the GPU table, or measured once on a CPU)
    recipe: str = "gpt2"  # RECIPES: gpt2 (today's GPT-2) or modern
    schedule: str | None = None  # cosine or wsd (None: the recipe's)
    decay_fraction: float | None = None  # wsd: the decaying last fraction of the schedule (None: 0.2)
    # The architecture beyond the shape (GPTConfig's fields; None: the recipe's). logit_softcap 0: no cap.
    pos_embedding: str | None = None
    qk_norm: bool | None = None
    mlp: str | None = None
    zero_init_proj: bool | None = None
    tie_head: bool | None = None
    logit_softcap: float | None = None

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.out)

    @property
    def eval_task_paths(self) -> list[Path]:
        """--eval-tasks' files (gpt_ds.mc_eval reads them, in plan_run)."""
        return [Path(name.strip()) for name in (self.eval_tasks or "").split(",") if name.strip()]

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    @property
    def warmup(self) -> int:
        """--warmup-steps, or by default 10% of the schedule up to 100 steps (so short runs work); a fine-tune's
        (--init-from) 2% up to 20."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.init_from is not None:
            return min(FINETUNE_WARMUP, self.decay_steps // 50)
        return min(DEFAULT_WARMUP, self.decay_steps // 10)

    @property
    def schedule_kind(self) -> str:
        """--schedule, or the recipe's (gpt2: cosine, modern: wsd)."""
        return self.schedule or RECIPES[self.recipe]["schedule"]

    @property
    def wsd_decay_fraction(self) -> float:
        return self.decay_fraction if self.decay_fraction is not None else DEFAULT_DECAY_FRACTION

    @property
    def architecture_overrides(self) -> dict[str, Any]:
        """The GPTConfig architecture fields to replace in the preset: the recipe's, then the explicit flags
        (none at all for --recipe gpt2 without flags: the preset as it is)."""
        return {**RECIPES[self.recipe]["architecture"], **self.architecture_flags()}

    def architecture_flags(self) -> dict[str, Any]:
        """The architecture fields set by their own flags (not by the recipe), as GPTConfig values."""
        return {name: None if name == "logit_softcap" and value == 0 else value
                for name in ARCHITECTURE_FIELDS if (value := getattr(self, name)) is not None}

    @property
    def shape_overrides(self) -> dict[str, int]:
        """The GPTConfig fields given on the command line, to replace in the preset."""
        shape = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd, "block_size": self.block_size}
        return {name: value for name, value in shape.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The settings as settings.json and every checkpoint record them: the schedule named as resolved (the
        recipe's unless --schedule; wsd's decay fraction), so that a record says which schedule ran."""
        wsd = self.schedule_kind == "wsd"
        return {**dataclasses.asdict(self), "schedule": self.schedule_kind,
                "decay_fraction": self.wsd_decay_fraction if wsd else self.decay_fraction}


def build_parser() -> argparse.ArgumentParser:
    """launch/train.py's flags, in the order --help shows them; the defaults are RunSettings'."""
    d = RunSettings(deepspeed_config="", data="", out="")
    p = ArgumentParser(  # its errors: one line, printed by rank 0 alone
        prog=PROG,
        description="Train a GPT model inside a DeepSpeed engine (ZeRO, bf16/fp16) on prepared shards.",
    )
    for add in (_add_files, _add_shape, _add_schedule, _add_loop, _add_switches, _add_recipe):
        add(p, d)
    # The deepspeed launcher appends --local_rank=N; we read LOCAL_RANK from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _add_files(p: argparse.ArgumentParser, d: RunSettings) -> None:
    """The files: the DeepSpeed JSON, the data, the run folder."""
    p.add_argument("--deepspeed_config", "--deepspeed-config", required=True, metavar="JSON",
                   help="DeepSpeed config: micro-batch, gradient accumulation, optimizer, precision, ZeRO stage")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of shards + manifest.json (python -m data_prep)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: checkpoints/, tb/, model/, settings.json")
    p.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="start from this model folder's weights (gpt-ds, or a Hugging Face GPT-2 folder) instead of "
                        "random ones; the architecture is the folder's")


def _add_shape(p: argparse.ArgumentParser, d: RunSettings) -> None:
    """The model preset and its shape overrides, and the training sequence length."""
    p.add_argument("--model", default=d.model, metavar="PRESET", help="model preset (gpt_ds.model.PRESETS)")
    p.add_argument("--n-layer", type=int, default=None, metavar="L", help="override the preset's number of blocks")
    p.add_argument("--n-head", type=int, default=None, metavar="H", help="override the preset's attention heads")
    p.add_argument("--n-embd", type=int, default=None, metavar="C", help="override the preset's width")
    p.add_argument("--block-size", type=int, default=None, metavar="T",
                   help="override the preset's context (the model's learned positions)")
    p.add_argument("--seq-len", type=int, default=None, metavar="T",
                   help="training sequence length, at most the context (default: the context)")


def _add_schedule(p: argparse.ArgumentParser, d: RunSettings) -> None:
    """The run's length, the learning-rate schedule and the target loss."""
    p.add_argument("--max-steps", type=int, default=d.max_steps, metavar="N", help="optimizer steps to train")
    p.add_argument("--lr-decay-steps", type=int, default=None, metavar="N",
                   help="length of the warmup+cosine schedule (default: --max-steps); keep it fixed across resumes")
    p.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                   help=f"linear warmup (default: 10%% of the schedule, at most {DEFAULT_WARMUP}; with --init-from "
                        f"2%%, at most {FINETUNE_WARMUP})")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the DeepSpeed config's)")
    p.add_argument("--min-lr", type=float, default=None, help="floor of the cosine decay (default: lr/10)")
    p.add_argument("--target-loss", type=float, default=None, metavar="X",
                   help="stop when the validation loss (smoothed train loss without a val split) reaches X")


def _add_loop(p: argparse.ArgumentParser, d: RunSettings) -> None:
    """Evaluation, checkpoints, the data order and the resume."""
    p.add_argument("--eval-interval", type=int, default=d.eval_interval, metavar="N")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens, metavar="N",
                   help="validation token budget per evaluation (all ranks together)")
    p.add_argument("--eval-tasks", default=d.eval_tasks, metavar="FILE.jsonl[,FILE2.jsonl]",
                   help="multiple-choice files (ctx/endings/label or query/choices/gold) scored at each evaluation: "
                        "acc and acc_norm, as lm-evaluation-harness scores them")
    p.add_argument("--save-interval", type=int, default=d.save_interval, metavar="N")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, metavar="K")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sampling", choices=("random", "epoch"), default=d.sampling,
                   help="random: windows at random offsets, drawn anew each step (default); epoch: every token once "
                        "per epoch, in a seeded order. Either way the global batch of a step is a function of "
                        "(seed, step): the same for any number of ranks")
    p.add_argument("--resume", default=d.resume, metavar="auto|never|PATH", help=RESUME_HELP)


def _add_switches(p: argparse.ArgumentParser, d: RunSettings) -> None:
    """Memory, speed, checks and monitoring."""
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--verify-data", action="store_true",
                   help="check every shard's sha256 against the manifest and every token against the vocabulary "
                        "before training (default: sizes, headers and a sample of the tokens)")
    p.add_argument("--strict-config", action="store_true",
                   help="refuse a DeepSpeed config with keys DeepSpeed does not know (default: a warning for "
                        "those it ignores; those it would fail on are refused anyway)")
    p.add_argument("--log-interval", type=int, default=d.log_interval, metavar="N",
                   help="steps between TensorBoard scalar writes")
    p.add_argument("--sample-tokens", type=int, default=d.sample_tokens, metavar="N",
                   help="length of the text sample generated at each eval (0: none)")
    p.add_argument("--collective-timeout", type=float, default=d.collective_timeout, metavar="S",
                   help="seconds a rank waits in a collective for the others before it stops with an error "
                        f"(a rank that died or hung; default {d.collective_timeout:g})")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="X",
                   help="the device's peak TFLOP/s for MFU (default: a table of GPUs; on a CPU, measured once)")


def _add_recipe(p: argparse.ArgumentParser, d: RunSettings) -> None:
    """The recipe, its schedule, and the architecture switches it sets (each flag overrides it)."""
    p.add_argument("--recipe", choices=tuple(RECIPES), default=d.recipe,
                   help="gpt2: GPT-2 as published (default); modern: rope, qk-norm, relu^2, zero-init projections, "
                        f"untied head, logit softcap 30, the wsd schedule, and Muon ({MUON_CONFIG})")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule: cosine (warmup + cosine) or wsd (warmup, constant, linear decay); "
                        "default: the recipe's (gpt2: cosine, modern: wsd)")
    p.add_argument("--decay-fraction", type=float, default=None, metavar="F",
                   help=f"wsd: the last fraction of the schedule that decays linearly to --min-lr "
                        f"(default {DEFAULT_DECAY_FRACTION})")
    arch = p.add_argument_group("architecture (default: the recipe's; each flag overrides it)")
    arch.add_argument("--pos-embedding", choices=("learned", "rope"), default=None)
    arch.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=None)
    arch.add_argument("--mlp", choices=("gelu", "relu2"), default=None)
    arch.add_argument("--zero-init-proj", action=argparse.BooleanOptionalAction, default=None)
    arch.add_argument("--tie-head", action=argparse.BooleanOptionalAction, default=None)
    arch.add_argument("--logit-softcap", type=float, default=None, metavar="C", help="0: no cap")


def settings_from_args(argv: list[str]) -> RunSettings:
    """Parse argv into RunSettings and check the values that need nothing but themselves (gpt_ds.plan.plan_run
    checks the rest: the DeepSpeed JSON, the data, the checkpoint)."""
    ns = build_parser().parse_args(argv)
    settings = RunSettings(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(RunSettings)})
    check_values(settings)
    return settings


def check_values(s: RunSettings) -> None:
    positive = {"--max-steps": s.max_steps, "--eval-interval": s.eval_interval, "--eval-tokens": s.eval_tokens,
                "--save-interval": s.save_interval, "--keep-checkpoints": s.keep_checkpoints,
                "--log-interval": s.log_interval}
    optional = {"--lr-decay-steps": s.lr_decay_steps, "--n-layer": s.n_layer, "--n-head": s.n_head,
                "--n-embd": s.n_embd, "--block-size": s.block_size, "--seq-len": s.seq_len}
    positive.update({flag: value for flag, value in optional.items() if value is not None})
    for flag, value in positive.items():
        if value <= 0:
            raise UserError(f"{flag} must be a positive integer (got {value})")
    if s.target_loss is not None and not (math.isfinite(s.target_loss) and s.target_loss > 0):
        raise UserError(f"--target-loss must be a positive number (got {s.target_loss}); a cross-entropy is never "
                        "below 0")
    if s.warmup < 0 or s.sample_tokens < 0:
        raise UserError("--warmup-steps and --sample-tokens must be >= 0")
    if s.warmup >= s.decay_steps:
        raise UserError(f"--warmup-steps ({s.warmup}) must be below the schedule length "
                        f"({s.decay_steps}, --lr-decay-steps or --max-steps); lower --warmup-steps")
    for flag, value in (("--lr", s.lr), ("--min-lr", s.min_lr)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"{flag} must be a finite number >= 0 (got {value})")
    if s.peak_tflops is not None and not (math.isfinite(s.peak_tflops) and s.peak_tflops > 0):
        raise UserError(f"--peak-tflops must be a positive number (got {s.peak_tflops})")
    if not (math.isfinite(s.collective_timeout) and s.collective_timeout > 0):
        raise UserError(f"--collective-timeout must be a positive number of seconds (got {s.collective_timeout})")
    check_schedule(s)
    if s.logit_softcap is not None and not (math.isfinite(s.logit_softcap) and s.logit_softcap >= 0):
        raise UserError(f"--logit-softcap must be a positive number, or 0 for no cap (got {s.logit_softcap})")
    if s.eval_tasks is not None and not s.eval_task_paths:
        raise UserError(f"--eval-tasks {s.eval_tasks!r} names no file; give FILE.jsonl[,FILE2.jsonl]")
    if s.resume not in ("auto", "never") and not Path(s.resume).exists():
        raise UserError(f"--resume {s.resume}: no such checkpoint folder; give a tag folder such as "
                        "RUN_DIR/checkpoints/step_00001000, or auto / never")


def check_schedule(s: RunSettings) -> None:
    """--recipe, --schedule and --decay-fraction: known, and a wsd decay that fits after the warmup."""
    if s.recipe not in RECIPES:
        raise UserError(f"--recipe {s.recipe!r}: choose one of {', '.join(RECIPES)}")
    if s.schedule is not None and s.schedule not in SCHEDULES:
        raise UserError(f"--schedule {s.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if s.schedule_kind != "wsd":
        if s.decay_fraction is not None:
            raise UserError(f"--decay-fraction applies to --schedule wsd only (this run's schedule is "
                            f"{s.schedule_kind}); remove it or add --schedule wsd")
        return
    fraction = s.wsd_decay_fraction
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise UserError(f"--decay-fraction must be in (0, 1] (got {fraction})")
    from gpt_ds.schedule import decay_length

    decay = decay_length(s.decay_steps, fraction)
    if s.warmup + decay > s.decay_steps:
        raise UserError(f"--warmup-steps ({s.warmup}) + the wsd decay ({decay} steps, --decay-fraction {fraction:g} "
                        f"of {s.decay_steps}) exceed the schedule length ({s.decay_steps}); lower one of them")
