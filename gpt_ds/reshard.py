"""Resuming a checkpoint on another number of ranks or another ZeRO stage.

Two steps. `convert` (rank 0, once): DeepSpeed's ds_to_universal turns the checkpoint, of any stage and
world size, into one folder per parameter holding its fp32 weights and optimizer states whole
(`zero/<name>/fp32.pt, exp_avg.pt, exp_avg_sq.pt`, and `step.pt` or the step in `zero/optimizer_state.pt`), written beside the untouched original as
`step_N.universal` under a temporary name and renamed only when complete. `restore` (every rank): puts
each parameter's weights and states into the engine through DeepSpeed's public per-parameter API
(`safe_set_full_fp32_param`, `safe_set_full_optimizer_state`, which ZeRO-1/2 implement for their
fragments; under ZeRO-3 `safe_set_local_*` with this rank's slice, since the full-tensor one cannot
slice a parameter that ZeRO-3 pads), and sets the optimizer's step and the engine's counters.

Muon (DeepSpeed's MuonWithAuxAdam: the hidden matrices on Muon, the rest on its Adam half): 0.19.8's
ds_to_universal reads Adam's exp_avg of every parameter group and stops with KeyError on Muon's, whose
only state is a momentum buffer (measured at ZeRO-2 and ZeRO-3). `convert` hands it each Muon group's
state as zero Adam moments (`without_momentum`), so that it still writes every weight and the Adam half's
moments, then writes each Muon matrix's `momentum_buffer.pt` itself from the original (`momenta`) in
place of the stand-ins. At ZeRO-1/2 DeepSpeed keeps that momentum whole per matrix, one flat buffer per
Muon group and rank over every matrix that has a part in the rank's partition (`momentum_slots`); at
ZeRO-3 it is partitioned as the weights are.

Why not DeepSpeed's `"checkpoint": {"load_universal": true}` loaders: in 0.19.8 the ZeRO-3 one cannot
read a conversion of a stage 1/2 run (KeyError 'optimizer_state_dict') and copies the first param
group's hyperparameters over every group (weight decay onto the gains and biases); one path through
the per-parameter API serves every stage alike, and is what the elastic tests check to 1e-4.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from gpt_ds import atomic, safe_load
from gpt_ds.errors import UserError, first_line

UNIVERSAL_SUFFIX = ".universal"  # step_N.universal: the universal copy of the checkpoint step_N
PARAMS_FOLDER = "zero"  # ds_to_universal's folder of one sub-folder per parameter
WEIGHTS, STEP = "fp32", "step"  # the per-parameter files besides the optimizer states (exp_avg, ...)
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")  # what ds_to_universal reads of every parameter group
MOMENTUM = "momentum_buffer"  # Muon's one state per matrix
OPTIMIZER_FILES = "*zero_pp_rank_*_optim_states.pt"  # one per rank (bf16_zero_pp_rank_... in bf16)
MODEL_STATES = "*mp_rank_00_model_states.pt"  # the engine's counters (global_steps, global_samples, ...)
OPTIMIZER_STATE = "optimizer_state.pt"  # the optimizer's global state (fp16's loss scaler)


def universal_dir(tag_dir: Path) -> Path:
    """Where the universal copy of the checkpoint `tag_dir` lies: beside it, `step_N.universal`."""
    return tag_dir.with_name(tag_dir.name + UNIVERSAL_SUFFIX)


def staging_dirs(checkpoints: Path) -> list[Path]:
    """Conversions cut off mid-way (a process killed while converting): never used, removed by prune."""
    return sorted(checkpoints.glob(f".*{UNIVERSAL_SUFFIX}.tmp-*"))


def convert(tag_dir: Path) -> Path:
    """The universal copy of `tag_dir`, made once beside it; the original is only read (through
    gpt_ds.safe_load). A failed conversion leaves nothing and says DeepSpeed's message in one line."""
    target = universal_dir(tag_dir)
    if target.is_dir():
        return target
    staging = tag_dir.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    # measured: the universal copy takes 1.0 (of a ZeRO-1/2 checkpoint) to 1.5 times (ZeRO-3) the original
    needed = int(1.5 * sum(p.stat().st_size for p in tag_dir.iterdir() if p.is_file()))
    free = atomic.free_bytes(tag_dir.parent)
    if free is not None and free < needed:
        raise atomic.disk_full(target, needed, "for the universal copy")
    args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(staging), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    try:
        # its progress goes to stdout; our one line says what happened
        with safe_load.enforced(without_momentum), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            ds_to_universal(args)
        for name, momentum in momenta(tag_dir).items():  # a Muon run's: in place of the zero stand-ins
            folder = staging / PARAMS_FOLDER / name
            for key in ADAM_MOMENTS:
                (folder / f"{key}.pt").unlink(missing_ok=True)
            torch.save({"param": momentum}, folder / f"{MOMENTUM}.pt")
    except UserError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as err:  # DeepSpeed's own assertion or error, said plainly
        shutil.rmtree(staging, ignore_errors=True)
        if atomic.is_full_disk(err):
            raise atomic.disk_full(target, needed, "for the universal copy") from err
        raise UserError(f"converting {tag_dir} to a universal checkpoint failed ({type(err).__name__}: "
                        f"{first_line(err, empty='no message')}); the checkpoint is "
                        "untouched: resume it with its own number of ranks and ZeRO stage") from err
    finally:
        (tag_dir.parent / "latest_universal").unlink(missing_ok=True)  # ds_to_universal's own pointer: unused
    os.replace(staging, target)
    return target


def _flat_states(optim: dict[str, Any]) -> tuple[dict[int, dict[str, Any]], list[torch.Tensor]] | None:
    """A ZeRO optimizer file's per-group states and the fp32 partitions they belong to (ZeRO-1/2: one per
    param group, ZeRO-3: one per sub-group), index for index; None for any other dict."""
    if "base_optimizer_state" in optim:  # ZeRO-1/2
        return optim["base_optimizer_state"]["state"], optim["single_partition_of_fp32_groups"]
    if "fp32_flat_groups" in optim:  # ZeRO-3
        return optim["optimizer_state_dict"]["state"], optim["fp32_flat_groups"]
    return None


def without_momentum(loaded: Any) -> Any:
    """What ds_to_universal gets of a loaded checkpoint file: an optimizer file's Muon states (a momentum
    buffer) as zero Adam moments of their fp32 partition, the only states it knows; `convert` replaces
    what it makes of them by the momentum itself. Anything else as it is."""
    optim = loaded.get("optimizer_state_dict") if isinstance(loaded, dict) else None
    found = _flat_states(optim) if isinstance(optim, dict) else None
    if found is not None:
        states, partitions = found
        for index, state in states.items():
            if MOMENTUM in state:
                states[index] = {key: torch.zeros_like(partitions[index]) for key in ADAM_MOMENTS}
    return loaded


def momenta(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Each Muon matrix's momentum in the checkpoint `tag_dir`, whole, by parameter name (empty for a run
    without Muon). The files are memory-mapped: only the momentum buffers are read."""
    files = sorted(tag_dir.glob(OPTIMIZER_FILES), key=lambda path: int(re.search(r"zero_pp_rank_(\d+)_", path.name)[1]))
    sub_groups = safe_load.check(min(tag_dir.glob(MODEL_STATES)))["param_shapes"]  # [{name: shape}] per group
    shapes = {name: tuple(shape) for group in sub_groups for name, shape in group.items()}
    pieces: dict[str, list[torch.Tensor]] = {}
    zero12 = False
    for path in files:
        optim = safe_load.check(path)["optimizer_state_dict"]
        states, _ = _flat_states(optim)
        zero12 = "param_slice_mappings" in optim
        for index, state in states.items():
            if MOMENTUM not in state:
                continue
            buffer, offset = state[MOMENTUM].flatten(), 0
            if zero12:  # ZeRO-1/2: whole, for each matrix in the rank's partition
                names = list(optim["param_slice_mappings"][index])
                sizes = [math.prod(shapes[name]) for name in names]
            else:  # ZeRO-3: each matrix's slice of ceil(numel / ranks) elements, the last one padded
                names = list(sub_groups[index])
                sizes = [-(-math.prod(shapes[name]) // len(files)) for name in names]
            if sum(sizes) != buffer.numel():
                raise UserError(f"{path} holds a Muon momentum of {buffer.numel()} elements, its matrices have "
                                f"{sum(sizes)}: the checkpoint is damaged; resume from another checkpoint")
            for name, size in zip(names, sizes):
                pieces.setdefault(name, []).append(buffer[offset:offset + size])
                offset += size
    whole = {}
    for name, parts in pieces.items():
        numel = math.prod(shapes[name])
        # ZeRO-1/2: a matrix split between ranks is whole on each of them (DeepSpeed all-reduces its gradient)
        flat = parts[0] if zero12 else torch.cat(parts)[:numel]
        whole[name] = flat.clone().view(shapes[name])
    return whole


def restore(engine: Any, universal: Path) -> None:
    """Every parameter's weights and optimizer states from the universal checkpoint `universal` into
    `engine` (any world size, ZeRO stage 1, 2 or 3), then the optimizer's step count and the engine's
    step counters. No collective: each rank writes its own parts, so a rank that fails here (a file it
    cannot read) stops with its error while the others learn of it in `agreed`, instead of hanging."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    partitioned = engine.zero_optimization_stage() == 3
    named = dict(engine.module.named_parameters())
    expected = create_optimizer_states(engine.optimizer, named, universal, optimizer_step(universal))
    slots = {} if partitioned else momentum_slots(engine.optimizer)
    for name, param in named.items():
        states = load_parameter(universal, name, tuple(param.ds_shape if partitioned else param.shape))
        weights = states.pop(WEIGHTS)
        states.pop(STEP, None)  # one for all: optimizer_step
        if set(states) != expected[id(param)]:  # a state left at zero would train on silently wrong
            raise UserError(f"{universal / PARAMS_FOLDER / name} holds the optimizer states {sorted(states)}, its "
                            f"group's parameters {sorted(expected[id(param)])}: the universal copy is damaged; "
                            "delete it and resume again to convert the checkpoint anew")
        if partitioned:  # Muon's momentum too: ZeRO-3 partitions it as the weights
            restore_partition(param, weights, states)
            continue
        safe_set_full_fp32_param(param, weights)  # the optimizer's fp32 master copy: this rank's fragment
        momentum = states.pop(MOMENTUM, None)
        if momentum is not None and id(param) in slots:  # not a fragment of the partition: the whole matrix
            slots[id(param)].copy_(momentum)
        for key, value in states.items():
            safe_set_full_optimizer_state(param, value, key)
        param.data.copy_(weights)  # and the module's own copy (bf16 or fp32), whole on every rank
    # the counters and the loss scaler are small fields of large files (the module's weights, ZeRO-3's flat
    # fp32 groups): memory-mapped, so that only the pickle is read
    counters = safe_load.check(min(universal.glob(MODEL_STATES)))
    engine.global_steps = counters["global_steps"]
    engine.global_samples = counters["global_samples"]
    engine.skipped_steps = counters["skipped_steps"]
    scaler = safe_load.check(universal / PARAMS_FOLDER / OPTIMIZER_STATE).get("loss_scaler")
    if scaler is not None and type(scaler) is type(getattr(engine.optimizer, "loss_scaler", None)):
        engine.optimizer.loss_scaler = scaler  # fp16: the dynamic loss scale carries on where it was


def restore_partition(param: torch.nn.Parameter, weights: torch.Tensor, states: dict[str, torch.Tensor]) -> None:
    """A ZeRO-3 parameter: this rank's slice of the whole `weights` and `states`, padded as ZeRO-3 pads a
    parameter whose size the world size does not divide, into the optimizer's fp32 partition, its states
    and the module's own partition (`ds_tensor`); and the whole weights where the parameter is held
    gathered (ZeRO-3 keeps small "persistent" parameters whole on every rank)."""
    import torch.distributed as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from deepspeed.utils import safe_set_local_fp32_param, safe_set_local_optimizer_state

    group = getattr(param, "ds_process_group", None)
    part = param.ds_tensor.numel()
    rank, ranks = dist.get_rank(group=group), dist.get_world_size(group=group)

    def mine(value: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros(part * ranks, dtype=value.dtype)
        padded[: value.numel()] = value.flatten()
        return padded.narrow(0, part * rank, part)

    safe_set_local_fp32_param(param, mine(weights))
    for key, value in states.items():
        safe_set_local_optimizer_state(param, mine(value), key)
    param.ds_tensor.data.copy_(mine(weights))
    if param.ds_status == ZeroParamStatus.AVAILABLE:
        param.data.copy_(weights)


def load_parameter(universal: Path, name: str, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The weights and states of the parameter `name` in `universal`, each as a tensor of `shape`."""
    folder = universal / PARAMS_FOLDER / name
    if not (folder / f"{WEIGHTS}.pt").is_file():
        raise UserError(f"{universal} has no weights for the parameter {name}: it is damaged, or not a conversion of "
                        "this model's checkpoint; delete it and resume again to convert the checkpoint anew")
    states = {}
    for path in sorted(folder.glob("*.pt")):
        value = safe_load.load(path)
        value = value["param"] if isinstance(value, dict) else value
        if path.stem != STEP:  # a ZeRO-3 checkpoint's conversion holds the optimizer states flat
            if value.numel() != math.prod(shape):
                raise UserError(f"{path} holds a tensor of shape {tuple(value.shape)}, the model's {name} is "
                                f"{shape}; delete the universal folder and resume again to convert the checkpoint anew")
            value = value.view(shape)
        states[path.stem] = value
    return states


def create_optimizer_states(zero_optimizer: Any, named: dict[str, torch.nn.Parameter], universal: Path,
                            step: float) -> dict[int, set[str]]:
    """The torch optimizer's per-partition states, zero, with the checkpoint's step count (Adam's bias
    correction; Muon's groups have none), for the per-parameter API to write into: torch optimizers create
    their states at the first step, which a resumed engine has not taken. Returns the states each parameter
    must have, by id: those of its group's first parameter in `universal`.

    The partitions are ZeRO's own flat fp32 tensors that the torch optimizer steps: DeepSpeed has no
    public name for them, so a DeepSpeed that keeps them elsewhere fails here loudly, not wrongly."""
    if hasattr(zero_optimizer, "fp32_partitioned_groups_flat"):  # ZeRO-3: one per sub-group
        partitions = [(flat, params, None) for flat, params in
                      zip(zero_optimizer.fp32_partitioned_groups_flat, zero_optimizer.fp16_groups)]
    elif hasattr(zero_optimizer, "single_partition_of_fp32_groups"):  # ZeRO-1/2: one per param group
        partitions = list(zip(zero_optimizer.single_partition_of_fp32_groups, zero_optimizer.bit16_groups,
                              zero_optimizer.params_in_partition))
    else:  # e.g. DeepSpeed's BF16_Optimizer (bf16 at ZeRO-1 with fp32 gradient accumulation): not handled here
        raise UserError(f"resharding into DeepSpeed's {type(zero_optimizer).__name__} is not supported (gpt_ds.reshard "
                        "knows ZeRO-1/2's and ZeRO-3's optimizers); resume with the checkpoint's ranks and config")
    names = {id(p): name for name, p in named.items()}
    base = zero_optimizer.optimizer
    expected = {}
    for flat, params, in_partition in partitions:
        folder = universal / PARAMS_FOLDER / names[id(params[0])]
        keys = [path.stem for path in folder.glob("*.pt") if path.stem not in (WEIGHTS, STEP)]
        if not keys:
            raise UserError(f"{folder} holds no optimizer states: the universal copy is damaged, or not a conversion "
                            "of this model's checkpoint; delete it and resume again to convert the checkpoint anew")
        expected.update((id(p), set(keys)) for p in params)
        state = base.state[flat]
        if MOMENTUM in keys:  # a Muon group: its momentum only, no step count (as DeepSpeed's Muon keeps it)
            # ZeRO-1/2: whole, for every matrix with a part in this rank's partition (momentum_slots)
            size = flat.numel() if in_partition is None else sum(p.numel() for p in in_partition)
            state.setdefault(MOMENTUM, torch.zeros(size, dtype=flat.dtype, device=flat.device))
            continue
        for key in keys:
            state.setdefault(key, torch.zeros_like(flat))
        # as torch's AdamW keeps it: on the parameters' device for its fused and capturable kernels, else the CPU
        on_device = base.defaults.get("fused") or base.defaults.get("capturable")
        state[STEP] = torch.tensor(step, dtype=torch.float32, device=flat.device if on_device else "cpu")
    if hasattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2: link the states' fragments
        zero_optimizer._lazy_init_hp_params_optimizer_state()
    return expected


def momentum_slots(zero_optimizer: Any) -> dict[int, torch.Tensor]:
    """ZeRO-1/2 with Muon: where each Muon matrix's momentum lies on this rank, by id of the parameter.
    DeepSpeed keeps one flat buffer per Muon group, holding whole, in order, every matrix that has a part in
    this rank's partition (it orthogonalizes whole matrices); empty for a run without Muon."""
    slots = {}
    for flat, params in zip(zero_optimizer.single_partition_of_fp32_groups, zero_optimizer.params_in_partition):
        buffer, offset = zero_optimizer.optimizer.state[flat].get(MOMENTUM), 0
        for param in params if buffer is not None else ():
            slots[id(param)] = buffer.narrow(0, offset, param.numel()).view(param.shape)
            offset += param.numel()
    return slots


def optimizer_step(universal: Path) -> float:
    """The optimizer's step count in `universal`: every parameter's step.pt (a conversion of a ZeRO-1/2
    checkpoint), or the optimizer state's (of a ZeRO-3 one); one value, else the conversion is refused."""
    files = sorted((universal / PARAMS_FOLDER).glob(f"*/{STEP}.pt"))
    if files:
        steps = {float(safe_load.load(path)) for path in files}
    else:
        state = safe_load.check(universal / PARAMS_FOLDER / OPTIMIZER_STATE).get("optimizer_state_dict") or {}
        steps = {float(s[STEP]) for s in (state.get("state") or {}).values() if STEP in s}
    if len(steps) != 1:
        raise UserError(f"{universal} holds optimizer states at {len(steps)} step counts ({sorted(steps)}), not one: "
                        "delete it and resume again to convert the checkpoint anew")
    return steps.pop()
