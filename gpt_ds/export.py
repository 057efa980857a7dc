"""Consolidate a run's ZeRO checkpoint into a model folder (the program: launch/export.py, also
`python -m gpt_ds.export RUN_DIR`).

ZeRO-2 keeps the fp32 master weights split across the ranks' optimizer partitions; DeepSpeed's
zero_to_fp32 API merges them into one state dict (no engine, no ranks needed). We write it with
gpt_ds.model_io.save_model into RUN_DIR/model/, with the training metadata from the checkpoint's
client state (preset, steps, tokens, final losses, target reached or not). The output folder is
checked before any work: never inside, onto or above the run's checkpoints/ (the input), and
replacing anything but a model folder only when forced (gpt_ds.model_io.check_output_folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpt_ds import checkpoint, safe_load
from gpt_ds.errors import UserError
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of all ranks' partitions of the checkpoint `tag_dir`, merged (every file
    unpickled by gpt_ds.safe_load: zero_to_fp32 runs no code from them)."""
    import contextlib
    import io
    import logging

    from deepspeed.utils import logger as ds_logger
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds_logger.setLevel(logging.WARNING)
    # zero_to_fp32 prints its progress ("Processing zero checkpoint ...", a bar of shards) to stdout and stderr:
    # the caller says what happened
    with safe_load.enforced(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def export_run(run_dir: str | Path, tag: str | None = None, dtype: str = "float32",
               out: str | Path | None = None, verify: bool = True, force: bool = False) -> Path:
    """Write RUN_DIR/model (or `out`) from checkpoint `tag` (default: latest); return the folder.
    `verify`: check the checkpoint's recorded sizes and sha256 first (the run that just saved it skips this).
    `force`: replace whatever folder `out` is (never the checkpoints' folder or one inside or above it)."""
    from gpt_ds.model import GPTConfig
    from gpt_ds.model_io import MODEL_KIND, check_output_folder, parse_dtype, save_model

    run_dir = RunDir(run_dir)
    checkpoints = run_dir.checkpoints
    if not checkpoints.is_dir():
        raise UserError(f"{run_dir} has no {RunDir.CHECKPOINTS}/ folder; give the --out folder of a training run")
    tag_dir = checkpoints / tag if tag else checkpoint.latest_tag_dir(checkpoints)
    if tag_dir is None:
        raise UserError(f"{checkpoints} has no complete checkpoint yet (no `latest`); train longer or pass --tag")
    if not checkpoint.is_complete(tag_dir):
        found = sorted(p.name for p in checkpoints.iterdir() if checkpoint.is_complete(p))
        raise UserError(f"checkpoint {tag_dir.name} not found or incomplete in {checkpoints}; "
                        f"complete tags: {', '.join(found) or 'none'}")
    target = Path(out) if out else run_dir.model
    check_output_folder(target, MODEL_KIND, force=force, inputs=(checkpoints,))  # before the slow part
    if verify:
        checkpoint.verify(tag_dir)
    state = checkpoint.read_client_state(tag_dir)
    config = GPTConfig.from_dict(state["model"])
    target_dtype = parse_dtype(dtype)
    weights = {name: t.to(target_dtype) for name, t in consolidated_state_dict(tag_dir).items()}
    record = RunRecord.from_dict(state)
    metadata = {**record.to_dict(), "checkpoint": tag_dir.name, "dtype": dtype}
    return save_model(target, weights, config, metadata=metadata, force=force, inputs=(checkpoints,),
                      chat_template=record.chat_template)


if __name__ == "__main__":  # `python -m gpt_ds.export`: the program is launch/export.py
    from launch.export import main

    main()
