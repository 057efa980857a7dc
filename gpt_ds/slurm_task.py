"""The program each task of a submitit job runs (on a Slurm node, or as a local process), surviving
preemption.

Defines:
- `TrainingJob`: the checkpointable callable every task runs: the torch.distributed environment from
  `gpt_ds.distributed.env_from_job`, then `gpt_ds.train.run`, the same training as launch/train.py;
  on preemption, rank 0's checkpoint-and-requeue.
- `TaskReport`: what one task returns to the submitter (gpt_ds.slurm_submit reads rank 0's).
- `RequeueRefused`: a preempted job that is not requeued (limit reached, cancelled, Slurm refused).
- `slurm_job_state`: the job's state as slurmctld sees it now.

Preemption (and time limits): Slurm signals every task (USR2 `signal_delay_s` before the limit, or
SIGTERM/USR2 on preemption). The training's own handlers turn that into a flag; at the next step
boundary all ranks agree, save a checkpoint together, and `run` returns `preempted=True`. Only then
does rank 0 take submitit's checkpoint-and-requeue path (`checkpoint()` -> the pickled job is
replaced -> `scontrol requeue`), so the requeue can never race the collective save. The requeued
job resumes from RUN_DIR's latest checkpoint (`--resume auto`), at most `max_requeues` times.

This module loads neither torch nor DeepSpeed at import: the submitter pickles `TrainingJob`, and a
task sets its environment (OMP_NUM_THREADS included) before `gpt_ds.train` brings them in.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any, NoReturn

import submitit
from submitit.core.job_environment import SignalHandler
from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.slurm.slurm import SlurmJobEnvironment

from gpt_ds import distributed
from gpt_ds.settings import settings_from_args

SLURM_QUERY_TIMEOUT_S = 15


@dataclass(frozen=True)
class TaskReport:
    """What one task returns to the submitter (rank 0's is the job's result)."""

    rank: int
    world_size: int
    local_rank: int
    node: str
    master_addr: str
    master_port: int
    requeues: int
    step: int
    preempted: bool
    target_reached: bool
    run_dir: str


class RequeueRefused(RuntimeError):
    """A preempted job that is not requeued: the limit is reached or Slurm refused (e.g. it was cancelled)."""


@dataclass(frozen=True)
class TrainingJob(Checkpointable):
    """The callable each task runs; checkpointable through submitit's `checkpoint()` protocol.

    Its own state is only the number of requeues so far: the training state lives in RUN_DIR's
    DeepSpeed checkpoints, which `--resume auto` picks up when the requeued job starts again.
    """

    train_argv: tuple[str, ...]
    max_requeues: int = 3
    master_port: int | None = None
    cpus_per_task: int | None = None
    requeues: int = 0

    def __call__(self) -> TaskReport:
        job_env = submitit.JobEnvironment()
        os.environ.update(distributed.env_from_job(job_env, self.master_port, self.cpus_per_task))
        dist_env = distributed.current()
        # torch and DeepSpeed load only inside the task, after the environment above is set
        from gpt_ds import train

        settings = settings_from_args(list(self.train_argv))  # `run` checks the rest before any work
        result = train.run(settings)
        report = TaskReport(
            rank=dist_env.rank, world_size=dist_env.world_size, local_rank=dist_env.local_rank,
            node=job_env.hostnames[job_env.node], master_addr=os.environ["MASTER_ADDR"],
            master_port=int(os.environ["MASTER_PORT"]), requeues=self.requeues, step=result.record.step,
            preempted=result.preempted, target_reached=result.record.target_reached, run_dir=str(settings.run_dir))
        if result.preempted and dist_env.is_main:
            self._requeue(job_env, result.record.step)
        # the other ranks end here; rank 0's requeue restarts all of them
        return report

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:
        """The submission that continues this job; None (no requeue) once `max_requeues` are used."""
        if self.requeues >= self.max_requeues:
            return None
        return DelayedSubmission(dataclasses.replace(self, requeues=self.requeues + 1), *args, **kwargs)

    def _requeue(self, job_env: submitit.JobEnvironment, step: int) -> NoReturn:
        """Rank 0, after the collective checkpoint: submitit's own checkpoint-and-requeue path."""
        if self.requeues >= self.max_requeues:
            raise RequeueRefused(
                f"preempted at step {step} after {self.requeues} requeue(s), the limit (--max-requeues "
                f"{self.max_requeues}); the checkpoint is saved: submit the same command again to resume")
        if isinstance(job_env, SlurmJobEnvironment):
            # `scontrol requeue` would also bring back a job the user cancelled (scancel sends the
            # same SIGTERM): requeue only a job that is still running, i.e. one signalled to checkpoint.
            state = slurm_job_state(job_env.job_id)
            if state != "RUNNING":
                raise RequeueRefused(
                    f"stopped at step {step} with its checkpoint saved; the job is {state} (cancelled, or "
                    "preempted and requeued by Slurm itself), so it is not requeued here; submit the same "
                    "command again to resume")
        print(f"gpt-ds: preempted at step {step}, checkpoint saved; requeueing the job (requeue "
              f"{self.requeues + 1} of at most {self.max_requeues}), it resumes from that step", flush=True)
        paths = job_env.paths
        submission = DelayedSubmission.load(paths.submitted_pickle)
        try:
            # checkpoint() -> the pickle is replaced -> `scontrol requeue` (local: exit code 144) -> exit
            SignalHandler(job_env, paths, submission).checkpoint_and_try_requeue(job_env._usr_sig())
        except subprocess.CalledProcessError as err:
            raise RequeueRefused(
                f"preempted at step {step} and checkpointed, but Slurm refused the requeue ({err}); "
                "submit the same command again to resume") from err
        raise AssertionError("submitit's requeue returned instead of exiting")  # pragma: no cover


def slurm_job_state(job_id: str) -> str:
    """The job's state as slurmctld sees it now (RUNNING, COMPLETING, ...), or UNKNOWN."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                              timeout=SLURM_QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    found = re.search(r"\bJobState=(\S+)", proc.stdout)
    return found.group(1) if found else "UNKNOWN"
