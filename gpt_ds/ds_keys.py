"""The DeepSpeed JSON's keys held against those DeepSpeed itself knows, since DeepSpeed ignores many unknown keys
without a word and fails on others only once its engine starts. The known keys are read from DeepSpeed rather
than copied, so that they follow upgrades: the keys its config reader asks for, its pydantic models' fields and
aliases, its optimizers' constructors. DeepSpeed is imported only when a config is checked.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import sys
import typing
from dataclasses import dataclass
from typing import Any

from gpt_ds import distributed
from gpt_ds.ds_config import check_sections
from gpt_ds.errors import UserError
from gpt_ds.settings import PROG


def check_ds_config_keys(config: dict[str, Any], where: str, strict: bool = False) -> None:
    """Every key of the DeepSpeed JSON `config` (read from `where`) that DeepSpeed does not know, with its path and
    the nearest known key, and an optimizer.type it has not: an error where DeepSpeed would fail on it once the
    engine starts (a pydantic section, an optimizer constructor), or with `strict`; else, as DeepSpeed ignores
    it, a warning on rank 0."""
    check_sections(config, where)
    try:
        keys, optimizers = _keys_for(config), _optimizer_types()
    except Exception:  # noqa: BLE001 - a DeepSpeed whose internals differ: left unchecked rather than a failed run
        return
    _check_optimizer_type(config, where, *optimizers)
    unknown = _unknown_keys(config, keys)
    if not unknown:
        return
    it = "it" if len(unknown) == 1 else "them"
    what = (f"DeepSpeed config {where}: unknown key{'s' if len(unknown) > 1 else ''} "
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
        return  # gpt_ds.ds_config.resolve asks for one
    name = optimizer["type"]
    if isinstance(name, str) and (name.lower() in deepspeeds or name in torchs):
        return
    near = difflib.get_close_matches(str(name), [*torchs, *deepspeeds], n=1)
    raise UserError(f"DeepSpeed config {where}: optimizer.type {name!r} is neither one of DeepSpeed's optimizers "
                    f"nor a torch.optim class" + (f" (did you mean {near[0]}?)" if near else "")
                    + "; e.g. AdamW")
