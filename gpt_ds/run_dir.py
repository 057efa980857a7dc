"""The run folder: every path a training run writes, named once.

RUN_DIR (`--out`) holds `tb/` (TensorBoard, rank 0), `checkpoints/` (DeepSpeed checkpoints and
`latest`), `model/` (the consolidated model folder), `slurm/` (submitit's logs and pickles) and
`settings.json` (the run's resolved settings). Training, export, the Slurm side, the quickstart and
the app all name these paths through `RunDir`; no other module spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The folder of one training run and the paths inside it."""

    root: Path

    TB = "tb"
    CHECKPOINTS = "checkpoints"
    MODEL = "model"
    SLURM = "slurm"
    SETTINGS = "settings.json"

    def __init__(self, root: "str | Path | RunDir") -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def tb(self) -> Path:
        return self.root / self.TB

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def model(self) -> Path:
        return self.root / self.MODEL

    @property
    def slurm(self) -> Path:
        return self.root / self.SLURM

    @property
    def settings(self) -> Path:
        return self.root / self.SETTINGS

    @classmethod
    def of_model(cls, model_folder: str | Path) -> "RunDir | None":
        """The run a model folder was exported from (RUN_DIR/model beside RUN_DIR/tb), if it is one."""
        folder = Path(model_folder).resolve()
        run = cls(folder.parent)
        return run if folder.name == cls.MODEL and run.tb.is_dir() else None

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)
