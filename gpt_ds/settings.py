"""Run settings: the `RunSettings` dataclass, its command line, and the DeepSpeed config it points at.

One source of truth per setting (DESIGN.md): the model architecture lives in `GPTConfig` (chosen
by `--model` preset), micro-batch size, gradient accumulation, optimizer and precision live in the
DeepSpeed JSON, and everything else about a run lives here. `--lr` defaults to the JSON's
optimizer lr, so the JSON stays the place where a DeepSpeed user looks for it.

`resolve_ds_config` reads and checks the JSON for a given world size: it is the one place that
makes `train_batch_size` consistent with the number of ranks (or explains why it cannot).
`check_ds_config_keys` holds the JSON's keys against those DeepSpeed itself knows (read from its config
reader, its pydantic models and its optimizers' constructors), since DeepSpeed ignores many unknown keys.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import difflib
import functools
import inspect
import json
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_ds import distributed
from gpt_ds.errors import ArgumentParser, UserError
from gpt_ds.recipes import ARCHITECTURE_FIELDS, MUON_CONFIG, RECIPES
from gpt_ds.run_dir import RunDir
from gpt_ds.schedule import DEFAULT_DECAY_FRACTION, SCHEDULES

PROG = "launch/train.py"
DEFAULT_WARMUP = 100  # warmup steps of a long run; shorter schedules warm up over their first 10%
RESUME_HELP = "auto: from RUN_DIR's latest complete checkpoint if any; never: start fresh; PATH: a checkpoint tag folder"


@dataclass
class RunSettings:
    """Everything about one training run that is not the model architecture or the DeepSpeed JSON."""

    deepspeed_config: str
    data: str
    out: str
    model: str = "tiny"
    # Overrides of the preset's shape (None: the preset's); GPTConfig validates the result.
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None  # the model's context: its number of learned positions
    seq_len: int | None = None  # the training sequence length (None: the context)
    max_steps: int = 1000
    lr_decay_steps: int | None = None  # None: max_steps
    warmup_steps: int | None = None  # None: min(100, 10% of the schedule)
    lr: float | None = None  # None: the DeepSpeed config's optimizer lr
    min_lr: float | None = None  # None: lr / 10
    target_loss: float | None = None
    eval_interval: int = 100
    eval_tokens: int = 65536
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
    def decay_steps(self) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    @property
    def warmup(self) -> int:
        """--warmup-steps, or by default 10% of the schedule up to 100 steps (so short runs work)."""
        return self.warmup_steps if self.warmup_steps is not None else min(DEFAULT_WARMUP, self.decay_steps // 10)

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
        fields = dict(RECIPES[self.recipe]["architecture"])
        for name in ARCHITECTURE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                fields[name] = None if name == "logit_softcap" and value == 0 else value
        return fields

    @property
    def shape_overrides(self) -> dict[str, int]:
        """The GPTConfig fields given on the command line, to replace in the preset."""
        shape = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd, "block_size": self.block_size}
        return {name: value for name, value in shape.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings(deepspeed_config="", data="", out="")
    p = ArgumentParser(  # its errors: one line, printed by rank 0 alone
        prog=PROG,
        description="Train a GPT model inside a DeepSpeed engine (ZeRO, bf16/fp16) on prepared shards.",
    )
    p.add_argument("--deepspeed_config", "--deepspeed-config", required=True, metavar="JSON",
                   help="DeepSpeed config: micro-batch, gradient accumulation, optimizer, precision, ZeRO stage")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of shards + manifest.json (python -m data_prep)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: checkpoints/, tb/, model/, settings.json")
    p.add_argument("--model", default=defaults.model, metavar="PRESET", help="model preset (gpt_ds.model.PRESETS)")
    p.add_argument("--n-layer", type=int, default=None, metavar="L", help="override the preset's number of blocks")
    p.add_argument("--n-head", type=int, default=None, metavar="H", help="override the preset's attention heads")
    p.add_argument("--n-embd", type=int, default=None, metavar="C", help="override the preset's width")
    p.add_argument("--block-size", type=int, default=None, metavar="T",
                   help="override the preset's context (the model's learned positions)")
    p.add_argument("--seq-len", type=int, default=None, metavar="T",
                   help="training sequence length, at most the context (default: the context)")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, metavar="N", help="optimizer steps to train")
    p.add_argument("--lr-decay-steps", type=int, default=None, metavar="N",
                   help="length of the warmup+cosine schedule (default: --max-steps); keep it fixed across resumes")
    p.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                   help=f"linear warmup (default: 10%% of the schedule, at most {DEFAULT_WARMUP})")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the DeepSpeed config's)")
    p.add_argument("--min-lr", type=float, default=None, help="floor of the cosine decay (default: lr/10)")
    p.add_argument("--target-loss", type=float, default=None, metavar="X",
                   help="stop when the validation loss (smoothed train loss without a val split) reaches X")
    p.add_argument("--eval-interval", type=int, default=defaults.eval_interval, metavar="N")
    p.add_argument("--eval-tokens", type=int, default=defaults.eval_tokens, metavar="N",
                   help="validation token budget per evaluation (all ranks together)")
    p.add_argument("--save-interval", type=int, default=defaults.save_interval, metavar="N")
    p.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, metavar="K")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--sampling", choices=("random", "epoch"), default=defaults.sampling,
                   help="random: windows at random offsets, drawn anew each step (default); epoch: every token once "
                        "per epoch, in a seeded order. Either way the global batch of a step is a function of "
                        "(seed, step): the same for any number of ranks")
    p.add_argument("--resume", default=defaults.resume, metavar="auto|never|PATH", help=RESUME_HELP)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--verify-data", action="store_true",
                   help="check every shard's sha256 against the manifest and every token against the vocabulary "
                        "before training (default: sizes, headers and a sample of the tokens)")
    p.add_argument("--strict-config", action="store_true",
                   help="refuse a DeepSpeed config with keys DeepSpeed does not know (default: a warning for "
                        "those it ignores; those it would fail on are refused anyway)")
    p.add_argument("--log-interval", type=int, default=defaults.log_interval, metavar="N",
                   help="steps between TensorBoard scalar writes")
    p.add_argument("--sample-tokens", type=int, default=defaults.sample_tokens, metavar="N",
                   help="length of the text sample generated at each eval (0: none)")
    p.add_argument("--collective-timeout", type=float, default=defaults.collective_timeout, metavar="S",
                   help="seconds a rank waits in a collective for the others before it stops with an error "
                        f"(a rank that died or hung; default {defaults.collective_timeout:g})")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="X",
                   help="the device's peak TFLOP/s for MFU (default: a table of GPUs; on a CPU, measured once)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=defaults.recipe,
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
    # The deepspeed launcher appends --local_rank=N; we read LOCAL_RANK from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def settings_from_args(argv: list[str]) -> RunSettings:
    """Parse argv into RunSettings and check the values that need nothing but themselves, and the DeepSpeed
    JSON's keys against DeepSpeed's (`check_ds_config_keys`: once per process, before the plan reads the JSON)."""
    ns = build_parser().parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(RunSettings)}
    settings = RunSettings(**values)
    check_values(settings)
    check_ds_config_keys(settings.deepspeed_config, strict=settings.strict_config)
    # Record what the recipe resolved to, so settings.json and the checkpoints name the schedule itself.
    settings.schedule = settings.schedule_kind
    if settings.schedule == "wsd":
        settings.decay_fraction = settings.wsd_decay_fraction
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


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Read the DeepSpeed JSON, as a dict, with a clear error for a missing or malformed file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"DeepSpeed config {path} is a folder; pass a JSON file to --deepspeed_config, "
                        "e.g. ds_configs/zero2.json")
    if not path.is_file():
        raise UserError(f"DeepSpeed config {path} not found; pass one of ds_configs/*.json to --deepspeed_config")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"DeepSpeed config {path} is not valid JSON ({err}); fix the file") from err
    if not isinstance(config, dict):
        raise UserError(f"DeepSpeed config {path} must hold a JSON object")
    return config


def _positive_int(config: dict, key: str, path: str) -> int | None:
    value = config.get(key)
    if value is None or value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"DeepSpeed config {path}: {key} must be a positive integer (got {value!r})")
    return value


def resolve_ds_config(path: str | Path, world_size: int, global_batch: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config for `world_size` ranks, with consistent batch sizes.

    DeepSpeed requires train_batch_size == micro_batch * grad_accum * world_size. Configs here give
    the micro-batch and accumulation (per-rank facts) and let the global batch follow the world
    size; a config that pins train_batch_size gets the accumulation derived from it, and an error
    that shows the arithmetic when no whole number of accumulation steps fits. `global_batch` (a
    resume's: the checkpoint's train_batch_size) pins it the same way, whatever the JSON says.
    """
    config = load_ds_config(path)
    where = str(path)
    if global_batch is not None:
        where = f"{path} (keeping the checkpoint's global batch of {global_batch})"
        config["train_batch_size"] = global_batch
        config.pop("gradient_accumulation_steps", None)
    micro = _positive_int(config, "train_micro_batch_size_per_gpu", where)
    accum = _positive_int(config, "gradient_accumulation_steps", where)
    total = _positive_int(config, "train_batch_size", where)
    if micro is None:
        if total is None:
            raise UserError(f"DeepSpeed config {where}: set train_micro_batch_size_per_gpu (the per-rank batch)")
        micro = total // ((accum or 1) * world_size)
        if micro == 0:
            raise UserError(f"DeepSpeed config {where}: train_batch_size {total} is smaller than "
                            f"{world_size} ranks x {accum or 1} accumulation steps; raise train_batch_size")
    if total is None:
        accum = accum or 1
    elif accum is None:
        accum, rest = divmod(total, micro * world_size)
        if rest or accum == 0:
            fix = (f"resume on a number of ranks that divides {total // micro} (with this micro-batch), or set "
                   "train_micro_batch_size_per_gpu so that micro-batch x ranks divides it" if global_batch else
                   "remove train_batch_size (it then follows the world size) or change it")
            raise UserError(
                f"DeepSpeed config {where}: train_batch_size {total} is not a multiple of micro-batch {micro} x "
                f"{world_size} ranks; {fix}")
    elif total != micro * accum * world_size:
        raise UserError(
            f"DeepSpeed config {where}: train_batch_size {total} != micro-batch {micro} x accumulation {accum} x "
            f"{world_size} ranks = {micro * accum * world_size}; remove train_batch_size so it follows the world size")
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum
    config["train_batch_size"] = micro * accum * world_size

    check_sections(config, where)
    if _enabled(config, "fp16") and _enabled(config, "bf16"):
        raise UserError(f"DeepSpeed config {where}: fp16 and bf16 are both enabled; enable one")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2, 3):
        # Stage 0 writes no partitioned fp32 optimizer state, which the export (DeepSpeed's
        # zero_to_fp32) consolidates the final weights from.
        raise UserError(f"DeepSpeed config {where}: zero_optimization.stage must be 1, 2 or 3 (got {stage!r}): stage "
                        "0 checkpoints cannot be consolidated; use ds_configs/zero2.json")
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict) or "type" not in optimizer:
        raise UserError(f"DeepSpeed config {where}: needs an \"optimizer\" section with a \"type\" (e.g. AdamW)")
    _check_optimizer_params(optimizer, where)
    if "scheduler" in config:
        raise UserError(f"DeepSpeed config {where}: remove the \"scheduler\" section; the learning-rate schedule "
                        "is set by --lr/--min-lr/--warmup-steps/--lr-decay-steps so that resumes follow it exactly")
    return config


def _check_optimizer_params(optimizer: dict[str, Any], where: str) -> None:
    """optimizer.params' numbers, which the schedule and the param groups read here and DeepSpeed hands to the
    optimizer unchecked: the learning rates, weight_decay and eps >= 0, betas two numbers in [0, 1)."""
    params = optimizer.get("params", {})
    if not isinstance(params, dict):
        raise UserError(f"DeepSpeed config {where}: optimizer.params must be a JSON object (got {params!r})")
    for key in ("lr", "muon_lr", "adam_lr", "weight_decay", "eps"):
        if key in params and not _non_negative(params[key]):
            raise UserError(f"DeepSpeed config {where}: optimizer.params.{key} must be a number >= 0 "
                            f"(got {params[key]!r})")
    betas = params.get("betas")
    if "betas" in params and not (isinstance(betas, list) and len(betas) == 2
                                  and all(_non_negative(b) and b < 1 for b in betas)):
        raise UserError(f"DeepSpeed config {where}: optimizer.params.betas must be two numbers in [0, 1), "
                        f"e.g. [0.9, 0.95] (got {betas!r})")


def _non_negative(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


SECTIONS = ("zero_optimization", "bf16", "fp16", "optimizer", "checkpoint")  # JSON objects, when present


def check_sections(config: dict[str, Any], where: str) -> None:
    """The shapes DeepSpeed assumes without checking: sections are objects, "enabled" a boolean,
    gradient_clipping a number >= 0 (a string or a list there is a traceback deep in DeepSpeed, and a
    string "enabled" would silently train in another precision)."""
    for section in SECTIONS:
        if section in config and not isinstance(config[section], dict):
            raise UserError(f"DeepSpeed config {where}: {section} must be a JSON object (got {config[section]!r}); "
                            f"see ds_configs/zero2.json")
    for section in ("bf16", "fp16"):
        enabled = config.get(section, {}).get("enabled", False)
        if not isinstance(enabled, bool):
            raise UserError(f"DeepSpeed config {where}: {section}.enabled must be true or false (got {enabled!r})")
    clip = config.get("gradient_clipping", 0.0)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (math.isfinite(clip) and clip >= 0):
        raise UserError(f"DeepSpeed config {where}: gradient_clipping must be a number >= 0, 0 for none (got {clip!r})")


def precision_of(ds_config: dict[str, Any]) -> str:
    """"bf16", "fp16" or "fp32": the training precision the DeepSpeed config selects."""
    if _enabled(ds_config, "bf16"):
        return "bf16"
    if _enabled(ds_config, "fp16"):
        return "fp16"
    return "fp32"


def _enabled(ds_config: dict[str, Any], section: str) -> bool:
    """Whether the DeepSpeed config's `section` (fp16, bf16) says "enabled": true."""
    return ds_config.get(section, {}).get("enabled", False) is True


def is_muon(ds_config: dict[str, Any]) -> bool:
    """Whether the DeepSpeed JSON's optimizer is DeepSpeed's Muon (with its auxiliary Adam)."""
    return str(ds_config["optimizer"].get("type", "")).lower() == "muon"


def _config_lr(ds_config: dict[str, Any], key: str) -> float | None:
    """optimizer.params[key], falling back to optimizer.params.lr (DeepSpeed's own rule for muon_lr/adam_lr);
    numbers, as `_check_optimizer_params` made sure."""
    params = ds_config["optimizer"].get("params", {})
    lr = params.get(key, params.get("lr"))
    return None if lr is None else float(lr)


def peak_lr(settings: RunSettings, ds_config: dict[str, Any]) -> float:
    """The schedule's peak: --lr, else the JSON's lr (with Muon: the Adam half's, adam_lr)."""
    if settings.lr is not None:
        return settings.lr
    key = "adam_lr" if is_muon(ds_config) else "lr"
    lr = _config_lr(ds_config, key)
    if lr is None:
        raise UserError(f"no learning rate: pass --lr or set optimizer.params.{key} in the DeepSpeed config")
    return lr


def muon_lr_ratio(ds_config: dict[str, Any]) -> float | None:
    """With Muon: the matrices' peak lr over the Adam half's (muon_lr / adam_lr from the JSON), the fixed
    ratio at which the Muon groups follow the schedule (--lr moves both); None for other optimizers."""
    if not is_muon(ds_config):
        return None
    muon, adam = _config_lr(ds_config, "muon_lr"), _config_lr(ds_config, "adam_lr")
    if muon is None or adam is None or adam <= 0 or muon < 0:
        raise UserError("the Muon optimizer needs optimizer.params.muon_lr >= 0 and adam_lr > 0 (or one lr) "
                        f"in the DeepSpeed config (got muon_lr {muon}, adam_lr {adam}); see {MUON_CONFIG}")
    return muon / adam


def floor_lr(settings: RunSettings, ds_config: dict[str, Any]) -> float:
    return settings.min_lr if settings.min_lr is not None else peak_lr(settings, ds_config) / 10


def weight_decay_of(ds_config: dict[str, Any]) -> float:
    return float(ds_config["optimizer"].get("params", {}).get("weight_decay", 0.0))


# What DeepSpeed knows of its JSON. Read from DeepSpeed itself rather than copied, so that it follows upgrades:
# the keys its config reader asks for, its pydantic models' fields and aliases, its optimizers' constructors.

def check_ds_config_keys(path: str | Path, strict: bool = False) -> None:
    """Every key of the DeepSpeed JSON that DeepSpeed does not know, with its path and the nearest known key, and
    an optimizer.type it has not: an error where DeepSpeed would fail on it once the engine starts (a pydantic
    section, an optimizer constructor), or with `strict`; else, as DeepSpeed ignores it, a warning on rank 0."""
    config = load_ds_config(path)
    check_sections(config, str(path))
    try:
        keys, optimizers = _keys_for(config), _optimizer_types()
    except Exception:  # noqa: BLE001 - a DeepSpeed whose internals differ: left unchecked rather than a failed run
        return
    _check_optimizer_type(config, str(path), *optimizers)
    unknown = _unknown_keys(config, keys)
    if not unknown:
        return
    it = "it" if len(unknown) == 1 else "them"
    what = (f"DeepSpeed config {path}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(text for text, _ in unknown)}")
    if any(refused for _, refused in unknown):
        raise UserError(f"{what}; DeepSpeed would fail on {it} when its engine starts: correct or remove {it}")
    if strict:
        raise UserError(f"{what}; DeepSpeed ignores {it} and --strict-config refuses {it}: correct or remove {it}")
    if distributed.current().is_main:
        print(f"{PROG}: warning: {what}; DeepSpeed ignores {it} (--strict-config makes this an error)",
              file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Keys:
    """The keys DeepSpeed knows in one object of its JSON, the objects nested in it that are checked too, and
    whether DeepSpeed fails on another key (pydantic's extra="forbid", a constructor without **kwargs)."""

    known: frozenset[str]
    refused: bool = False
    nested: dict[str, _Keys] = dataclasses.field(default_factory=dict)


def _unknown_keys(config: dict[str, Any], keys: _Keys, prefix: str = "") -> list[tuple[str, bool]]:
    """("path (did you mean key?)", whether DeepSpeed refuses it) for each key of `config` that `keys` lacks."""
    found = []
    for key, value in config.items():
        if key not in keys.known:
            near = difflib.get_close_matches(key, sorted(keys.known), n=1)
            found.append((f"{prefix}{key}" + (f" (did you mean {near[0]}?)" if near else ""), keys.refused))
        elif key in keys.nested and isinstance(value, dict):
            found += _unknown_keys(value, keys.nested[key], f"{prefix}{key}.")
    return found


def _keys_for(config: dict[str, Any]) -> _Keys:
    """`_deepspeed_keys`, with optimizer.params' keys for this config's optimizer."""
    keys = _deepspeed_keys()
    optimizer = config.get("optimizer")
    params = _optimizer_params_keys(optimizer) if isinstance(optimizer, dict) else None
    if params is None:
        return keys
    with_params = dataclasses.replace(keys.nested["optimizer"], nested={"params": params})
    return dataclasses.replace(keys, nested={**keys.nested, "optimizer": with_params})


@functools.cache
def _deepspeed_keys() -> _Keys:
    """The top level, "optimizer" and "checkpoint" as DeepSpeedConfig reads them (all ignore unknown keys), and
    zero_optimization, bf16 and fp16 as DeepSpeed's pydantic models define them."""
    from deepspeed.runtime.precision_config import (BFLOAT16, BFLOAT16_OLD, FP16, DeepSpeedBF16Config,
                                                    DeepSpeedFP16Config)
    from deepspeed.runtime.zero.config import ZERO_OPTIMIZATION, DeepSpeedZeroConfig

    read = _keys_read_by_deepspeed()
    bf16 = _model_keys(DeepSpeedBF16Config)
    checkpoint = _Keys(read["checkpoint"], nested={"writer": _Keys(read["checkpoint.writer"])})
    return _Keys(read[""], nested={
        ZERO_OPTIMIZATION: _model_keys(DeepSpeedZeroConfig), BFLOAT16: bf16, BFLOAT16_OLD: bf16,
        FP16: _model_keys(DeepSpeedFP16Config), "optimizer": _Keys(read["optimizer"]), "checkpoint": checkpoint})


class _ReadRecorder(dict):
    """A dict that records each key looked up in it; given to DeepSpeed's config reader, the keys it reads."""

    def __init__(self, **items: Any) -> None:
        super().__init__(**items)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def keys(self) -> collections.abc.KeysView:  # DeepSpeed asks `key in config.keys()`: answered by __contains__
        return collections.abc.KeysView(self)


def _keys_read_by_deepspeed() -> dict[str, frozenset[str]]:
    """The keys DeepSpeedConfig reads at the top level, in "optimizer" and in "checkpoint" (and its "writer"):
    its reader (_initialize_params, where it reads them all) run on recording, empty sections."""
    from deepspeed.runtime.config import DeepSpeedConfig

    writer = _ReadRecorder()
    checkpoint = _ReadRecorder(writer=writer)
    optimizer = _ReadRecorder(type="AdamW")  # with a type, the reader goes on to ask for "params"
    top = _ReadRecorder(optimizer=optimizer, checkpoint=checkpoint)
    DeepSpeedConfig.__new__(DeepSpeedConfig)._initialize_params(top)
    return {name: frozenset(section.read) for name, section in
            (("", top), ("optimizer", optimizer), ("checkpoint", checkpoint), ("checkpoint.writer", writer))}


def _model_keys(model: type) -> _Keys:
    """A DeepSpeed pydantic config model's fields and their aliases, with the models nested in it."""
    from pydantic import BaseModel

    known, nested = set(), {}
    for name, field in model.model_fields.items():
        names = {name, field.alias} - {None}
        known |= names
        inner = [t for t in (field.annotation, *typing.get_args(field.annotation))
                 if isinstance(t, type) and issubclass(t, BaseModel)]
        if inner:
            nested.update(dict.fromkeys(names, _model_keys(inner[0])))
    return _Keys(frozenset(known), refused=model.model_config.get("extra") == "forbid", nested=nested)


def _optimizer_params_keys(optimizer: dict[str, Any]) -> _Keys | None:
    """optimizer.params' keys for its type, as DeepSpeedEngine._configure_basic_optimizer hands them on (None:
    a type whose keys are not checked)."""
    import torch
    from deepspeed.runtime import config as ds
    from deepspeed.runtime.engine import DeepSpeedEngine

    name = str(optimizer.get("type", ""))
    params = optimizer.get("params") if isinstance(optimizer.get("params"), dict) else {}
    # Taken out by DeepSpeedEngine.get_optimizer_configuration before the constructor gets the rest.
    taken = (ds.ADAM_W_MODE, ds.TORCH_ADAM_PARAM, "fp32_optimizer_states", "foreach")
    if name.lower() == ds.MUON_OPTIMIZER:  # its Muon and Adam halves pick their keys; DeepSpeed ignores others
        return _Keys(frozenset({*DeepSpeedEngine._MUON_HALF_KEYS, *DeepSpeedEngine._ADAM_HALF_KEYS, "muon_lr",
                                "adam_lr", *taken}))
    if name.lower() in (ds.ADAM_OPTIMIZER, ds.ADAMW_OPTIMIZER):
        if params.get(ds.TORCH_ADAM_PARAM):
            return _constructor_keys(torch.optim.AdamW, torch.optim.Adam, also=taken)
        from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam  # on the GPU, or with the optimizer offloaded

        return _constructor_keys(FusedAdam, DeepSpeedCPUAdam, also=taken)
    if name.lower() not in ds.DEEPSPEED_OPTIMIZERS and isinstance(getattr(torch.optim, name, None), type):
        return _constructor_keys(getattr(torch.optim, name))  # DeepSpeed's fallback: torch.optim.<type>(**params)
    return None


def _constructor_keys(*constructors: Any, also: tuple[str, ...] = ()) -> _Keys:
    """The keyword arguments after the parameters themselves; another key is a TypeError unless one takes **kwargs."""
    known, refused = set(also), True
    for constructor in constructors:
        for parameter in list(inspect.signature(constructor).parameters.values())[1:]:
            if parameter.kind is parameter.VAR_KEYWORD:
                refused = False
            else:
                known.add(parameter.name)
    return _Keys(frozenset(known), refused=refused)


@functools.cache
def _optimizer_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """DeepSpeed's own optimizer names (matched in any case) and torch.optim's classes (its fallback)."""
    import torch
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    return tuple(DEEPSPEED_OPTIMIZERS), tuple(
        n for n, v in vars(torch.optim).items()
        if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer)


def _check_optimizer_type(config: dict[str, Any], where: str, deepspeeds: tuple[str, ...],
                          torchs: tuple[str, ...]) -> None:
    """optimizer.type: one that DeepSpeed builds (DeepSpeedEngine._is_supported_optimizer's rule)."""
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict) or "type" not in optimizer:
        return  # resolve_ds_config asks for one
    name = optimizer["type"]
    if isinstance(name, str) and (name.lower() in deepspeeds or name in torchs):
        return
    near = difflib.get_close_matches(str(name), [*torchs, *deepspeeds], n=1)
    raise UserError(f"DeepSpeed config {where}: optimizer.type {name!r} is neither one of DeepSpeed's optimizers "
                    f"nor a torch.optim class" + (f" (did you mean {near[0]}?)" if near else "")
                    + "; e.g. AdamW")
