"""The submitting program: a training job sent to a Slurm cluster (or run as local processes)
through submitit, and followed to its end. launch/submit.py is its command line.

Defines:
- `JobSpec` (and `CLUSTERS`): the resources of one job (cluster, nodes, tasks, GPUs, partition,
  time, requeues...) and their checks.
- `make_executor`, `executor_parameters`: the submitit executor for a spec, its folder RUN_DIR's
  `RunDir.slurm`.
- `sbatch_script`, `check_with_slurm`: the sbatch script submitit would submit, and Slurm's
  `sbatch --test-only` verdict on it (`--dry-run`).
- `check_training_args`: the training's arguments checked for the job's world size before submitting.
- `submit`: a `gpt_ds.slurm_task.TrainingJob` submitted with the spec's requeue and rendezvous settings.
- `LogFollower`, `follow`, `report_outcome`: rank 0's log on this terminal, the job's states, and its
  outcome (rank 0's summary, or the first failing rank's log tail).
- `slurm_unreachable_reason`, `slurm_commands_installed`: whether a cluster answers from here.
- `launch`: the whole of launch/submit.py: validate, then print the script, submit, or submit and follow.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import submitit

from gpt_ds.errors import UserError
from gpt_ds.run_dir import RunDir
from gpt_ds.settings import RunSettings
from gpt_ds.slurm_task import SLURM_QUERY_TIMEOUT_S, TaskReport, TrainingJob

CLUSTERS = ("slurm", "local")
LOG_TAIL_LINES = 25
FOLLOW_POLL_S = 2.0
RESULTS_GRACE_S = 15.0


@dataclass(frozen=True)
class JobSpec:
    """Where and how one training job runs: the resources asked of Slurm (or of this machine)."""

    cluster: str = "slurm"  # "slurm" or "local" (submitit's local executor: tasks as processes here)
    nodes: int = 1
    gpus_per_node: int = 0  # one task per GPU
    tasks_per_node: int | None = None  # CPU nodes: ranks per node (default: gpus_per_node, else 1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    cpus_per_task: int | None = None
    mem: str | None = None  # Slurm syntax: 64G, 500M, 0 (= all of the node's memory)
    constraint: str | None = None
    exclusive: bool = False
    job_name: str = "gpt-ds"
    max_requeues: int = 3
    master_port: int | None = None  # None: derived from the job id
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to finish a step and save

    @property
    def ranks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def check(self) -> None:
        """Raise UserError for a spec no cluster could run, naming the flag to change."""
        if self.cluster not in CLUSTERS:
            raise UserError(f"--cluster {self.cluster}: unknown; use one of {', '.join(CLUSTERS)}")
        positive = {"--nodes": self.nodes, "--time": self.time_min}
        if self.tasks_per_node is not None:
            positive["--tasks-per-node"] = self.tasks_per_node
        if self.cpus_per_task is not None:
            positive["--cpus-per-task"] = self.cpus_per_task
        for flag, value in positive.items():
            if value < 1:
                raise UserError(f"{flag} must be at least 1 (got {value})")
        if self.gpus_per_node < 0 or self.max_requeues < 0:
            raise UserError("--gpus-per-node and --max-requeues must be >= 0")
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise UserError(f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node {self.gpus_per_node}: "
                            "training runs one task per GPU; drop --tasks-per-node")
        if self.master_port is not None and not 1024 <= self.master_port <= 65535:
            raise UserError(f"--master-port {self.master_port}: use a port between 1024 and 65535")
        if self.cluster == "local" and self.nodes != 1:
            raise UserError(f"--cluster local runs on this machine only, not on {self.nodes} nodes; use --nodes 1 "
                            "(and --tasks-per-node for several ranks)")
        if self.signal_delay_s >= self.time_min * 60:
            raise UserError(f"--time {self.time_min} min leaves no training before the preemption signal "
                            f"({self.signal_delay_s} s before the end); raise --time")


def slurm_commands_installed() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("srun") is not None


def slurm_unreachable_reason() -> str | None:
    """Why no Slurm cluster answers from here, or None when `sinfo` does."""
    if not slurm_commands_installed():
        return "Slurm's commands (sbatch, srun) are not installed here"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                              timeout=SLURM_QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo did not answer ({err})"
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        return f"sinfo failed: {message[-1] if message else f'exit code {proc.returncode}'}"
    return None


def no_slurm(reason: str) -> UserError:
    return UserError(f"no Slurm cluster reachable: {reason}; run on the cluster's login node, "
                     "or use --cluster local to run the same job as processes on this machine")


def executor_parameters(spec: JobSpec) -> dict[str, Any]:
    """AutoExecutor parameters: the shared ones, then the `slurm_*` ones (ignored by the local executor)."""
    params: dict[str, Any] = {
        "name": spec.job_name,
        "nodes": spec.nodes,
        "tasks_per_node": spec.ranks_per_node,
        "timeout_min": spec.time_min,
        "slurm_signal_delay_s": spec.signal_delay_s,
        # requeueable even where the cluster's JobRequeue default says otherwise
        "slurm_additional_parameters": {"requeue": True},
    }
    optional = {"gpus_per_node": spec.gpus_per_node or None, "cpus_per_task": spec.cpus_per_task,
                "slurm_partition": spec.partition, "slurm_account": spec.account, "slurm_qos": spec.qos,
                "slurm_mem": spec.mem, "slurm_constraint": spec.constraint,
                "slurm_exclusive": True if spec.exclusive else None}
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def make_executor(spec: JobSpec, folder: str | Path) -> submitit.AutoExecutor:
    if spec.cluster == "slurm" and not slurm_commands_installed():
        raise no_slurm(slurm_unreachable_reason() or "srun not found")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=spec.cluster,
                                     slurm_max_num_timeout=spec.max_requeues)
    executor.update_parameters(**executor_parameters(spec))
    return executor


def sbatch_script(executor: submitit.AutoExecutor) -> str:
    """The sbatch script submitit submits for this executor (what `--dry-run` prints)."""
    slurm_executor = executor._executor
    return slurm_executor._make_submission_file_text(slurm_executor._submitit_command_str, "dry-run")


def check_with_slurm(script: str) -> str:
    """`sbatch --test-only`: Slurm validates partition, account, QOS and resources without submitting.

    Returns Slurm's estimate line; raises UserError with Slurm's own message when it refuses.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="gpt-ds-dry-run-") as fh:
        fh.write(script)
        fh.flush()
        proc = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True, text=True,
                              timeout=SLURM_QUERY_TIMEOUT_S)
    said = " ".join(line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip())
    if proc.returncode != 0:
        raise UserError(f"Slurm refused the job: {said}; fix the partition/account/QOS/resources flags")
    return said


def check_training_args(train_argv: list[str], spec: JobSpec) -> RunSettings:
    """Validate the training arguments for this job's world size and devices (DeepSpeed batch sizes, precision,
    data, resume) before anything is submitted: a typo must not cost a queue wait. The job's GPUs count, not
    the login node's (an fp16 config is fine from a CPU-only login node for a --gpus-per-node job)."""
    from gpt_ds import train

    try:
        cuda = None if spec.cluster == "local" else spec.gpus_per_node > 0  # local: this machine's own
        return train.parse_args(list(train_argv), world_size=spec.world_size, cuda=cuda)
    except UserError as err:
        raise UserError(f"training arguments, for {spec.nodes} node(s) x {spec.ranks_per_node} task(s) = "
                        f"{spec.world_size} rank(s): {err}") from err


def submit(executor: submitit.AutoExecutor, spec: JobSpec, train_argv: list[str]) -> submitit.Job:
    job = TrainingJob(train_argv=tuple(train_argv), max_requeues=spec.max_requeues,
                      master_port=spec.master_port, cpus_per_task=spec.cpus_per_task)
    try:
        return executor.submit(job)
    except submitit.core.utils.FailedJobError as err:  # sbatch's stderr, as Slurm said it
        raise UserError(f"Slurm refused the job: {' '.join(str(err).split())}") from err


class LogFollower:
    """Copies what rank 0 appends to its log files onto this terminal (its progress bar included)."""

    def __init__(self, job: submitit.Job, out: TextIO, err: TextIO) -> None:
        rank0 = job.task(0).paths
        self._streams = [(rank0.stdout, out), (rank0.stderr, err)]
        self._offsets = {path: 0 for path, _ in self._streams}

    def pump(self) -> None:
        for path, stream in self._streams:
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(self._offsets[path])
                data = fh.read()
            if data:
                self._offsets[path] += len(data)
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()


def job_state(job: submitit.Job) -> str:
    """Slurm's state of the job (sacct, queried now), or the local executor's."""
    if isinstance(job, submitit.SlurmJob):
        return job.watcher.get_state(job.job_id, mode="force")
    return job.state


def pending_reason(job_id: str) -> str:
    """Why Slurm keeps a job pending (squeue's reason), explained where it looks like a hang."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%r"], capture_output=True, text=True,
                              timeout=SLURM_QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    reason = proc.stdout.strip()
    if reason == "BeginTime":
        return ("BeginTime: Slurm holds a requeued job for a while before it may start; "
                f"`scontrol update JobId={job_id} StartTime=now` releases it")
    return "" if reason == "None" else reason


def _job_finished(job: submitit.Job) -> bool:
    """Whether the job has ended; for Slurm, from the state `job_state` has just queried."""
    if isinstance(job, submitit.SlurmJob):
        return job.watcher.is_done(job.job_id, mode="cache")
    return job.done()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-blank lines of a log (progress-bar redraws, separated by \\r, count as lines)."""
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def follow(job: submitit.Job, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Follow the job to its end, showing rank 0's output and the job's state changes; 0 on success."""
    out, err = out or sys.stdout, err or sys.stderr
    follower = LogFollower(job, out, err)
    last_state = ""
    try:
        while True:
            follower.pump()
            state = job_state(job)
            if state == "PENDING" and isinstance(job, submitit.SlurmJob):
                state = f"PENDING ({pending_reason(job.job_id) or 'queued'})"
            if state != last_state and state != "UNKNOWN":  # UNKNOWN: sacct has not seen the job yet
                print(f"[gpt-ds-submit] job {job.job_id}: {state}", file=err, flush=True)
                last_state = state
            if _job_finished(job):
                break
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        print(f"[gpt-ds-submit] stopped following; job {job.job_id} keeps running", file=err, flush=True)
        return 130
    follower.pump()
    return report_outcome(job, err)


def report_outcome(job: submitit.Job, err: TextIO) -> int:
    """Print the job's outcome: rank 0's summary, or the failing rank's log tail and where the log is.

    When several ranks failed, the one that failed first is shown: the others usually only report
    that it went away (a broken collective), which says nothing about the cause.
    """
    tasks = [job.task(rank) for rank in range(job.num_tasks)]
    # Result files can trail the job's final state on a shared file system: wait for them once, for
    # all tasks together (submitit would wait per task, minutes for a large job that died without them).
    deadline = time.monotonic() + RESULTS_GRACE_S
    while not all(task.paths.result_pickle.exists() for task in tasks) and time.monotonic() < deadline:
        time.sleep(0.5)
    failed = [task for task in tasks if not task.paths.result_pickle.exists() or task.exception() is not None]
    if failed:
        def failed_at(task: submitit.Job) -> float:
            pickle = task.paths.result_pickle
            return pickle.stat().st_mtime if pickle.exists() else float("inf")

        first = min(failed, key=failed_at)
        paths = first.paths
        what = (f"failed on rank {first.task_id}" if paths.result_pickle.exists()
                else f"ended before rank {first.task_id} reported a result")
        print(f"[gpt-ds-submit] job {job.job_id} {what} (state {job_state(job)}); "
              f"the end of its log:\n{tail(paths.stderr)}\n"
              f"[gpt-ds-submit] full logs: {paths.stderr} and {paths.stdout}", file=err, flush=True)
        return 1
    report: TaskReport = job.task(0).result()
    target = "reached" if report.target_reached else "not reached"
    print(f"[gpt-ds-submit] job {job.job_id} done: step {report.step} on {report.world_size} rank(s), target "
          f"loss {target}, requeued {report.requeues} time(s); model: {RunDir(report.run_dir).model}",
          file=err, flush=True)
    return 0


def launch(spec: JobSpec, train_argv: list[str], dry_run: bool = False, wait: bool = False,
           out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The whole of launch/submit.py: validate, then print the script, submit, or submit and follow."""
    out, err = out or sys.stdout, err or sys.stderr
    spec.check()
    settings = check_training_args(train_argv, spec)
    folder = RunDir(settings.run_dir.root.resolve()).slurm
    if spec.cluster == "local":
        if dry_run:
            print(f"# --cluster local: {spec.world_size} task(s) as processes on this machine, submitit folder "
                  f"{folder}\n# each task runs gpt_ds.train with: {shlex.join(train_argv)}", file=out, flush=True)
            return 0
        executor = make_executor(spec, folder)
    else:
        unreachable = slurm_unreachable_reason()
        if unreachable is not None and not dry_run:
            raise no_slurm(unreachable)
        executor = make_executor(spec, folder)
        script = sbatch_script(executor)
        verdict = check_with_slurm(script) if unreachable is None else f"not checked with Slurm: {unreachable}"
        if dry_run:
            out.write(script)
            print(f"# {verdict}", file=out, flush=True)
            return 0
    job = submit(executor, spec, train_argv)
    paths = job.task(0).paths
    where = "Slurm" if spec.cluster == "slurm" else "local processes"
    print(f"submitted job {job.job_id} to {where}: {spec.nodes} node(s) x {spec.ranks_per_node} task(s)\n"
          f"  logs: {paths.stderr} and {paths.stdout} (rank 0; other ranks: "
          f"{folder}/{job.job_id}_<rank>_log.*)", file=out, flush=True)
    if spec.cluster == "slurm":
        print(f"  state: squeue -j {job.job_id}   cancel: scancel {job.job_id}", file=out, flush=True)
    else:
        print(f"  stop: kill -INT {job.job_id} (the local job's controller process)", file=out, flush=True)
    if not wait:
        return 0
    return follow(job, out=out, err=err)
