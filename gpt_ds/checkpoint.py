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

Trust: `client_state.json` records every file's size and sha256 (`files`), and a load first
verifies them (rank 0, agreed by all ranks before any of them reads a file), then unpickles through
gpt_ds.safe_load, which runs no code from a file. A damaged file is one line naming it and the
previous complete checkpoint to resume from instead.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from gpt_ds import atomic, json_object, reshard as resharding, safe_load
from gpt_ds.errors import UserError, first_line
from gpt_ds.run_dir import RunDir

LATEST = "latest"
CLIENT_STATE = "client_state.json"
FILES = "files"  # client_state.json's record of the tag folder's files: {name: {"bytes": n, "sha256": hex}}
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / CLIENT_STATE).is_file()


def read_client_state(tag_dir: Path) -> dict[str, Any]:
    try:
        return json_object.read(tag_dir / CLIENT_STATE, fix="pick another checkpoint or --resume never",
                                kind="a gpt-ds client state", invalid="is corrupt")
    except FileNotFoundError as err:
        raise UserError(f"{tag_dir} is not a complete gpt-ds checkpoint (no {CLIENT_STATE}); "
                        "pick another tag or --resume never") from err


def latest_tag_dir(checkpoints: Path) -> Path | None:
    """The tag folder `latest` points at, or None where there is no complete checkpoint."""
    latest = checkpoints / LATEST
    if latest.exists() and not latest.is_file():
        raise UserError(f"{latest} is not a file (it should hold the newest complete tag's name); remove it and pass "
                        f"the checkpoint to resume from with --resume {checkpoints}/step_...")
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
    mark it complete, point `latest` at it, and keep only the newest `keep` complete checkpoints.
    A full disk (checked before, or met while writing on any rank) stops every rank with one line; the
    part-written folder goes, and `latest` still names the previous complete checkpoint."""
    from gpt_ds import distributed

    tag = tag_for(step)
    tag_dir = checkpoints / tag
    is_main = engine.global_rank == 0
    needed = checkpoint_bytes(engine, checkpoints)

    def make_room() -> None:
        checkpoints.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():  # a part-written copy from a crashed run, or an older save of the same step
            shutil.rmtree(tag_dir)
        free = atomic.free_bytes(checkpoints)
        if free is not None and free < needed:
            raise atomic.disk_full(tag_dir, needed, "for the checkpoint")

    distributed.agreed(make_room, here=is_main, what=f"the checkpoint {tag_dir}")
    try:
        engine.save_checkpoint(str(checkpoints), tag=tag, client_state={"gpt_ds": client_state}, save_latest=False)
        failure = None
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError("... write failed")
        failure = err
        # DeepSpeed's save ends with a barrier that the other ranks wait in: meet them there (0.19's
        # save_checkpoint has no collective between its writes and that barrier)
        distributed.barrier()

    def check_written() -> None:
        if failure is not None:
            if atomic.is_full_disk(failure) or "write failed" in str(failure) or (atomic.free_bytes(tag_dir) or 1) == 0:
                raise atomic.disk_full(tag_dir, needed, "saving the checkpoint") from failure
            raise UserError(f"saving the checkpoint {tag_dir} failed: {first_line(failure)}") from failure

    try:
        distributed.agreed(check_written, here=True, what=f"the checkpoint {tag_dir}")
    except UserError:
        if is_main:
            shutil.rmtree(tag_dir, ignore_errors=True)
        raise

    def mark_complete() -> None:  # every rank's files are written: only now may the tag count as complete
        recorded = {**client_state, FILES: file_records(tag_dir)}
        atomic.write_text(tag_dir / CLIENT_STATE, json.dumps(recorded, indent=2, sort_keys=True))
        atomic.write_text(checkpoints / LATEST, tag)
        prune(checkpoints, keep)

    try:
        distributed.agreed(mark_complete, here=is_main, what=f"the checkpoint {tag_dir}")
    except UserError:
        if is_main and read_latest(checkpoints) != tag:
            shutil.rmtree(tag_dir, ignore_errors=True)
        raise
    return tag_dir


def checkpoint_bytes(engine: Any, checkpoints: Path) -> int:
    """What the next checkpoint takes on disk: the newest complete one's recorded files, else an upper
    bound from the parameter count (16 bytes each: 16-bit weights, fp32 master copy and two moments)."""
    latest = checkpoints / LATEST
    if latest.is_file():
        tag_dir = checkpoints / latest.read_text().strip()
        if is_complete(tag_dir):
            recorded = read_client_state(tag_dir).get(FILES)
            if recorded:
                return sum(f["bytes"] for f in recorded.values())
    return 16 * sum(p.numel() for p in engine.module.parameters())


def read_latest(checkpoints: Path) -> str | None:
    latest = checkpoints / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def prune(checkpoints: Path, keep: int) -> None:
    """Remove incomplete tag folders and all but the newest `keep` complete ones (never `latest`), with
    their universal copies, and universal conversions cut off mid-way."""
    latest = read_latest(checkpoints)
    tags = sorted((p for p in checkpoints.iterdir() if p.is_dir() and _TAG.match(p.name)),
                  key=lambda p: int(_TAG.match(p.name).group(1)))
    complete = [p for p in tags if is_complete(p)]
    doomed = [p for p in tags if not is_complete(p)] + complete[:-keep]
    for path in doomed:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(resharding.universal_dir(path), ignore_errors=True)
    for path in resharding.staging_dirs(checkpoints):
        shutil.rmtree(path, ignore_errors=True)


def file_records(tag_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file DeepSpeed wrote into `tag_dir` (what `verify` checks)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": atomic.file_sha256(p)}
            for p in sorted(tag_dir.iterdir()) if p.is_file() and p.name != CLIENT_STATE}


def previous_complete(tag_dir: Path) -> Path | None:
    """The newest complete checkpoint older than `tag_dir` in its folder (where to go back to)."""
    step = _TAG.match(tag_dir.name)
    older = [p for p in tag_dir.parent.iterdir() if p.is_dir() and (m := _TAG.match(p.name)) and is_complete(p)
             and (step is None or int(m.group(1)) < int(step.group(1)))]
    return max(older, key=lambda p: int(_TAG.match(p.name).group(1)), default=None)


def verify(tag_dir: Path) -> None:
    """Every recorded file present with its size and sha256, and every file loadable without running
    code (safe_load.check); a UserError naming the first file that is not, and where to go back to."""
    recorded = read_client_state(tag_dir).get(FILES)  # None: a checkpoint from before the record
    previous = previous_complete(tag_dir)
    back = (f"the previous complete checkpoint is {previous} (train on from it with --resume {previous}, "
            f"export it with --tag {previous.name})" if previous else
            "no earlier complete checkpoint exists: --resume never with a new --out starts over")
    for name, want in (recorded or {}).items():
        path = tag_dir / name
        if not path.is_file():
            raise UserError(f"checkpoint file {path} is missing; {back}")
        if path.stat().st_size != want["bytes"]:
            raise UserError(f"checkpoint file {path} has {path.stat().st_size:,} bytes, {want['bytes']:,} when "
                            f"saved (truncated or overwritten); {back}")
        if atomic.file_sha256(path) != want["sha256"]:
            raise UserError(f"checkpoint file {path} differs from the one saved (sha256 mismatch); {back}")
    held = {}
    for path in sorted(tag_dir.glob("*.pt")):
        try:
            held[path] = safe_load.check(path)
        except UserError as err:
            raise UserError(f"{err}; {back}") from err
    check_steps(held, read_client_state(tag_dir).get("step"), back)


def check_steps(held: dict[Path, Any], step: int | None, back: str) -> None:
    """The files agree on the step: the model states' global_steps is the client state's step, and the
    optimizer's Adam step count is that less the skipped (fp16 overflow) steps. A file from another
    checkpoint (its sha256 re-recorded, so the record cannot tell) would otherwise load without a word."""
    if step is None:
        return
    optimizer_steps = None
    for path, state in held.items():
        if isinstance(state, dict) and "global_steps" in state:
            if state["global_steps"] != step:
                raise UserError(f"checkpoint file {path} is of step {state['global_steps']}, its client state of step "
                                f"{step}: the folder mixes checkpoints; {back}")
            optimizer_steps = step - int(state.get("skipped_steps") or 0)
    for path, state in held.items():
        base = ((state.get("optimizer_state_dict") or {}) if isinstance(state, dict) else {}).get("base_optimizer_state")
        counts = {float(v["step"]) for v in (base or {}).get("state", {}).values()
                  if isinstance(v, dict) and "step" in v and getattr(v["step"], "numel", lambda: 1)() == 1}
        if optimizer_steps is not None and counts and counts != {float(optimizer_steps)}:
            raise UserError(f"checkpoint file {path} holds optimizer states after {sorted(counts)[0]:g} steps, the "
                            f"checkpoint is of step {step}: the folder mixes checkpoints; {back}")


def load(engine: Any, tag_dir: Path, reshard: str | None = None) -> dict[str, Any]:
    """Load model, optimizer partitions and DeepSpeed's counters from `tag_dir` into `engine`; return
    our client state. Rank 0 verifies the files first and all ranks learn the verdict, so a damaged
    checkpoint stops every rank with one message instead of failing on one and hanging the others.
    `reshard` (what changed, e.g. "2 -> 1 ranks"): rank 0 converts the checkpoint to a universal one
    first, and every rank restores its part from that (gpt_ds.reshard)."""
    from gpt_ds import distributed

    def check() -> Path:
        verify(tag_dir)
        return resharding.convert(tag_dir) if reshard else tag_dir

    is_main = engine.global_rank == 0
    distributed.agreed(check, here=is_main, what=f"the checkpoint {tag_dir}")
    if reshard:
        universal = resharding.universal_dir(tag_dir)
        if is_main:
            print(f"resharding {tag_dir.name} ({reshard}) through DeepSpeed's universal checkpoint {universal}",
                  flush=True)
        distributed.agreed(lambda: resharding.restore(engine, universal), here=True, what=f"the checkpoint {universal}")
        return read_client_state(tag_dir)
    with safe_load.enforced():
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
