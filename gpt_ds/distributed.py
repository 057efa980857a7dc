"""Where this process stands among the ranks: rank, world size, local rank, from the environment.

The deepspeed launcher and torchrun set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
Under Slurm (srun or submitit, issue 5) only SLURM_* variables may be set; `deepspeed.init_distributed`
does not read those, so `fill_env` derives the torch variables from them. A lone `python
launch/train.py` gets world size 1 and a free local port, so it runs the same code path without
DeepSpeed looking for MPI.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import torch

from gpt_ds.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on this host now (for MASTER_PORT of a local run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(ranks: int, script: str, args: list[str]) -> list[str]:
    """The `deepspeed --num_gpus RANKS --master_port PORT script args` command line, run with this
    interpreter (so it works without the `deepspeed` script on PATH), on a free port."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
            "--master_port", str(free_port()), script, *args]


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError as err:
        raise UserError(f"environment variable {name}={value!r} is not an integer; unset it or fix it") from err


def fill_env() -> DistEnv:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT where absent, and return the result."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        if "SLURM_NTASKS_PER_NODE" in env and env["SLURM_NTASKS_PER_NODE"].isdigit():
            env.setdefault("LOCAL_WORLD_SIZE", env["SLURM_NTASKS_PER_NODE"])
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    env.setdefault("LOCAL_RANK", "0")
    dist_env = current()
    if dist_env.world_size > 1 and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
        raise UserError(f"WORLD_SIZE={dist_env.world_size} but MASTER_ADDR/MASTER_PORT are not set; launch with "
                        "`deepspeed`, torchrun or launch/submit.py, which set them")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return dist_env


def current() -> DistEnv:
    """The rank layout from the environment as it is now (rank 0 of 1 where nothing is set)."""
    env = os.environ
    world = _int_env("WORLD_SIZE") if "WORLD_SIZE" in env else 1
    rank = _int_env("RANK") if "RANK" in env else 0
    local_rank = _int_env("LOCAL_RANK") if "LOCAL_RANK" in env else 0
    # torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
    local_name = next((n for n in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE") if n in env), None)
    local_world = _int_env(local_name) if local_name else world
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside WORLD_SIZE={world}; fix the launcher's environment")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)


def share_cpu_threads(dist_env: DistEnv) -> None:
    """On the CPU, give each of the ranks on this host its share of the cores: torch's default (all
    cores per process) oversubscribes them several times over with several ranks per host."""
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, dist_env.local_world_size)))


def init(dist_env: DistEnv) -> None:
    """Start torch.distributed through DeepSpeed, on the accelerator's backend (gloo/ccl on CPU)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(dist_env.local_rank)
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), auto_mpi_discovery=False)


def all_reduce_sum(values: list[float]) -> list[float]:
    import deepspeed.comm as dist
    from deepspeed.accelerator import get_accelerator

    tensor = torch.tensor(values, dtype=torch.float64, device=get_accelerator().current_device_name())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    import deepspeed.comm as dist

    dist.barrier()
