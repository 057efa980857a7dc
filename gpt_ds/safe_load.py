"""Loading checkpoint files without running code from them.

A DeepSpeed checkpoint file (`*.pt`) is a pickle, and a pickle may name any callable to rebuild an
object: a plain `torch.load(weights_only=False)`, which DeepSpeed's engine, zero_to_fp32 and
ds_to_universal all call, runs it. Here every load goes through torch's weights-only unpickler,
which rebuilds only tensors, containers and plain values, plus `ALLOWED_GLOBALS`: exactly the
classes that DeepSpeed's checkpoints of our configs hold (ZeRO 1/2/3, bf16, fp16, fp32, AdamW and
Muon). A file naming anything else is refused with one line naming the file and the global.

Defines `ALLOWED_GLOBALS`, `load` (one file, checked), `check` (a file loads safely: memory-mapped,
tensors not read) and `enforced(adapt)`, the scope in which `torch.load` itself is this loader: DeepSpeed
calls `torch.load(..., weights_only=False)` inside its own functions, so the only way to make those
safe without copying them is to replace the function they call for the length of the call.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gpt_ds.errors import UserError, first_line
from gpt_ds.patching import swapped

# "module.qualname" of every class a DeepSpeed checkpoint of ours pickles (beyond torch's own tensors and
# storages, which the weights-only unpickler always allows). Found by listing the GLOBAL opcodes of the
# checkpoints that the tests write: model states hold only tensors, sizes and dicts; the ZeRO optimizer
# states hold these.
ALLOWED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",  # bf16 / fp32: the static scaler
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",  # fp16's dynamic loss scaling
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

_torch_load = torch.load  # the real one: `enforced` replaces torch.load by `_patched`
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def allowed_globals() -> list[Any]:
    """The classes of ALLOWED_GLOBALS, imported (DeepSpeed loads only when a checkpoint is read)."""
    import importlib

    classes = []
    for dotted in ALLOWED_GLOBALS:
        module, name = dotted.rsplit(".", 1)
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def load(path: str | Path, map_location: Any = None, *, mmap: bool = False) -> Any:
    """torch.load of `path` with the weights-only unpickler and ALLOWED_GLOBALS; a file that names
    another global, or that is not a readable torch file, is a UserError naming it."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found is None:  # not a global it refused: bytes the unpickler cannot read at all
            raise UserError(f"{path} is not a readable torch checkpoint file (not a pickle of tensors): it is "
                            "damaged or truncated") from err
        raise UserError(f"refusing to load {path}: its pickle calls {found.group(1)}, which no gpt-ds checkpoint "
                        "holds (loading it could run code); delete it, or use a checkpoint you trust") from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        first = first_line(err, 160).split(". ")[0]
        raise UserError(f"{path} is not a readable torch checkpoint file ({first}): it is damaged or "
                        "truncated") from err


def check(path: str | Path) -> Any:
    """Raise UserError unless `path` loads safely; memory-mapped where the file allows, so that the
    tensors' bytes are not read (only the pickle is). Returns what it holds (tensors mapped, not read)."""
    path = Path(path)
    return load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))


def _patched(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: bool | None = None,
             mmap: bool | None = None, **kwargs: Any) -> Any:
    """torch.load's signature; whatever weights_only the caller asks for, the load is `load`'s."""
    return load(f, map_location, mmap=bool(mmap))


TORCH_LOAD_WHY = ("DeepSpeed's engine, zero_to_fp32 and ds_to_universal call torch.load(weights_only=False), "
                  "which runs whatever a checkpoint's pickle names: gpt-ds makes each of those loads weights-only")


@contextlib.contextmanager
def enforced(adapt: Callable[[Any], Any] | None = None) -> Iterator[None]:
    """Within this scope every torch.load (DeepSpeed's included) is `load`: weights only, ALLOWED_GLOBALS.
    `adapt`, where given, receives what each load returns and returns what the caller gets instead."""

    def patched(*args: Any, **kwargs: Any) -> Any:
        return adapt(_patched(*args, **kwargs))

    with swapped(torch, "load", _patched if adapt is None else patched, why=TORCH_LOAD_WHY):
        yield
