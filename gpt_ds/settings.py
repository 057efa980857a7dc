"""Run settings: the `RunSettings` dataclass, its command line, and the DeepSpeed config it points at.

One source of truth per setting (DESIGN.md): the model architecture lives in `GPTConfig` (chosen
by `--model` preset), micro-batch size, gradient accumulation, optimizer and precision live in the
DeepSpeed JSON, and everything else about a run lives here. `--lr` defaults to the JSON's
optimizer lr, so the JSON stays the place where a DeepSpeed user looks for it.

`resolve_ds_config` reads and checks the JSON for a given world size: it is the one place that
makes `train_batch_size` consistent with the number of ranks (or explains why it cannot).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_ds.errors import UserError
from gpt_ds.recipes import ARCHITECTURE_FIELDS, MUON_CONFIG, RECIPES
from gpt_ds.run_dir import RunDir
from gpt_ds.schedule import DEFAULT_DECAY_FRACTION, SCHEDULES

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
    resume: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    log_interval: int = 10
    sample_tokens: int = 48
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
    p = argparse.ArgumentParser(
        prog="launch/train.py",
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
    p.add_argument("--resume", default=defaults.resume, metavar="auto|never|PATH", help=RESUME_HELP)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--log-interval", type=int, default=defaults.log_interval, metavar="N",
                   help="steps between TensorBoard scalar writes")
    p.add_argument("--sample-tokens", type=int, default=defaults.sample_tokens, metavar="N",
                   help="length of the text sample generated at each eval (0: none)")
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
    """Parse argv into RunSettings and check the values that need nothing but themselves."""
    ns = build_parser().parse_args(argv)  # argparse itself reports unknown flags: one line, exit 2
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(RunSettings)}
    settings = RunSettings(**values)
    check_values(settings)
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
    if s.target_loss is not None and s.target_loss <= 0:
        raise UserError(f"--target-loss must be positive (got {s.target_loss}); a cross-entropy is never below 0")
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


def resolve_ds_config(path: str | Path, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `world_size` ranks, with consistent batch sizes.

    DeepSpeed requires train_batch_size == micro_batch * grad_accum * world_size. Configs here give
    the micro-batch and accumulation (per-rank facts) and let the global batch follow the world
    size; a config that pins train_batch_size gets the accumulation derived from it, and an error
    that shows the arithmetic when no whole number of accumulation steps fits.
    """
    config = load_ds_config(path)
    where = str(path)
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
            raise UserError(
                f"DeepSpeed config {where}: train_batch_size {total} is not a multiple of micro-batch {micro} x "
                f"{world_size} ranks; remove train_batch_size (it then follows the world size) or change it")
    elif total != micro * accum * world_size:
        raise UserError(
            f"DeepSpeed config {where}: train_batch_size {total} != micro-batch {micro} x accumulation {accum} x "
            f"{world_size} ranks = {micro * accum * world_size}; remove train_batch_size so it follows the world size")
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum
    config["train_batch_size"] = micro * accum * world_size

    if _enabled(config, "fp16") and _enabled(config, "bf16"):
        raise UserError(f"DeepSpeed config {where}: fp16 and bf16 are both enabled; enable one")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2):
        # Stage 0 writes no partitioned fp32 optimizer state, which the export (DeepSpeed's
        # zero_to_fp32) consolidates the final weights from. ZeRO-3 partitions the parameters
        # themselves; the tied output head and the eval-time sampler read them outside their
        # module's forward, which stage 3 does not gather for.
        raise UserError(f"DeepSpeed config {where}: zero_optimization.stage must be 1 or 2 (got {stage!r}): stage 0 "
                        "checkpoints cannot be consolidated and stage 3 is not supported; use ds_configs/zero2.json")
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, dict) or "type" not in optimizer:
        raise UserError(f"DeepSpeed config {where}: needs an \"optimizer\" section with a \"type\" (e.g. AdamW)")
    if "scheduler" in config:
        raise UserError(f"DeepSpeed config {where}: remove the \"scheduler\" section; the learning-rate schedule "
                        "is set by --lr/--min-lr/--warmup-steps/--lr-decay-steps so that resumes follow it exactly")
    return config


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
    """optimizer.params[key], falling back to optimizer.params.lr (DeepSpeed's own rule for muon_lr/adam_lr)."""
    params = ds_config["optimizer"].get("params", {})
    lr = params.get(key, params.get("lr"))
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


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
