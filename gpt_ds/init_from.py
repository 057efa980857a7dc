"""--init-from: a run that starts from the weights of a model folder, gpt-ds's or a transformers GPT-2's
(imported in memory through gpt_ds.hf, with the same safe loading), instead of random ones.

The architecture is the folder's. A shape or architecture flag that contradicts it is refused, and so is a
--model preset of another shape. --block-size may shrink the context (learned positions keep their first
rows); it may grow it only with rotary positions: learned positions the parent never had cannot be made up.
Dropout is training's (0, as every preset), not the parent's: a fine-tune's first step computes the parent's
own loss on its batch.

The optimizer and the schedule start fresh (settings.py gives fine-tuning a short warmup). Vocabulary rows
the parent never had (a larger vocab_size: tokens added for chat) start at the mean of the parent's rows, in
the embedding and in an untied head: a new token starts as an average token, neither favoured nor ruled out.

Defines `Parent` (the folder, its kind, config and weights' sha256, its own tokens and steps: the lineage a
run records), `read_parent`, `child_config` and `load_parent_into`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpt_ds.atomic import file_sha256
from gpt_ds.errors import UserError
from gpt_ds.model_config import GPTConfig, config_from_preset
from gpt_ds.model_io import (HF_KIND, MODEL_KIND, VOCAB_ROWS, WEIGHTS_FILE, check_tensors, folder_kind,
                             read_model_info, read_safetensors, require_folder)
from gpt_ds.record import RunRecord
from gpt_ds.settings import DEFAULT_PRESET

if TYPE_CHECKING:
    from gpt_ds.model import GPT
    from gpt_ds.settings import RunSettings

FLAG = "--init-from"
POSITIONS = "transformer.wpe.weight"
SHAPE_FLAGS = {"n_layer": "--n-layer", "n_head": "--n-head", "n_embd": "--n-embd"}


@dataclass(frozen=True)
class Parent:
    """The folder a run starts from, and what the run's record keeps of it."""

    folder: Path
    kind: str  # model_io.MODEL_KIND or HF_KIND
    config: GPTConfig
    weights: Path  # the file whose sha256 identifies the weights (a sharded folder's: its index)
    recorded_sha256: str | None = None  # a gpt-ds folder's config.json records it
    tokens: int | None = None  # the parent's own training, where its folder records it
    steps: int | None = None

    @functools.cached_property
    def weights_sha256(self) -> str:
        """The recorded sha256, else the weights file's, hashed when first asked (a fresh run's lineage: a
        resume never needs it)."""
        return self.recorded_sha256 or file_sha256(self.weights)

    def lineage(self) -> dict[str, Any]:
        """What RunRecord.init_from holds: the parent folder, its kind, its weights' sha256, tokens and steps."""
        return {"folder": str(self.folder), "kind": self.kind, "weights_sha256": self.weights_sha256,
                "tokens": self.tokens, "steps": self.steps}


def read_parent(path: str | Path) -> Parent:
    """The folder `path` as a parent (its config; no weights read yet); UserError naming the fix when it is
    neither kind of model folder."""
    folder = Path(path)
    require_folder(folder, f"{FLAG} folder", "pass a model folder (RUN_DIR/model) or a Hugging Face GPT-2 folder",
                   "e.g. runs/pretrain/model")
    kind = folder_kind(folder)
    if kind == MODEL_KIND:
        info = read_model_info(folder)
        record = RunRecord.from_dict(info.metadata)
        return Parent(folder.resolve(), kind, info.config, folder.resolve() / WEIGHTS_FILE, info.weights_sha256,
                      record.tokens or None, record.step or None)
    if kind == HF_KIND:
        from gpt_ds.hf import HF_INDEX, HF_PICKLE, read_hf_config

        config = read_hf_config(folder)
        weights = next((folder / name for name in (WEIGHTS_FILE, HF_INDEX, HF_PICKLE) if (folder / name).is_file()),
                       None)
        if weights is None:
            raise UserError(f"{FLAG} {folder}: a Hugging Face folder without weights ({WEIGHTS_FILE} or {HF_PICKLE}); "
                            "download it again")
        return Parent(folder.resolve(), kind, config, weights.resolve())
    raise UserError(f"{FLAG} {folder} is not a model folder (no gpt-ds or Hugging Face config.json); pass a run's "
                    "model/ folder or a Hugging Face GPT-2 folder (save_pretrained)")


def child_config(parent: Parent, settings: RunSettings) -> GPTConfig:
    """The run's model: the parent's architecture, its context changed by --block-size where allowed, no
    dropout. UserError for a flag that contradicts the folder."""
    config = parent.config
    for name, flag in SHAPE_FLAGS.items():
        given = getattr(settings, name)
        if given is not None and given != getattr(config, name):
            raise UserError(f"{flag} {given} contradicts {FLAG} {settings.init_from} (its {name} is "
                            f"{getattr(config, name)}); the architecture comes from the folder: drop {flag}")
    if settings.model != DEFAULT_PRESET:
        preset = config_from_preset(settings.model)
        if any(getattr(preset, name) != getattr(config, name) for name in SHAPE_FLAGS):
            raise UserError(f"--model {settings.model} contradicts {FLAG} {settings.init_from} (a "
                            f"{config.n_layer}-layer, {config.n_embd}-wide model); drop --model")
    for name, value in settings.architecture_flags().items():
        if value != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {value} contradicts {FLAG} {settings.init_from} (its {name} is "
                            f"{getattr(config, name)}); the architecture comes from the folder: drop {flag}")
    block = settings.block_size or config.block_size
    if block > config.block_size and config.pos_embedding == "learned":
        raise UserError(f"--block-size {block} is longer than {FLAG} {settings.init_from}'s {config.block_size} learned "
                        f"positions (positions it never learned cannot be made up); use --block-size <= "
                        f"{config.block_size}")
    return dataclasses.replace(config, block_size=block, dropout=0.0)


@torch.no_grad()
def load_parent_into(model: GPT, parent: Parent) -> None:
    """Copy the parent's weights into `model` (GPT(child_config), on the CPU): positions cut to the model's
    context, vocabulary rows the parent lacks set to the mean of its rows, the padding rows zero."""
    if parent.kind == HF_KIND:
        from gpt_ds.hf import hf_state

        _, tensors = hf_state(parent.folder)
    else:
        tensors = read_safetensors(parent.folder / WEIGHTS_FILE)
        check_tensors(tensors, parent.config, source=str(parent.folder / WEIGHTS_FILE))
    vocab = model.config.vocab_size
    for name, target in model.state_dict().items():
        source = tensors[name]
        if name == POSITIONS:
            source = source[: target.shape[0]]
        if name in VOCAB_ROWS:
            known = min(source.shape[0], vocab)
            target.zero_()
            target[:known].copy_(source[:known])
            target[known:vocab].copy_(source[:known].mean(dim=0, dtype=torch.float32).to(target.dtype))
        else:
            target.copy_(source)
