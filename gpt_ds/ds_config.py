"""The DeepSpeed JSON: `load` reads it once; `resolve` checks it and resolves it for a world size into one
`DeepSpeedConfig`, the dict that deepspeed.initialize gets with the facts the run reads from it (batch sizes,
ZeRO stage, precision, optimizer, learning rates).

The JSON holds the per-rank facts: micro-batch, gradient accumulation, optimizer, precision, ZeRO stage.
DeepSpeed requires train_batch_size == micro-batch x accumulation x world size, so the global batch follows
the world size; a JSON that pins train_batch_size gets the accumulation derived from it, and an error that
shows the arithmetic when no whole number of accumulation steps fits. `--lr` defaults to the JSON's
optimizer lr, so the JSON stays the place where a DeepSpeed user looks for it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_ds import json_object
from gpt_ds.errors import UserError
from gpt_ds.recipes import MUON_CONFIG

SECTIONS = ("zero_optimization", "bf16", "fp16", "optimizer", "checkpoint")  # JSON objects, when present

# A fine-tune's (--init-from) default peak: the config's lr / 3, the best of x1, 1/3, 1/10 and 1/30 in
# bench/finetune.py (tiny, 100 steps from the quickstart's model onto the stdlib's tests; docs/training.md).
FINETUNE_LR_SCALE = 1 / 3


@dataclass(frozen=True)
class DeepSpeedConfig:
    """The DeepSpeed JSON at `path`, checked and resolved for a world size."""

    path: str
    config: dict[str, Any]  # what deepspeed.initialize gets (and every checkpoint records)
    train_batch_size: int  # the global batch: micro_batch x accumulation x world size
    micro_batch: int
    accumulation: int
    zero_stage: int  # 1, 2 or 3
    precision: str  # "bf16", "fp16" or "fp32"
    is_muon: bool  # DeepSpeed's Muon (with its auxiliary Adam)
    weight_decay: float
    lr: float | None  # the JSON's lr of the schedule's groups (with Muon: the Adam half's, adam_lr)
    muon_lr_ratio: float | None  # Muon: the matrices' peak lr over the Adam half's (muon_lr / adam_lr); else None

    def learning_rates(self, lr: float | None, min_lr: float | None, fine_tune: bool = False) -> tuple[float, float]:
        """The schedule's peak and floor: --lr, else the JSON's (a fine-tune's: a third of it, FINETUNE_LR_SCALE);
        --min-lr, else a tenth of the peak."""
        peak = lr if lr is not None else None if self.lr is None else self.lr * (FINETUNE_LR_SCALE if fine_tune else 1)
        if peak is None:
            key = "adam_lr" if self.is_muon else "lr"
            raise UserError(f"no learning rate: pass --lr or set optimizer.params.{key} in the DeepSpeed config")
        floor = min_lr if min_lr is not None else peak / 10
        if floor > peak:
            raise UserError(f"--min-lr {floor:g} is above the peak learning rate {peak:g} (--lr or the DeepSpeed "
                            "config's); the schedule decays from the peak to --min-lr: lower --min-lr")
        return peak, floor


def load(path: str | Path) -> dict[str, Any]:
    """Read the DeepSpeed JSON, as a dict, with a clear error for a missing or malformed file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"DeepSpeed config {path} is a folder; pass a JSON file to --deepspeed_config, "
                        "e.g. ds_configs/zero2.json")
    if not path.is_file():
        raise UserError(f"DeepSpeed config {path} not found; pass one of ds_configs/*.json to --deepspeed_config")
    return json_object.read(path, fix="fix the file, e.g. from ds_configs/zero2.json",
                            source=f"DeepSpeed config {path}")


def resolve(loaded: dict[str, Any], path: str | Path, world_size: int, global_batch: int | None = None
            ) -> DeepSpeedConfig:
    """`loaded` (left as it is) for `world_size` ranks, with consistent batch sizes and every value checked.
    `global_batch` (a resume's: the checkpoint's train_batch_size) pins the global batch, whatever the JSON says."""
    config, where = copy.deepcopy(loaded), str(path)
    if global_batch is not None:
        where = f"{path} (keeping the checkpoint's global batch of {global_batch})"
        config["train_batch_size"] = global_batch
        config.pop("gradient_accumulation_steps", None)
    micro, accum = _batch_sizes(config, where, world_size, resuming=global_batch is not None)
    config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
                  train_batch_size=micro * accum * world_size)
    _check_training(config, where)
    optimizer, muon = config["optimizer"], _is_muon(config)
    return DeepSpeedConfig(
        path=str(path), config=config, train_batch_size=config["train_batch_size"], micro_batch=micro,
        accumulation=accum, zero_stage=config["zero_optimization"]["stage"], precision=_precision(config),
        is_muon=muon, weight_decay=float(optimizer.get("params", {}).get("weight_decay", 0.0)),
        lr=_config_lr(optimizer, "adam_lr" if muon else "lr"),
        muon_lr_ratio=_muon_lr_ratio(optimizer) if muon else None)


def _batch_sizes(config: dict[str, Any], where: str, world_size: int, resuming: bool = False) -> tuple[int, int]:
    """(micro-batch, accumulation) from the JSON's train_micro_batch_size_per_gpu, gradient_accumulation_steps
    and train_batch_size (any two, or the micro-batch alone) for `world_size` ranks."""
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
        return micro, accum or 1
    if accum is None:
        accum, rest = divmod(total, micro * world_size)
        if rest or accum == 0:
            fix = (f"resume on a number of ranks that divides {total // micro} (with this micro-batch), or set "
                   "train_micro_batch_size_per_gpu so that micro-batch x ranks divides it" if resuming else
                   "remove train_batch_size (it then follows the world size) or change it")
            raise UserError(
                f"DeepSpeed config {where}: train_batch_size {total} is not a multiple of micro-batch {micro} x "
                f"{world_size} ranks; {fix}")
    elif total != micro * accum * world_size:
        raise UserError(
            f"DeepSpeed config {where}: train_batch_size {total} != micro-batch {micro} x accumulation {accum} x "
            f"{world_size} ranks = {micro * accum * world_size}; remove train_batch_size so it follows the world size")
    return micro, accum


def _positive_int(config: dict, key: str, where: str) -> int | None:
    value = config.get(key)
    if value is None or value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"DeepSpeed config {where}: {key} must be a positive integer (got {value!r})")
    return value


def _check_training(config: dict[str, Any], where: str) -> None:
    """What a run needs of the JSON beside its batch sizes: one precision, ZeRO stage 1-3, an optimizer with
    sound numbers, and no scheduler (the schedule is gpt-ds's)."""
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


def _precision(config: dict[str, Any]) -> str:
    """"bf16", "fp16" or "fp32": the training precision the DeepSpeed JSON selects."""
    if _enabled(config, "bf16"):
        return "bf16"
    if _enabled(config, "fp16"):
        return "fp16"
    return "fp32"


def _enabled(config: dict[str, Any], section: str) -> bool:
    """Whether the DeepSpeed JSON's `section` (fp16, bf16) says "enabled": true."""
    return config.get(section, {}).get("enabled", False) is True


def _is_muon(config: dict[str, Any]) -> bool:
    """Whether the DeepSpeed JSON's optimizer is DeepSpeed's Muon (with its auxiliary Adam)."""
    return str(config["optimizer"].get("type", "")).lower() == "muon"


def _config_lr(optimizer: dict[str, Any], key: str) -> float | None:
    """optimizer.params[key], falling back to optimizer.params.lr (DeepSpeed's own rule for muon_lr/adam_lr);
    numbers, as `_check_optimizer_params` made sure."""
    params = optimizer.get("params", {})
    lr = params.get(key, params.get("lr"))
    return None if lr is None else float(lr)


def _muon_lr_ratio(optimizer: dict[str, Any]) -> float:
    """The fixed ratio at which Muon's groups follow the schedule (--lr moves both halves): muon_lr / adam_lr."""
    muon, adam = _config_lr(optimizer, "muon_lr"), _config_lr(optimizer, "adam_lr")
    if muon is None or adam is None or adam <= 0 or muon < 0:
        raise UserError("the Muon optimizer needs optimizer.params.muon_lr >= 0 and adam_lr > 0 (or one lr) "
                        f"in the DeepSpeed config (got muon_lr {muon}, adam_lr {adam}); see {MUON_CONFIG}")
    return muon / adam
