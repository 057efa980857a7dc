"""The model folder: the one on-disk format of a trained model, and its one loader.

A model folder holds
- `model.safetensors`: the weights under the GPT-2 names of gpt_ds.model (`transformer.wte.weight`,
  ...), with the token embedding at its real size (vocab_size rows: the padding to a multiple of 64
  is a runtime speed device, re-added on load); no separate output head when it is tied to wte (GPT-2),
  `lm_head.weight` at its real size too when untied (tie_head=False); no `transformer.wpe.weight`
  with rotary positions (pos_embedding="rope");
- `config.json`: {"model": GPTConfig.to_dict(), "tokenizer": "r50k_base", "metadata": {...}}, the
  metadata being free-form (training writes its preset, steps, tokens, losses there).

Training's export, the app, launch/sample.py and the Hugging Face converters all go through
`save_model` / `load_model`. Loading reads safetensors only, so opening a model never unpickles.
Saving is atomic: the folder is assembled under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from gpt_ds.errors import UserError
from gpt_ds.model import GPT, GPTConfig
from gpt_ds.tokenizer import DEFAULT_ENCODING

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKEN_EMBEDDING = "transformer.wte.weight"
# Prefixes that wrappers add to parameter names: DDP/DeepSpeed (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# The output head: a model with tie_head=False stores it under this name; for a tied model (GPT-2) it
# is a second name for wte that some exporters include, and dropped.
TIED_HEAD = "lm_head.weight"
OUTPUT_HEAD = TIED_HEAD
# The tensors stored at vocab_size rows and padded (with zeros) to padded_vocab_size on load.
VOCAB_ROWS = (TOKEN_EMBEDDING, OUTPUT_HEAD)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelInfo:
    """What config.json says about a model folder (no weights)."""

    config: GPTConfig
    tokenizer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """torch dtype for 'float32' | 'bfloat16' | 'float16' (or a torch.dtype, passed through)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a model folder for `config` holds, in the model's order."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost even for gpt2-xl
        model = GPT(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in VOCAB_ROWS:
        if name in shapes:
            shapes[name] = (config.vocab_size, config.n_embd)
    return shapes


def folder_state_dict(weights: nn.Module | Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The tensors to store for a model or a state dict (of GPT, possibly wrapped by DeepSpeed or
    torch.compile): wrapper prefixes stripped, `lm_head.weight` dropped when the config ties the head
    (a second name for wte), wte and an untied head cut to vocab_size rows, all contiguous on the CPU;
    checked against `config`."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else dict(weights)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name == TIED_HEAD and config.tie_head:
            continue
        tensors[name] = tensor
    for name in VOCAB_ROWS:
        if name in tensors:
            tensors[name] = tensors[name][: config.vocab_size]
    check_tensors(tensors, config, source="the weights to save")
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def check_tensors(tensors: Mapping[str, torch.Tensor], config: GPTConfig, source: str) -> None:
    """UserError naming the first tensor that is missing, unexpected or of the wrong shape."""
    expected = expected_shapes(config)
    fix = "the weights belong to a model with a different config; use the config.json saved with them"
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{source}: tensor {name} is missing (expected shape {list(shape)}); {fix}")
        found = tuple(tensors[name].shape)
        if found != shape:
            raise UserError(
                f"{source}: tensor {name} has shape {list(found)} but the config needs {list(shape)}; {fix}"
            )
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise UserError(f"{source}: unexpected tensor {unexpected[0]} (not part of a GPT with this config); {fix}")


@contextlib.contextmanager
def atomic_folder(folder: str | Path, file_names: Sequence[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to write `file_names` into; on success it replaces
    `folder` by renames, so `folder` is at every moment either complete or absent (or the complete
    old version). An existing `folder` holding other files is refused, so a typo cannot wipe a run."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"{folder} exists and is not a folder; choose another output path")
        others = sorted(p.name for p in folder.iterdir() if p.name not in file_names)
        if others:
            raise UserError(
                f"{folder} exists and holds other files ({', '.join(others[:3])}); choose a new or empty folder"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.rename(folder, retired / folder.name)
            os.rename(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_model(
    folder: str | Path,
    state_dict_or_model: nn.Module | Mapping[str, torch.Tensor],
    config: GPTConfig,
    metadata: dict[str, Any] | None = None,
    tokenizer: str = DEFAULT_ENCODING,
) -> Path:
    """Write a model folder atomically and return its path. An existing model folder at `folder` is
    replaced; a folder holding anything else is refused (see atomic_folder)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = folder_state_dict(state_dict_or_model, config)
    document = {"model": config.to_dict(), "tokenizer": tokenizer, "metadata": dict(metadata or {})}
    try:
        config_text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    except TypeError as err:
        raise UserError(f"model metadata must be JSON-serialisable: {err}") from err

    with atomic_folder(folder, (WEIGHTS_FILE, CONFIG_FILE)) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(config_text)
    return folder


def read_model_info(folder: str | Path) -> ModelInfo:
    """Read config.json of a model folder (no weights); UserError if it is missing or malformed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist; pass a folder made by training's export or gpt_ds.hf import")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{folder} has no {CONFIG_FILE}, so it is not a model folder; pass the `model/` folder of a run "
            f"(e.g. RUN_DIR/model) or create one with `python -m gpt_ds.export RUN_DIR`"
        )
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-export the model") from err
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise UserError(f"{path} has no \"model\" object with the model config; re-export the model")
    try:
        config = GPTConfig.from_dict(document["model"])
    except UserError as err:
        raise UserError(f"{path}: {err}") from err
    tokenizer = document.get("tokenizer", DEFAULT_ENCODING)
    metadata = document.get("metadata") or {}
    if not isinstance(tokenizer, str) or not isinstance(metadata, dict):
        raise UserError(f"{path}: \"tokenizer\" must be a string and \"metadata\" an object; re-export the model")
    return ModelInfo(config=config, tokenizer=tokenizer, metadata=metadata, folder=folder)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU (never unpickles); UserError if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}); write it again") from err


def load_model(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32
) -> tuple[GPT, ModelInfo]:
    """Load a model folder into a GPT in eval mode on `device` in `dtype`, with its ModelInfo."""
    info = read_model_info(folder)
    dtype = parse_dtype(dtype)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}; re-export the model (its weights are missing)")
    tensors = read_safetensors(path)
    check_tensors(tensors, info.config, source=str(path))

    # Build on the meta device and materialise uninitialised memory: the weights are about to be
    # overwritten, so running the random initialisation (seconds for gpt2-xl) would be wasted.
    # The dtype is set while still on meta, so memory is allocated once, already in that dtype.
    with torch.device("meta"):
        model = GPT(info.config)
    model.to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, target in model.state_dict().items():
            source = tensors[name]
            if name in VOCAB_ROWS:
                target.zero_()  # the padding rows: never looked up, never scored
                target[: source.shape[0]].copy_(source)
            else:
                target.copy_(source)
    model.eval()
    return model, info
