"""The record of a run: its progress and outcome, in one typed place.

One `RunRecord` is carried through training and written, as the same keys, into every checkpoint's
client state, the model folder's metadata (config.json) and RUN_DIR/settings.json; the summary line,
the quickstart and the app's model card read it back with `RunRecord.from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class RunRecord:
    """Where a run stands (step, tokens, time, losses), whether and when it met its loss target, and
    what it is (preset, ranks, precision, seed, data)."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    train_loss: float | None = None  # smoothed (EMA) training loss
    val_loss: float | None = None
    val_bpb: float | None = None  # bits per byte of the val loss (gpt_ds.bpb); absent from older records
    # --eval-tasks at the last evaluation: task -> {acc, acc_norm, n} (gpt_ds.mc_eval); absent from older records
    eval_tasks: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    target_loss: float | None = None
    target_step: int | None = None  # the first step at which the target was met
    target_tokens: int | None = None
    target_seconds: float | None = None
    preset: str | None = None
    world_size: int | None = None
    precision: str | None = None
    seed: int | None = None
    data: str | None = None
    # --init-from: the parent folder, its kind, weights' sha256, tokens and steps (gpt_ds.init_from.Parent)
    init_from: dict[str, Any] | None = None
    chat_template: str | None = None  # a fine-tune on conversations: gpt_ds.tokenizer.CHAT_TEMPLATE

    @property
    def target_reached(self) -> bool:
        return self.target_step is not None

    def advance(self, tokens: int, seconds: float) -> None:
        """Count one optimizer step of `tokens` tokens that took `seconds`."""
        self.step += 1
        self.tokens += tokens
        self.train_seconds += seconds

    def reach_target(self) -> None:
        """Record that the target is met now (at the current step, tokens and training time)."""
        self.target_step, self.target_tokens, self.target_seconds = self.step, self.tokens, self.train_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "target_reached": self.target_reached}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RunRecord":
        """The record in `d` (a client state, model metadata, ...): other keys are ignored, and a value of
        the wrong type (metadata written by another tool may hold anything) reads as unknown."""
        d = d or {}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name == "eval_tasks":
                values[f.name] = _coerce_tasks(d.get(f.name))
                continue
            if f.name == "init_from":
                values[f.name] = d.get(f.name) if isinstance(d.get(f.name), dict) else None
                continue
            kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
            values[f.name] = _coerce(d.get(f.name), kind, f.default)
        return cls(**values)


def _coerce(value: Any, kind: type, default: Any) -> Any:
    if value is None or isinstance(value, bool):
        return default
    if kind is str:
        return value if isinstance(value, str) else default
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _coerce_tasks(value: Any) -> dict[str, dict[str, float]]:
    """The eval_tasks entries that hold numbers for acc, acc_norm and n; anything else reads as unknown."""
    if not isinstance(value, dict):
        return {}
    tasks = {}
    for name, figures in value.items():
        if isinstance(figures, dict) and all(isinstance(figures.get(key), (int, float)) and
                                             not isinstance(figures.get(key), bool) for key in ("acc", "acc_norm", "n")):
            tasks[str(name)] = {"acc": float(figures["acc"]), "acc_norm": float(figures["acc_norm"]), "n": int(figures["n"])}
    return tasks
