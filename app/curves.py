"""A run's training curves, read back from its TensorBoard logs for the page.

Defines: the tags the page draws (`CURVE_TAGS`, spelled in gpt_ds.tags), `RunCurves` (tag ->
[(step, value)]) and `read_run_curves` (from a run's `RunDir.tb`, via gpt_ds.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gpt_ds import tags
from gpt_ds.errors import UserError
from gpt_ds.metrics import read_scalars

CURVE_TAGS = (tags.TRAIN_LOSS, tags.VAL_LOSS, tags.LR)


@dataclass
class RunCurves:
    """Scalar series of a run: tag -> [(step, value)] sorted by step."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def has(self, tag: str) -> bool:
        return bool(self.series.get(tag))


def read_run_curves(tb_dir: Path, curve_tags: Sequence[str] = CURVE_TAGS) -> RunCurves:
    """The curves the page draws, from a run's TensorBoard folder (read by gpt_ds.metrics).

    Should a step appear twice (a resumed run whose log was not purged), the later value wins,
    so the curve shows what the run finally did.
    """
    if not Path(tb_dir).is_dir():
        raise UserError(f"there are no TensorBoard logs at {tb_dir}: the run has not logged yet")
    try:
        scalars = read_scalars(tb_dir)
    except Exception as err:  # tensorboard raises its own error types for damaged files
        raise UserError(
            f"could not read the TensorBoard logs in {tb_dir} ({type(err).__name__}: {err}); "
            "the event files may be damaged: the model itself is unaffected"
        ) from err
    return RunCurves(series={tag: sorted(dict(scalars[tag]).items()) for tag in curve_tags if tag in scalars})
