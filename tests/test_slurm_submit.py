"""gpt_ds.slurm_submit and launch/submit.py: the executor and its sbatch script, bad input, the
outcome of a failed job, and real runs: submitit's local executor with 2 tasks, and the real Slurm
cluster of ../shared/slurm (2 nodes) training through a preemption (USR2 -> checkpoint -> requeue ->
resume) to weights bit-identical to the uninterrupted local run.

Tests that need the cluster skip, with the reason, when `sinfo` does not answer; start it with
`source .ci/slurm.sh start`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import submitit

from gpt_ds import slurm_submit
from gpt_ds.checkpoint import tag_for
from gpt_ds.config_variant import write_variant
from gpt_ds.errors import UserError
from gpt_ds.recipes import MUON_CONFIG
from gpt_ds.slurm_task import TaskReport
from launch import submit

REPO = Path(__file__).resolve().parents[1]
SLURM_MISSING = slurm_submit.slurm_unreachable_reason()
needs_cluster = pytest.mark.skipif(SLURM_MISSING is not None, reason=f"no Slurm cluster: {SLURM_MISSING}")
needs_slurm_commands = pytest.mark.skipif(not slurm_submit.slurm_commands_installed(),
                                          reason="Slurm's commands (sbatch, srun) are not installed")

MAX_STEPS = 16
PREEMPT_AT_STEP = 3  # signal the job once rank 0's progress bar shows this step
JOB_TIMEOUT_S = 240


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Token shards in llm.c's naming (no manifest): random tokens, enough for every rank's windows."""
    from gpt_ds.data import write_shard

    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    write_shard(folder / "train_000000.bin", rng.integers(0, 50257, 60_000))
    write_shard(folder / "val_000000.bin", rng.integers(0, 50257, 4_000))
    return folder


@pytest.fixture(scope="module")
def ds_config(tmp_path_factory) -> Path:
    """ds_configs/zero2.json (ZeRO-2, bf16) with a micro-batch of 2, to keep CPU steps short."""
    return write_variant(tmp_path_factory.mktemp("ds") / "zero2_micro2.json", train_micro_batch_size_per_gpu=2)


@pytest.fixture(scope="module")
def muon_config(tmp_path_factory) -> Path:
    """ds_configs/zero2_muon.json (the modern recipe's: Muon, ZeRO-2, bf16) with a micro-batch of 2."""
    return write_variant(tmp_path_factory.mktemp("ds") / "zero2_muon_micro2.json", REPO / MUON_CONFIG,
                         train_micro_batch_size_per_gpu=2)


def train_args(ds_config: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--deepspeed_config", str(ds_config), "--data", str(data_dir), "--out", str(out), "--model", "tiny",
            "--block-size", "32", "--max-steps", str(MAX_STEPS), "--warmup-steps", "2", "--log-interval", "1",
            "--save-interval", "1000", "--eval-interval", "1000", "--eval-tokens", "256", "--sample-tokens", "0",
            *extra]


def submit_command(*options: str) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "submit.py"), *options]


def read_reports(run_dir: Path, job_id: str, tasks: int, cluster: str) -> list[TaskReport]:
    job_class = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    job = job_class(folder=run_dir / "slurm", job_id=job_id, tasks=list(range(tasks)))
    return [job.task(rank).result() for rank in range(tasks)]


def model_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, ds_config, data_dir) -> tuple[Path, str, str]:
    """An uninterrupted 2-rank run through submitit's local executor (`--cluster local --wait`):
    (RUN_DIR, its console output, the job id)."""
    out = tmp_path_factory.mktemp("local") / "run"
    proc = subprocess.run(
        submit_command("--cluster", "local", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "10",
                       "--wait", "--", *train_args(ds_config, data_dir, out)),
        capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+) to local processes", proc.stdout).group(1)
    return out, proc.stdout + proc.stderr, job_id


# ------------------------------------------------------------------------------------------ fast


@pytest.mark.parametrize("options, message", [
    (["--gpus-per-node", "8", "--tasks-per-node", "4"], "one task per GPU"),
    (["--cluster", "local", "--nodes", "2"], "--cluster local runs on this machine only"),
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--time", "1"], "raise --time"),
])
def test_inconsistent_job_options(options, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit.main([*options, "--", "--out", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_training_arguments_come_after_a_double_dash(capsys):
    with pytest.raises(SystemExit):
        submit.main(["--nodes", "2", "--data", "x"])
    assert "give the training's arguments after `--`" in capsys.readouterr().err


def test_rank_count_inconsistent_with_the_deepspeed_batch_sizes(tmp_path, data_dir, capsys):
    # fits 1 or 2 ranks, not 3
    pinned = write_variant(tmp_path / "pinned.json", train_batch_size=16, train_micro_batch_size_per_gpu=8)
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["--nodes", "3", "--dry-run", "--", *train_args(pinned, data_dir, tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "3 node(s) x 1 task(s) = 3 rank(s)" in err and "train_batch_size 16" in err
    assert not (tmp_path / "run").exists()


def test_the_jobs_gpus_decide_its_precision_not_the_login_nodes(tmp_path, data_dir):
    """fp16 needs a GPU: from this CPU-only machine, a --gpus-per-node job may train in fp16; a CPU job may not."""
    argv = train_args(REPO / "ds_configs" / "zero2_fp16.json", data_dir, tmp_path / "run")
    settings = slurm_submit.check_training_args(argv, slurm_submit.JobSpec(nodes=2, gpus_per_node=4))
    assert settings.deepspeed_config.endswith("zero2_fp16.json")
    with pytest.raises(UserError, match=r"1 node\(s\) x 1 task\(s\) = 1 rank\(s\): .*trains in fp16, which needs a GPU"):
        slurm_submit.check_training_args(argv, slurm_submit.JobSpec(nodes=1))
    with pytest.raises(UserError, match="trains in fp16, which needs a GPU"):  # --cluster local: this machine's
        slurm_submit.check_training_args(argv, slurm_submit.JobSpec(cluster="local", gpus_per_node=1))
    assert not (tmp_path / "run").exists()


def test_no_slurm_here_suggests_the_local_cluster(tmp_path, ds_config, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun, sinfo
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["--", *train_args(ds_config, data_dir, tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no Slurm cluster reachable" in err and "--cluster local" in err


@needs_slurm_commands
def test_sbatch_script_of_a_multi_node_gpu_job(tmp_path):
    spec = slurm_submit.JobSpec(nodes=4, gpus_per_node=8, partition="gpu", account="lm", qos="high", time_min=720,
                         cpus_per_task=10, mem="0", constraint="h100", exclusive=True, job_name="gpt2-xl")
    script = slurm_submit.sbatch_script(slurm_submit.make_executor(spec, tmp_path / "slurm"))
    for line in ["#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lm", "#SBATCH --qos=high", "#SBATCH --time=720",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --mem=0", "#SBATCH --constraint=h100",
                 "#SBATCH --exclusive", "#SBATCH --job-name=gpt2-xl", "#SBATCH --signal=USR2@120",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append", f"#SBATCH --output={tmp_path}/slurm/%j_0_log.out"]:
        assert line in script.splitlines(), line
    assert f"srun --unbuffered --output {tmp_path}/slurm/%j_%t_log.out" in script
    assert "-m submitit.core._submit" in script


def test_failed_job_shows_the_failing_ranks_log(tmp_path):
    """A job whose rank 1 raises: the outcome names the rank, shows its log's end and the full paths."""
    spec = slurm_submit.JobSpec(cluster="local", tasks_per_node=2, time_min=5, signal_delay_s=30)
    executor = slurm_submit.make_executor(spec, tmp_path / "slurm")
    # the tasks cannot import this test module: send the function itself
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        job = executor.submit(_fail_on_rank_one)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    job.wait()
    err = _Capture()
    assert slurm_submit.report_outcome(job, err) == 1
    assert f"job {job.job_id} failed on rank 1" in err.text
    assert "RuntimeError: rank 1 cannot find its data" in err.text
    assert f"{tmp_path}/slurm/{job.job_id}_1_log.err" in err.text


def _fail_on_rank_one() -> int:
    rank = submitit.JobEnvironment().global_rank
    if rank == 1:
        raise RuntimeError("rank 1 cannot find its data")
    return rank


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_local_cluster_with_two_tasks(local_run):
    out, output, job_id = local_run
    reports = read_reports(out, job_id, 2, "local")
    assert sorted(r.rank for r in reports) == [0, 1] and {r.world_size for r in reports} == {2}
    assert all(r.step == MAX_STEPS and not r.preempted and r.requeues == 0 for r in reports)
    assert f"job {job_id} done: step {MAX_STEPS} on 2 rank(s)" in output
    assert (out / "model" / "model.safetensors").is_file()


@needs_cluster
def test_dry_run_prints_the_sbatch_script_checked_by_slurm(tmp_path, ds_config, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["--nodes", "2", "--tasks-per-node", "1", "--partition", "debug", "--time", "30", "--dry-run",
                     "--", *train_args(ds_config, data_dir, tmp_path / "run")])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=debug",
                 "#SBATCH --time=30", "#SBATCH --requeue", "#SBATCH --signal=USR2@120"]:
        assert line in out.splitlines(), line
    assert re.search(r"^# sbatch: Job \d+ to start at .* on nodes node\[1-2\]", out, re.M), out
    assert not (tmp_path / "run").exists()  # nothing submitted, nothing written


@needs_cluster
def test_unknown_partition_shows_slurms_message(tmp_path, ds_config, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["--partition", "nope", "--", *train_args(ds_config, data_dir, tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Slurm refused the job: sbatch: error: invalid partition specified: nope" in err
    assert "Traceback" not in err


def _wait_for(condition, what: str, timeout_s: float = 120, poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def _progress_step(log: Path) -> int:
    """The last step rank 0's progress bar shows in its log (0 before training starts)."""
    if not log.exists():
        return 0
    steps = re.findall(rf"\| *(\d+)/{MAX_STEPS} ", log.read_text(errors="replace"))
    return int(steps[-1]) if steps else 0


def _squeue(job_id: str, fmt: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", fmt], capture_output=True, text=True).stdout.strip()


class ClusterRun:
    """`launch/submit.py --wait` of a 2 nodes x 1 task training job, run in the background."""

    def __init__(self, tmp_path: Path, ds_config: Path, data_dir: Path, *options: str,
                 train_extra: tuple[str, ...] = ()) -> None:
        self.out = tmp_path / "run"
        self.console = tmp_path / "submit.log"
        with open(self.console, "w") as fh:
            self.proc = subprocess.Popen(
                submit_command("--nodes", "2", "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "10",
                               "--signal-delay", "60", *options, "--wait",
                               "--", *train_args(ds_config, data_dir, self.out, *train_extra)),
                stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        self.job_id = ""

    def __enter__(self) -> "ClusterRun":
        try:
            self.job_id = _wait_for(
                lambda: (re.findall(r"submitted job (\d+) to Slurm", self.console.read_text())
                         or [None if self.proc.poll() is None else "exited"])[0], "the job id", timeout_s=60)
            assert self.job_id != "exited", self.output[-3000:]
            rank0 = self.rank0_log
            _wait_for(lambda: _progress_step(rank0) >= PREEMPT_AT_STEP or self.proc.poll() is not None,
                      "training to start")
            assert self.proc.poll() is None, self.output[-3000:]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            if self.job_id:
                subprocess.run(["scancel", self.job_id])

    @property
    def rank0_log(self) -> Path:
        return self.out / "slurm" / f"{self.job_id}_0_log.err"

    @property
    def output(self) -> str:
        return self.console.read_text()

    def wait(self) -> int:
        return self.proc.wait(timeout=JOB_TIMEOUT_S)


@pytest.mark.slow
@needs_cluster
def test_two_nodes_train_through_a_preemption(tmp_path, ds_config, data_dir, local_run):
    """2 nodes x 1 task, ZeRO-2 over gloo: USR2 mid-training -> collective checkpoint -> requeue ->
    resume; the TensorBoard log has every step once, and the weights equal the uninterrupted run's."""
    from gpt_ds.metrics import read_scalars

    with ClusterRun(tmp_path, ds_config, data_dir, "--max-requeues", "2") as run:
        job_id, out, rank0_log = run.job_id, run.out, run.rank0_log
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        # Slurm holds a requeued job ~2 minutes (BeginTime); release it at once
        _wait_for(lambda: _squeue(job_id, "%r") == "BeginTime", "the requeue", timeout_s=60)
        # Slurm compares credential times by the second: a job requeued and restarted within the second its
        # old credential was revoked is killed ("Job credential revoked"); let that second pass first
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        code = run.wait()
    output = run.output
    assert code == 0, output[-4000:]
    assert "requeued 1 time(s)" in output

    reports = read_reports(out, job_id, 2, "slurm")
    assert sorted(r.node for r in reports) == ["node1", "node2"]  # one rank per node
    assert {r.world_size for r in reports} == {2} and sorted(r.rank for r in reports) == [0, 1]
    assert {r.master_addr for r in reports} == {"node1"}
    assert all(r.step == MAX_STEPS and r.requeues == 1 for r in reports)

    # the first run stopped at a step boundary after its checkpoint; the second resumed from it
    preempted = re.search(r"done: step (\d+),.*preempted: checkpoint", rank0_log.with_suffix(".out").read_text())
    assert preempted and PREEMPT_AT_STEP <= int(preempted.group(1)) < MAX_STEPS

    steps = [step for step, _ in read_scalars(out / "tb")["train/loss"]]
    assert steps == list(range(1, MAX_STEPS + 1))  # no duplicated, no missing step

    reference = model_weights(local_run[0])
    resumed = model_weights(out)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert np.array_equal(resumed[name].numpy(), tensor.numpy()), name


@pytest.mark.slow
@needs_cluster
@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_a_cancelled_job_checkpoints_stays_cancelled_and_resumes_on_another_allocation(tmp_path, ds_config,
                                                                                        muon_config, data_dir, recipe):
    """`scancel JOB` sends the same SIGTERM as a preemption: the job saves, and is NOT requeued
    (`scontrol requeue` would revive a cancelled job). Submitted again on 1 node x 1 task instead of
    2 x 1, the same --out resumes: the checkpoint is resharded (universal checkpoint), the global batch
    kept (accumulation 2), and the run finishes with every step once in TensorBoard. The same for the
    modern recipe, whose Muon momentum reshards too (gpt_ds.reshard)."""
    from gpt_ds.metrics import read_scalars

    extra = ("--recipe", "modern") if recipe == "modern" else ()
    ds_config = muon_config if recipe == "modern" else ds_config
    with ClusterRun(tmp_path, ds_config, data_dir, train_extra=extra) as run:
        subprocess.run(["scancel", run.job_id], check=True)
        code = run.wait()
    assert code == 1, run.output[-4000:]
    assert "it is not requeued here; submit the same command again to resume" in run.output
    assert "full logs:" in run.output
    # leaves the queue once completing, instead of coming back as PENDING
    _wait_for(lambda: _squeue(run.job_id, "%T") == "", "the job to leave the queue", timeout_s=60)
    assert "CANCELLED" in subprocess.run(["sacct", "-n", "-X", "-j", run.job_id, "-o", "State"],
                                         capture_output=True, text=True).stdout
    saved = (run.out / "checkpoints" / "latest").read_text().strip()
    assert PREEMPT_AT_STEP <= int(saved.removeprefix("step_")) < MAX_STEPS

    again = subprocess.run(submit_command("--nodes", "1", "--tasks-per-node", "1", "--cpus-per-task", "1", "--time",
                                          "10", "--wait", "--", *train_args(ds_config, data_dir, run.out, *extra)),
                           capture_output=True, text=True, cwd=REPO, timeout=JOB_TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+) to Slurm", again.stdout).group(1)
    log = (run.out / "slurm" / f"{job_id}_0_log.out").read_text()
    assert f"resharding {saved} (2 -> 1 ranks)" in log, log[-3000:]
    assert (run.out / "checkpoints" / f"{saved}.universal").is_dir()
    state = json.loads((run.out / "checkpoints" / tag_for(MAX_STEPS) / "client_state.json").read_text())
    assert state["world_size"] == 1 and state["ds_config"]["gradient_accumulation_steps"] == 2
    assert state["ds_config"]["train_batch_size"] == 4  # 2 nodes x micro-batch 2, kept
    steps = [step for step, _ in read_scalars(run.out / "tb")["train/loss"]]
    assert steps == list(range(1, MAX_STEPS + 1))
