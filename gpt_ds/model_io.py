"""The model folder: the one on-disk format of a trained model, and its one loader.

A model folder holds
- `model.safetensors`: the weights under the GPT-2 names of gpt_ds.model (`transformer.wte.weight`,
  ...), with the token embedding at its real size (vocab_size rows: the padding to a multiple of 64
  is a runtime speed device, re-added on load); no separate output head when it is tied to wte (GPT-2),
  `lm_head.weight` at its real size too when untied (tie_head=False); no `transformer.wpe.weight`
  with rotary positions (pos_embedding="rope"). Its header's metadata records the model config the
  weights were saved with (`CONFIG_RECORD`);
- `config.json`: {"model": GPTConfig.to_dict(), "tokenizer": "r50k_base", "metadata": {...},
  "weights_sha256": "..."}, the metadata being free-form (training writes its preset, steps, tokens,
  losses there); a chat model's also "chat_template" (gpt_ds.tokenizer.CHAT_TEMPLATE).

Training's export, the app, launch/sample.py and the Hugging Face converters all go through
`save_model` / `load_model`. Loading reads safetensors only, so opening a model never unpickles.
Trust what is on disk: a load compares config.json's architecture with the one recorded in the
weights (a mismatch is an error naming the field) and the weights' sha256 with the recorded one (a
mismatch is a warning on stderr); folders saved before these records load without the checks.
Saving is atomic: the folder is assembled under a temporary name and renamed into place, and never
into its own input nor over a folder that is something else unless forced (`check_output_folder`,
shared with gpt_ds.hf's Hugging Face folders, which name their files alike: `folder_kind` tells the
two apart by config.json's shape).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from gpt_ds import json_object
from gpt_ds.atomic import file_sha256, full_disk_as_error
from gpt_ds.errors import UserError
from gpt_ds.model import GPT, GPTConfig
from gpt_ds.hf_tokenizer import HF_TOKENIZER_FILES
from gpt_ds.tokenizer import CHAT_TEMPLATE, DEFAULT_ENCODING

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

# Both kinds of folder that gpt-ds writes hold these two names; what tells them apart is config.json's shape.
FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
MODEL_KIND = "gpt-ds"  # config.json {"model": {...}, "tokenizer": ..., "metadata": ...}
HF_KIND = "huggingface"  # config.json of transformers: {"model_type": ..., ...}
KIND_NAMES = {MODEL_KIND: "a gpt-ds model folder", HF_KIND: "a Hugging Face model folder"}
# What a previous output of each kind holds (an export also carries its tokenizer).
KIND_FILES = {MODEL_KIND: FOLDER_FILES, HF_KIND: FOLDER_FILES + HF_TOKENIZER_FILES}
# The weights file's header metadata key holding the model config (JSON) they were saved with.
CONFIG_RECORD = "gpt_ds_model_config"
SHA256_KEY = "weights_sha256"  # config.json's record of model.safetensors' sha256
# Config fields that only training reads (a loaded model computes the same whatever they say), so
# config.json may differ from the weights' record in them.
TRAINING_ONLY_FIELDS = ("dropout", "zero_init_proj")


@dataclass
class ModelInfo:
    """What config.json says about a model folder (no weights)."""

    config: GPTConfig
    tokenizer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    weights_sha256: str | None = None  # None: saved before gpt-ds recorded it
    chat_template: str | None = None  # a chat model's template (gpt_ds.tokenizer.CHAT_TEMPLATE); None: a base model


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


def require_folder(path: Path, what: str, fix: str, example: str) -> None:
    """UserError unless `path` is a folder, telling a missing path from a file (a common slip: the
    weights file or config.json passed instead of the folder that holds them)."""
    if path.is_dir():
        return
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; {fix}")
    if path.name in FOLDER_FILES:
        instead = f"the folder that holds it, {path.parent}"
    else:
        instead = f"the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE} ({example})"
    raise UserError(f"{path} is a file, not a {what}; pass {instead}")


def folder_kind(folder: Path) -> str | None:
    """MODEL_KIND or HF_KIND by the shape of `folder`/config.json; None when it has none or another."""
    document = json_object.read_or_none(folder / CONFIG_FILE)
    if document is None:  # missing, unreadable, not JSON, not an object
        return None
    if "model_type" in document:
        return HF_KIND
    return MODEL_KIND if isinstance(document.get("model"), dict) else None


def _same(a: Path, b: Path) -> bool:
    # Resolved paths are equal, or the same directory reached another way (a bind mount).
    return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_not_input(out: str | Path, inputs: Sequence[str | Path]) -> None:
    """UserError when `out` is one of `inputs`, lies inside one or holds one (symlinks resolved):
    writing it would destroy the input, so no flag allows it."""
    target = Path(out).resolve()
    for source in inputs:
        origin = Path(source).resolve()
        if _same(target, origin):
            relation = "is"
        elif any(_same(parent, origin) for parent in target.parents):
            relation = "is inside"
        elif any(_same(parent, target) for parent in origin.parents):
            relation = "holds"
        else:
            continue
        resolved = [f"{given} is {real}" for given, real in ((out, target), (source, origin))
                    if Path(given).absolute() != real]
        via = f" ({', '.join(resolved)} once links are resolved)" if resolved else ""
        raise UserError(
            f"the output folder {out} {relation} the input {source}{via}, so writing it would destroy the "
            f"input; choose an output folder that is neither {source}, inside it nor above it (--force does not "
            "change this)"
        )


def check_output_folder(
    folder: str | Path, kind: str, force: bool = False, inputs: Sequence[str | Path] = ()
) -> None:
    """UserError unless `folder` may be written as a `kind` folder (MODEL_KIND or HF_KIND): a new or
    empty folder, or a previous output of the same kind (only KIND_FILES[kind], config.json of that
    shape). Anything else is refused unless `force`, which replaces the folder with all it holds.
    Never allowed, whatever `force` says: a file at `folder`, or `folder` being one of `inputs`,
    inside one or above one (check_not_input)."""
    folder = Path(folder)
    check_not_input(folder, inputs)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder; choose another output path")
    entries = sorted(p.name for p in folder.iterdir())
    found = folder_kind(folder)
    others = [name for name in entries if name not in KIND_FILES[kind]]
    if not entries or (found == kind and not others) or force:
        return
    if found is not None and found != kind:
        what = f"is {KIND_NAMES[found]}"
    elif others:
        what = f"holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
    elif CONFIG_FILE in entries:
        what = f"holds a {CONFIG_FILE} of no model folder (neither gpt-ds's nor Hugging Face's)"
    else:
        what = f"holds {WEIGHTS_FILE} without a {CONFIG_FILE}"
    raise UserError(
        f"{folder} exists and {what}: writing {KIND_NAMES[kind]} there would replace it; choose a new or "
        "empty folder, or pass --force to replace it and everything in it"
    )


@contextlib.contextmanager
def atomic_folder(
    folder: str | Path, kind: str, force: bool = False, inputs: Sequence[str | Path] = (), needed: int | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to write a `kind` folder into; on success it replaces
    `folder` by renames, so `folder` is at every moment either complete or absent (or the complete
    old version). What `folder` may be beforehand is check_output_folder's rule, so a typo cannot wipe
    a run and no command overwrites its own input. A full disk (`needed`: the bytes to be written) is
    one line, and the old `folder` stays."""
    folder = Path(folder)
    check_output_folder(folder, kind, force=force, inputs=inputs)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        with full_disk_as_error(folder, needed):
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
    force: bool = False,
    inputs: Sequence[str | Path] = (),
    chat_template: str | None = None,
) -> Path:
    """Write a model folder atomically and return its path. An existing model folder at `folder` is
    replaced; anything else only with `force`, and never one of `inputs` (the folders the weights were
    read from) or a folder inside or above one (see check_output_folder). The weights' header records
    `config`, config.json their sha256: load_model checks both."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = folder_state_dict(state_dict_or_model, config)
    document = {"model": config.to_dict(), "tokenizer": tokenizer, "metadata": dict(metadata or {})}
    if chat_template is not None:
        document["chat_template"] = chat_template
    try:
        json.dumps(document)
    except TypeError as err:
        raise UserError(f"model metadata must be JSON-serialisable: {err}") from err
    # One metadata key only: safetensors writes the metadata in hash-map order, so two keys would make the
    # same weights' file bytes differ from run to run (a resumed run's export from the uninterrupted one's)
    record = {CONFIG_RECORD: json.dumps(config.to_dict(), sort_keys=True)}

    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_folder(folder, MODEL_KIND, force=force, inputs=inputs, needed=needed) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata=record)
        document[SHA256_KEY] = file_sha256(staging / WEIGHTS_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return folder


def read_model_info(folder: str | Path) -> ModelInfo:
    """Read config.json of a model folder (no weights); UserError if it is missing or malformed."""
    folder = Path(folder)
    require_folder(folder, "model folder", "pass a folder made by training's export or gpt_ds.hf import",
                   "e.g. RUN_DIR/model")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{folder} has no {CONFIG_FILE}, so it is not a model folder; pass the `model/` folder of a run "
            f"(e.g. RUN_DIR/model) or create one with `python -m gpt_ds.export RUN_DIR`"
        )
    document = json_object.read(path, fix="re-export the model", kind="a model folder's config")
    if not isinstance(document.get("model"), dict):
        if folder_kind(folder) == HF_KIND:
            raise UserError(f"{folder} is a Hugging Face model folder, not a gpt-ds one; convert it first: "
                            f"python -m gpt_ds.hf import {folder} --out MODEL_DIR")
        raise UserError(f"{path} has no \"model\" object with the model config; re-export the model")
    try:
        config = GPTConfig.from_dict(document["model"])
    except UserError as err:
        raise UserError(f"{path}: {err}") from err
    tokenizer = document.get("tokenizer", DEFAULT_ENCODING)
    metadata = document.get("metadata") or {}
    sha256 = document.get(SHA256_KEY)
    chat_template = document.get("chat_template")
    if not isinstance(tokenizer, str) or not isinstance(metadata, dict) or not isinstance(sha256, (str, type(None))) \
            or not isinstance(chat_template, (str, type(None))):
        raise UserError(
            f"{path}: \"tokenizer\", \"chat_template\" and \"{SHA256_KEY}\" must be strings and \"metadata\" an object; "
            "re-export the model"
        )
    if chat_template is not None and chat_template != CHAT_TEMPLATE:
        raise UserError(f"{path}: chat template {chat_template!r} is not this gpt-ds's ({CHAT_TEMPLATE}); "
                        "upgrade gpt-ds or re-export the model")
    return ModelInfo(config=config, tokenizer=tokenizer, metadata=metadata, folder=folder, weights_sha256=sha256,
                     chat_template=chat_template)


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Any failure to read the safetensors file `path` as one UserError naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}); write it again") from err


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU (never unpickles); UserError if unreadable."""
    from safetensors.torch import load_file

    with _readable(Path(path)):
        return load_file(str(path), device="cpu")


def saved_config(path: str | Path) -> GPTConfig | None:
    """The model config recorded in the header of the weights file `path` when it was saved (the
    header alone is read); None for a file saved before gpt-ds recorded it."""
    from safetensors import safe_open

    with _readable(Path(path)), safe_open(str(path), framework="pt", device="cpu") as weights:
        record = (weights.metadata() or {}).get(CONFIG_RECORD)
    if record is None:
        return None
    document = json_object.parse(record, f"{path}: the model config recorded in its header", fix="re-export the model",
                                 kind="a model config", invalid="is unreadable")
    try:
        return GPTConfig.from_dict(document)
    except (ValueError, UserError) as err:
        raise UserError(f"{path}: the model config recorded in its header is unreadable ({err}); re-export the model") from err


def check_saved_architecture(folder: Path, config: GPTConfig) -> None:
    """UserError naming the first field where config.json's `config` differs from the config the
    weights were saved with (shapes may agree, e.g. n_head 4 -> 8, yet the model would be another)."""
    saved = saved_config(folder / WEIGHTS_FILE)
    if saved is None:
        return
    for name in (f.name for f in dataclasses.fields(GPTConfig) if f.name not in TRAINING_ONLY_FIELDS):
        if getattr(config, name) != getattr(saved, name):
            said, was = json.dumps(getattr(config, name)), json.dumps(getattr(saved, name))
            raise UserError(
                f"{folder / CONFIG_FILE} says {name} {said} but {WEIGHTS_FILE} was saved with {name} {was}; "
                f"set \"{name}\": {was} back in {CONFIG_FILE} (the weights are of that model), or re-export the model"
            )


def warn_if_changed(path: Path, recorded: str | None) -> None:
    """One line on stderr when the file at `path` is not the one whose sha256 config.json recorded
    (damaged, or replaced since the save); loading goes on, as the weights may be changed on purpose."""
    if recorded is None:
        return
    found = file_sha256(path)
    if found != recorded:
        print(
            f"gpt-ds: warning: {path} has sha256 {found[:16]}... but {CONFIG_FILE} recorded {recorded[:16]}... at "
            "save: the weights were changed or damaged since; re-export the model unless you changed them yourself",
            file=sys.stderr,
        )


def load_model(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32
) -> tuple[GPT, ModelInfo]:
    """Load a model folder into a GPT in eval mode on `device` in `dtype`, with its ModelInfo; config.json
    is checked against the weights' records (check_saved_architecture, warn_if_changed)."""
    info = read_model_info(folder)
    dtype = parse_dtype(dtype)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}; re-export the model (its weights are missing)")
    warn_if_changed(path, info.weights_sha256)  # first: it explains whatever error may follow
    tensors = read_safetensors(path)
    check_tensors(tensors, info.config, source=str(path))  # a changed shape: names the tensor
    check_saved_architecture(Path(folder), info.config)  # shapes alike (n_head, qk_norm, ...): names the field

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
