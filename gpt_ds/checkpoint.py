"""DeepSpeed checkpoints of a run: save, find the latest complete one, resume, keep the last K, and
the `Checkpointer` that decides when the loop saves.

Layout: RUN_DIR/checkpoints/step_00000100/ holds DeepSpeed's files (model states, one ZeRO optimizer
partition per rank) plus our `client_state.json`; RUN_DIR/checkpoints/latest names the newest
complete tag. The client state (step, tokens, model config, settings, losses, target) also goes into
DeepSpeed's own client_state; the JSON copy lets us check a RUN_DIR before starting any engine.

Completeness: DeepSpeed writes `latest` itself as soon as rank 0 is done, not when every rank is.
We save with save_latest=False, wait for all ranks, then write `client_state.json` and finally
`latest`, each atomically (temp name + rename). A checkpoint cut off while written therefore never
has a `client_state.json` nor becomes `latest`, and is removed before a save reuses its name.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from gpt_ds import atomic
from gpt_ds.errors import UserError
from gpt_ds.run_dir import RunDir

LATEST = "latest"
CLIENT_STATE = "client_state.json"
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / CLIENT_STATE).is_file()


def read_client_state(tag_dir: Path) -> dict[str, Any]:
    path = tag_dir / CLIENT_STATE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError(f"{tag_dir} is not a complete gpt-ds checkpoint (no {CLIENT_STATE}); "
                        "pick another tag or --resume never") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is corrupt ({err}); pick another checkpoint or --resume never") from err


def latest_tag_dir(checkpoints: Path) -> Path | None:
    """The tag folder `latest` points at, or None where there is no complete checkpoint."""
    latest = checkpoints / LATEST
    if not latest.is_file():
        return None
    tag_dir = checkpoints / latest.read_text().strip()
    if not is_complete(tag_dir):
        raise UserError(f"{latest} points at {tag_dir.name}, which is missing or incomplete; "
                        f"point it at a complete tag folder in {checkpoints} or move the folder away")
    return tag_dir


def resolve_resume(resume: str, run_dir: RunDir | Path) -> Path | None:
    """The tag folder to resume from for --resume auto|never|PATH (PATH: a tag folder or a checkpoints folder)."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_tag_dir(RunDir(run_dir).checkpoints)
    path = Path(resume)
    if (path / LATEST).is_file():
        return latest_tag_dir(path)
    if not is_complete(path):
        raise UserError(f"--resume {path}: not a complete checkpoint tag folder (no {CLIENT_STATE}); "
                        "give a folder such as RUN_DIR/checkpoints/step_00001000")
    return path


def check_same_model(client_state: dict[str, Any], model_config: dict[str, Any], where: Path) -> None:
    """Refuse to resume a checkpoint of another architecture (it would fail deep in DeepSpeed, or worse)."""
    saved = client_state.get("model", {})
    if saved != model_config:
        diff = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {model_config.get(k)!r}"
                         for k in sorted(set(saved) | set(model_config)) if saved.get(k) != model_config.get(k))
        raise UserError(f"{where} holds a checkpoint of a different model config ({diff}); use the same "
                        "--model/--block-size, another --out, or --resume never with a fresh --out")


def check_fresh_run_dir(run_dir: RunDir | Path) -> None:
    """--resume never must not silently overwrite another run's checkpoints."""
    if (RunDir(run_dir).checkpoints / LATEST).exists():
        raise UserError(f"{run_dir} already holds checkpoints and --resume never was given; "
                        "use another --out, or --resume auto to continue that run")


def save(engine: Any, checkpoints: Path, step: int, client_state: dict[str, Any], keep: int) -> Path:
    """Save a checkpoint of all ranks at `step` into `checkpoints` (a collective: every rank calls it),
    mark it complete, point `latest` at it, and keep only the newest `keep` complete checkpoints."""
    from gpt_ds import distributed

    tag = tag_for(step)
    tag_dir = checkpoints / tag
    if engine.global_rank == 0:
        checkpoints.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():  # a part-written copy from a crashed run, or an older save of the same step
            shutil.rmtree(tag_dir)
    distributed.barrier()
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state={"gpt_ds": client_state}, save_latest=False)
    distributed.barrier()  # every rank's files are written: only now may the tag count as complete
    if engine.global_rank == 0:
        atomic.write_text(tag_dir / CLIENT_STATE, json.dumps(client_state, indent=2, sort_keys=True))
        atomic.write_text(checkpoints / LATEST, tag)
        prune(checkpoints, keep)
    distributed.barrier()
    return tag_dir


def prune(checkpoints: Path, keep: int) -> None:
    """Remove incomplete tag folders and all but the newest `keep` complete ones (never `latest`)."""
    latest_file = checkpoints / LATEST
    latest = latest_file.read_text().strip() if latest_file.is_file() else None
    tags = sorted((p for p in checkpoints.iterdir() if p.is_dir() and _TAG.match(p.name)),
                  key=lambda p: int(_TAG.match(p.name).group(1)))
    complete = [p for p in tags if is_complete(p)]
    doomed = [p for p in tags if not is_complete(p)] + complete[:-keep]
    for path in doomed:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)


def load(engine: Any, tag_dir: Path) -> dict[str, Any]:
    """Load model, optimizer partitions and DeepSpeed's counters from `tag_dir` into `engine`;
    return our client state."""
    load_path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                          load_optimizer_states=True, load_lr_scheduler_states=False)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load the checkpoint {tag_dir}; resume from another tag "
                        "or start over with --resume never")
    return read_client_state(tag_dir)


class Checkpointer:
    """When the loop saves: every `interval` steps, at the last step, on preemption; never twice for
    one step (a run that ends on an interval step saves once). A collective: all ranks call `save`
    with the same arguments, which they have agreed on in the step's one all-reduce."""

    def __init__(self, engine: Any, run_dir: RunDir, interval: int, keep: int, last_saved: int | None = None) -> None:
        self.engine = engine
        self.checkpoints = run_dir.checkpoints
        self.interval = interval
        self.keep = keep
        self.last_saved = last_saved  # the step of the newest checkpoint of this run (a resume's own)

    def should_save(self, step: int, *, last_step: bool = False) -> bool:
        return step != self.last_saved and (last_step or step % self.interval == 0)

    def save(self, step: int, client_state: dict[str, Any], *, last_step: bool = False) -> Path | None:
        """Save at `step` if it is due; the tag folder when saved."""
        if not self.should_save(step, last_step=last_step):
            return None
        self.last_saved = step
        return save(self.engine, self.checkpoints, step, client_state, self.keep)

    @property
    def latest(self) -> Path | None:
        """The newest complete checkpoint on disk (the one a rerun resumes from)."""
        return latest_tag_dir(self.checkpoints)
