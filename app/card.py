"""The model card: what the page says about a model, and how its figures are written.

Defines: `ModelCard` (the model's shape and architecture from its config, its training record from the model
folder's metadata, read as a `gpt_ds.record.RunRecord`, with its --eval-tasks scores, and the benchmark results
of launch/eval.py kept in MODEL_DIR/evals for these weights), `model_card`, and the
formatting of counts, losses and accuracies (`format_count`, `format_loss`, `format_accuracy`; "—" for unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from discovery import display_name

from gpt_ds.eval_results import headline, read_results
from gpt_ds.model import GPT
from gpt_ds.model_io import ModelInfo
from gpt_ds.record import RunRecord

UNKNOWN = "—"
LOSS_LIKE = ("bpb", "word_perplexity", "byte_perplexity", "bits_per_byte", "loss")  # not fractions


@dataclass(frozen=True)
class ModelCard:
    """What the page says about a model; None where the folder does not record it."""

    name: str
    preset: str | None
    parameters: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    tokenizer: str
    architecture: str = "GPT-2"  # GPTConfig.architecture: "GPT-2" or e.g. "modern: rope, qk-norm, relu², untied, softcap 30"
    steps: int | None = None
    tokens: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_bpb: float | None = None  # bits per byte (gpt_ds.bpb); older folders do not record it
    eval_tasks: dict[str, dict[str, float]] | None = None  # --eval-tasks: task -> {acc, acc_norm, n}; older: None
    benchmarks: tuple[tuple[str, str, float], ...] = ()  # launch/eval.py: (task, metric, value) of these weights
    parent: str | None = None  # --init-from: "FOLDER (its N tokens, M steps)"; None: trained from scratch
    target_loss: float | None = None
    target_reached: bool | None = None
    target_step: int | None = None


def model_card(model: GPT, info: ModelInfo) -> ModelCard:
    """The card of a loaded model. A folder without a training record (e.g. imported from Hugging
    Face) gets its shape only: its training figures are unknown."""
    cfg = info.config
    shape = dict(
        name=display_name(Path(info.folder)),
        parameters=model.num_params(),
        context=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        tokenizer=info.tokenizer,
        architecture=cfg.architecture,
        benchmarks=tuple((result.task, *figure) for result in read_results(info.folder, info.weights_sha256)
                         if (figure := headline(result)) is not None),
    )
    record = RunRecord.from_dict(info.metadata)
    if record == RunRecord():  # nothing recorded: not the record of a run that made no step
        return ModelCard(preset=None, **shape)
    return ModelCard(
        preset=record.preset,
        steps=record.step,
        tokens=record.tokens,
        train_loss=record.train_loss,
        val_loss=record.val_loss,
        val_bpb=record.val_bpb,
        eval_tasks=record.eval_tasks or None,
        target_loss=record.target_loss,
        target_reached=None if record.target_loss is None else record.target_reached,
        target_step=record.target_step,
        parent=lineage_text(record.init_from),
        **shape,
    )


def lineage_text(lineage: dict | None) -> str | None:
    """'runs/base/model (1.23M tokens, 300 steps of its own)' from RunRecord.init_from."""
    if not lineage:
        return None
    own = [f"{format_count(lineage[key])} {word}" for key, word in (("tokens", "tokens"), ("steps", "steps"))
           if isinstance(lineage.get(key), int)]
    kind = " (Hugging Face)" if lineage.get("kind") == "huggingface" else ""
    return f"{lineage.get('folder', UNKNOWN)}{kind}" + (f", {', '.join(own)} of its own" if own else "")


def format_count(n: int | None) -> str:
    """1234567 -> '1.23M': counts as people say them."""
    if n is None:
        return UNKNOWN
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def format_loss(value: float | None) -> str:
    return UNKNOWN if value is None or not math.isfinite(value) else f"{value:.3f}"


def format_accuracy(value: float | None) -> str:
    """0.3114 -> '31.1%'."""
    return UNKNOWN if value is None or not math.isfinite(value) else f"{value:.1%}"
