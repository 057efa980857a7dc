"""Variants of the shipped DeepSpeed configs, for the tests, the benches and the GPU check.

`write_variant(path, source, edit, **changes)` writes a copy of a DeepSpeed JSON (by default
ds_configs/zero2.json) to `path` with its top-level keys `changes` set, then `edit(config)` applied
for anything deeper. `SHIPPED` is the folder of the shipped configs. A checkout's file: an
installed package has no ds_configs/ beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

SHIPPED = Path(__file__).resolve().parents[1] / "ds_configs"
ZERO2 = SHIPPED / "zero2.json"


def write_variant(path: Path, source: Path = ZERO2, edit: Callable[[dict[str, Any]], Any] | None = None,
                  **changes: Any) -> Path:
    """Write `source`'s config to `path` with top-level `changes` set, then `edit(config)` (in place; what it
    returns is ignored). The folder is made where missing. Returns `path`."""
    config = json.loads(Path(source).read_text())
    config.update(changes)
    if edit is not None:
        edit(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))
    return path


def zero_stage(stage: int) -> Callable[[dict[str, Any]], None]:
    """An `edit` that sets zero_optimization.stage, keeping the section's other keys."""

    def edit(config: dict[str, Any]) -> None:
        config.setdefault("zero_optimization", {})["stage"] = stage

    return edit
