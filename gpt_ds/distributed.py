"""Where this process stands among the ranks: rank, world size, local rank, from the environment.

The deepspeed launcher and torchrun set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
Under Slurm (a plain `srun`, or submitit's tasks) only SLURM_* (or submitit's SUBMITIT_LOCAL_*)
variables are set; `deepspeed.init_distributed` does not read those. `env_from_job` is the one
translation of them into the torch variables, from submitit's JobEnvironment (Slurm's or the local
executor's): the submitit task (gpt_ds.slurm_task) applies it before torch loads, and `fill_env`
applies it to a plain `srun python launch/train.py`. A lone `python launch/train.py` gets world
size 1 and a free local port, so it runs the same code path without DeepSpeed looking for MPI.

Defines `DistEnv`, `fill_env`, `current`, `env_from_job`, `master_port_for`, `share_cpu_threads`,
`init`, `device`, `all_reduce_sum`, `agreed`, `barrier`, `launcher_command`, `free_port` and the
`Watchdog` that bounds a wait for a dead or hung rank. torch (and DeepSpeed) load
only inside the functions that use them, so the translation runs before either is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from gpt_ds.errors import PeerFailed, UserError, first_line

T = TypeVar("T")

if TYPE_CHECKING:
    import submitit
    import torch

# Ports derived from the job id stay below Linux's ephemeral range (32768+) so they never collide
# with a port the kernel handed out to some client socket on the first node.
PORT_BASE = 20000
PORT_SPAN = 10000


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
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:  # srun, no launcher
        from submitit.slurm.slurm import SlurmJobEnvironment

        slurm_env = env_from_job(SlurmJobEnvironment())
        env["RANK"], env["WORLD_SIZE"] = slurm_env.pop("RANK"), slurm_env.pop("WORLD_SIZE")
        for name, value in slurm_env.items():
            env.setdefault(name, value)
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


def master_port_for(job_id: str) -> int:
    """A port for the rendezvous, the same on every task of a job and of its requeues."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def env_from_job(job_env: "submitit.JobEnvironment", master_port: int | None = None,
                 cpus_per_task: int | None = None) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT for one task of a
    Slurm or submitit job, from its JobEnvironment (SLURM_*, or the local executor's variables).

    MASTER_ADDR is the allocation's first host (rank 0 runs there); within one node it is the
    loopback address, which needs no name resolution. MASTER_PORT is derived from the job id unless
    given, so concurrent jobs sharing a node do not collide. LOCAL_WORLD_SIZE is the most tasks any
    node runs. With `cpus_per_task`, OMP_NUM_THREADS keeps each rank to its own cores.
    """
    rank, world, local_rank, nodes = (_job_int(job_env, name)
                                      for name in ("global_rank", "num_tasks", "local_rank", "num_nodes"))
    if master_port is None:
        try:
            master_port = master_port_for(job_env.raw_job_id)
        except KeyError as err:
            raise UserError(f"{err.args[0]} is not set, so there is no job id to derive MASTER_PORT from; "
                            "set MASTER_PORT, or launch with srun, sbatch or launch/submit.py") from err
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(max(1, math.ceil(world / max(1, nodes)))),
        "MASTER_ADDR": job_env.hostnames[0] if nodes > 1 else "127.0.0.1",
        "MASTER_PORT": str(master_port),
    }
    if cpus_per_task is not None:
        env["OMP_NUM_THREADS"] = str(cpus_per_task)
    return env


def _job_int(job_env: "submitit.JobEnvironment", name: str) -> int:
    """One of the JobEnvironment's integers, or UserError naming the variable that is not one."""
    try:
        return getattr(job_env, name)
    except ValueError as err:
        variable = type(job_env)._env.get(name, name)  # submitit's map of property -> variable
        raise UserError(f"environment variable {variable}={os.environ.get(variable)!r} is not an integer; "
                        "unset it or fix it") from err


def share_cpu_threads(dist_env: DistEnv) -> None:
    """On the CPU, give each of the ranks on this host its share of the cores: torch's default (all
    cores per process) oversubscribes them several times over with several ranks per host."""
    import torch

    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, dist_env.local_world_size)))


def init(dist_env: DistEnv, timeout_s: float = 600.0) -> None:
    """Start torch.distributed through DeepSpeed, on the accelerator's backend (NCCL on GPUs, gloo on the
    CPU), with collectives that give up a minute after `timeout_s` (a rank that died or hung; the loop's
    Watchdog stops a rank at `timeout_s` itself, with its own line). Ranks that share one CPU host sum
    through shared memory (gpt_ds.host_collectives)."""
    import datetime

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(dist_env.local_rank)
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), auto_mpi_discovery=False,
                               timeout=datetime.timedelta(seconds=timeout_s + PG_TIMEOUT_MARGIN_S))
    if dist_env.world_size > 1:
        release_shm_buffer(dist_env)
        from gpt_ds import host_collectives

        host_collectives.use_shared_memory()
    atexit.register(shutdown)


SHUTDOWN_WAIT_S = 10.0  # the most a rank's exit waits for its process group to close


def shutdown() -> None:
    """Close torch.distributed's process group at exit, before the interpreter's own teardown, for a process
    that returns rather than ending through gpt_ds.errors.exit_process (the Slurm task under submitit): left
    to the teardown, its communication threads are destroyed still running. Bounded: a group that does not
    close in SHUTDOWN_WAIT_S is left to the exit."""
    import threading

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return

    def destroy() -> None:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - at exit, a group that cannot close is no news to anyone
            pass

    closer = threading.Thread(target=destroy, name="gpt-ds-shutdown", daemon=True)
    closer.start()
    closer.join(SHUTDOWN_WAIT_S)


def release_shm_buffer(dist_env: DistEnv) -> None:
    """Unlink this rank's /dev/shm file of DeepSpeed's CPU all-reduce (its shm comm op, used when every
    rank is on one host). DeepSpeed never removes these (69 MB per rank, a new name per MASTER_PORT), so
    every multi-rank CPU run would leave them behind until /dev/shm, which is RAM, fills. Once a
    collective has completed, every rank has mapped every buffer, and a mapping outlives its name."""
    barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_" \
           f"{os.environ.get('MASTER_PORT', '')}_{dist_env.rank}"
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except OSError:
        pass  # not on one host (no buffer), or no /dev/shm


def device() -> "torch.device":
    """This rank's accelerator device (the CPU on a CPU run)."""
    import torch
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def equal_forwards(share: Callable[[int], list[T]], rank: int, world_size: int, equal: bool,
                   spare: Callable[[], T]) -> Iterator[tuple[T, bool]]:
    """This rank's items `share(rank)`, each with True (it counts). With `equal` (ZeRO-3, where every forward
    gathers weights from all ranks: a collective) as many more, each with False, as the busiest rank has beyond
    this one's: its last item again, or `spare()` where it has none."""
    mine = share(rank)
    forwards = max(len(share(r)) for r in range(world_size)) if equal else len(mine)
    for i in range(forwards):
        yield (mine[i], True) if i < len(mine) else (mine[-1] if mine else spare(), False)


def all_reduce_sum(values: "list[float] | torch.Tensor") -> list[float]:
    """The sums over all ranks of `values` (a list, or a 1-D tensor already on the device, which
    spares a host-to-device copy); the result's `.tolist()` is the one read back to the host."""
    import deepspeed.comm as dist
    import torch

    if isinstance(values, torch.Tensor):
        tensor = values.to(device(), torch.float64)
    else:
        tensor = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def agreed(check: "Callable[[], T]", *, here: bool, what: str) -> "T | None":
    """Run `check` where `here` (rank 0 alone for a lock or a read of shared files; every rank for its
    own writes) and let every rank learn the outcome in one all-reduce, so that all ranks stop
    together instead of one failing and the others hanging in their next collective. A rank whose
    check failed raises its UserError, the others a quiet PeerFailed; when every rank failed, the
    error is the same everywhere and only rank 0 prints it. Returns `check`'s result where it ran."""
    refused, result = None, None
    if here:
        try:
            result = check()
        except UserError as err:
            refused = err
    (failed,) = all_reduce_sum([float(refused is not None)])
    if refused is not None:
        refused.every_rank = refused.every_rank or failed == current().world_size
        raise refused
    if failed:
        raise PeerFailed(f"another rank failed on {what} (its message says why)")
    return result


def barrier() -> None:
    import deepspeed.comm as dist

    dist.barrier()


RANK_LOST_EXIT_CODE = 4  # a rank stopped waiting for the others: a collective failed or timed out
RANK_LOST_ADVICE = ("another rank died or hung, and this one waited for it in a collective; that rank's log says why. "
                    "The last complete checkpoint is untouched: rerun the same command to resume")
# how gloo words a peer that is gone or silent (it raises plain RuntimeErrors), and NCCL a peer that exited
# (a DistBackendError carrying ncclRemoteError; unexercised here: no GPUs; a silent NCCL peer is the Watchdog's,
# which speaks before NCCL's own watchdog would abort the process). A rank's own failure (a CUDA fault, an NCCL
# internal error) is not among them: that keeps its traceback.
PEER_LOST_MARKERS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out waiting",
                     "ncclRemoteError", "remote process exited")
PG_TIMEOUT_MARGIN_S = 60.0  # torch.distributed's own timeout: past the watchdog's, so that the watchdog speaks first


class RankLost(UserError):
    """A collective failed because another rank is gone (gloo's and NCCL's errors, said in one line)."""

    exit_code = RANK_LOST_EXIT_CODE


def rank_lost(err: BaseException, rank: int) -> RankLost | None:
    """`err` as a RankLost when it is a collective's failure over a lost peer, else None."""
    import torch.distributed

    text = str(err)
    if not (isinstance(err, getattr(torch.distributed, "DistNetworkError", ())) or any(m in text for m in PEER_LOST_MARKERS)):
        return None
    return RankLost(f"rank {rank}: a collective with the other ranks failed ({first_line(err)}): {RANK_LOST_ADVICE}")


@contextlib.contextmanager
def peers_lost_as_errors(rank: int) -> Iterator[None]:
    """Within this block, gloo's or NCCL's word that a peer is gone is one line (RankLost), not a traceback."""
    try:
        yield
    except RuntimeError as err:
        lost = rank_lost(err, rank)
        if lost is None:
            raise
        raise lost from err


class Watchdog:
    """Stops this rank when the training loop makes no progress for `timeout_s` (a rank that died or
    hung leaves the others waiting in a collective). NCCL and gloo have timeouts of their own (`init`
    sets them), but DeepSpeed's shared-memory all-reduce on one host waits forever; this covers every
    backend alike: the loop calls `kick` once an iteration (a step, and its evaluation and checkpoint),
    and a thread prints one line and exits the process with RANK_LOST_EXIT_CODE when none came in time.
    With `world_size` 1 there is no other rank to wait for: no thread, and a slow checkpoint is never cut off."""

    def __init__(self, timeout_s: float, rank: int, world_size: int, prog: str = "launch/train.py") -> None:
        import threading
        import time

        self.timeout_s, self.rank, self.prog = timeout_s, rank, prog
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="gpt-ds-watchdog", daemon=True)
        if world_size > 1:
            self._thread.start()

    def kick(self) -> None:
        import time

        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        import time

        while not self._stopped.wait(min(1.0, self.timeout_s / 10)):
            waited = time.monotonic() - self._last
            if waited > self.timeout_s:
                print(f"\n{self.prog}: error: rank {self.rank} made no progress for {waited:.0f} s "
                      f"(--collective-timeout {self.timeout_s:g}): {RANK_LOST_ADVICE}", file=sys.stderr, flush=True)
                os._exit(RANK_LOST_EXIT_CODE)
