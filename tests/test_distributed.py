"""gpt_ds.distributed's environment handling: `current` (the rank layout as set), `fill_env` (the
single-process defaults and a plain srun's SLURM_* variables) and `env_from_job`, the one
translation of a Slurm or submitit job's environment into torch.distributed's variables.
"""

from __future__ import annotations

import os

import pytest
import torch.distributed
import submitit
from submitit.local.local import LocalJobEnvironment
from submitit.slurm.slurm import SlurmJobEnvironment

from gpt_ds import distributed
from gpt_ds.errors import UserError

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No launcher's, Slurm's or submitit's variables from the environment the tests run in, and none
    that `fill_env` sets left behind for later tests (setenv first records the name as absent)."""
    for name in {*TORCH_VARS, "OMP_NUM_THREADS", *(n for n in os.environ if n.startswith(("SLURM_", "SUBMITIT_")))}:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def set_env(monkeypatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


# ------------------------------------------------------------------------------------------ current


def test_nothing_set_is_rank_0_of_1():
    assert distributed.current() == distributed.DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


def test_the_launchers_variables(monkeypatch):
    set_env(monkeypatch, {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_SIZE": "4"})  # deepspeed's
    dist_env = distributed.current()
    assert (dist_env.rank, dist_env.world_size, dist_env.local_rank, dist_env.local_world_size) == (5, 8, 1, 4)
    assert not dist_env.is_main
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's name wins
    assert distributed.current().local_world_size == 2


def test_rank_outside_the_world_size(monkeypatch):
    set_env(monkeypatch, {"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="RANK=4 is outside WORLD_SIZE=4"):
        distributed.current()


@pytest.mark.parametrize("name", ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"])
def test_a_variable_that_is_not_an_integer(monkeypatch, name):
    set_env(monkeypatch, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"})
    monkeypatch.setenv(name, "two")
    with pytest.raises(UserError, match=f"{name}='two' is not an integer"):
        distributed.current()


# ------------------------------------------------------------------------------------------ fill_env


def test_fill_env_single_process_defaults():
    dist_env = distributed.fill_env()
    assert dist_env == distributed.DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_fill_env_needs_a_rendezvous_for_several_ranks(monkeypatch):
    set_env(monkeypatch, {"RANK": "1", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="MASTER_ADDR/MASTER_PORT are not set"):
        distributed.fill_env()


def test_fill_env_keeps_the_launchers_variables(monkeypatch):
    set_env(monkeypatch, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                          "MASTER_PORT": "29600", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "9"})
    assert distributed.fill_env().rank == 1  # a launcher inside a Slurm allocation: its RANK wins
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("10.0.0.1", "29600")


SRUN_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
            "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "cpu[01-02]",
            "SLURM_NTASKS_PER_NODE": "2"}


def test_fill_env_translates_a_plain_srun(monkeypatch):
    """`srun python launch/train.py`: only SLURM_* set; the same translation as a submitit task's."""
    set_env(monkeypatch, SRUN_ENV)
    dist_env = distributed.fill_env()
    assert dist_env == distributed.DistEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert {name: os.environ[name] for name in TORCH_VARS if name != "LOCAL_SIZE"} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "cpu01",
        "MASTER_PORT": str(distributed.master_port_for("4242"))}


def test_fill_env_under_srun_keeps_a_given_rendezvous(monkeypatch):
    set_env(monkeypatch, {**SRUN_ENV, "MASTER_ADDR": "head", "MASTER_PORT": "29700"})
    distributed.fill_env()
    assert (os.environ["RANK"], os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("3", "head", "29700")


def test_fill_env_under_srun_with_a_slurm_variable_that_is_not_an_integer(monkeypatch):
    set_env(monkeypatch, {**SRUN_ENV, "SLURM_NTASKS": "4x"})
    with pytest.raises(UserError, match="SLURM_NTASKS='4x' is not an integer"):
        distributed.fill_env()


# ------------------------------------------------------------------------------------------ env_from_job


def test_distributed_env_from_slurm_variables(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
                        "SLURM_NODEID": "1", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
                        "SLURM_JOB_NODELIST": "gpu[007-008]"}.items():
        monkeypatch.setenv(name, value)
    job_env = submitit.JobEnvironment()
    assert isinstance(job_env, SlurmJobEnvironment)

    env = distributed.env_from_job(job_env)
    assert env == {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu007", "MASTER_PORT": str(distributed.master_port_for("4242"))}
    overridden = distributed.env_from_job(job_env, master_port=29611, cpus_per_task=6)
    assert overridden["MASTER_PORT"] == "29611" and overridden["OMP_NUM_THREADS"] == "6"


def test_distributed_env_of_the_local_executor(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for name, value in {"SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2",
                        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                        "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        monkeypatch.setenv(name, value)
    job_env = submitit.JobEnvironment()
    assert isinstance(job_env, LocalJobEnvironment)
    env = distributed.env_from_job(job_env)
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["LOCAL_WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "127.0.0.1"  # one node: loopback, no name resolution needed


def test_uneven_tasks_per_node_share_cores_by_the_fullest_node(monkeypatch):
    set_env(monkeypatch, {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "3", "SLURM_JOB_NUM_NODES": "2",
                          "SLURM_PROCID": "2", "SLURM_JOB_NODELIST": "a,b"})
    env = distributed.env_from_job(SlurmJobEnvironment())
    assert env["LOCAL_WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "a" and "OMP_NUM_THREADS" not in env


def test_no_job_id_and_no_port(monkeypatch):
    set_env(monkeypatch, {"SLURM_NTASKS": "2", "SLURM_PROCID": "0"})
    with pytest.raises(UserError, match="SLURM_JOB_ID is not set"):
        distributed.env_from_job(SlurmJobEnvironment())
    assert distributed.env_from_job(SlurmJobEnvironment(), master_port=29650)["MASTER_PORT"] == "29650"


def test_master_port_is_stable_per_job_and_outside_the_ephemeral_range():
    ports = {distributed.master_port_for(str(job_id)) for job_id in range(1, 30_000, 7)}
    assert min(ports) >= 1024 and max(ports) < 32768
    assert distributed.master_port_for("123") == distributed.master_port_for("123")
    assert distributed.master_port_for("123") != distributed.master_port_for("124")
    assert distributed.master_port_for("123_4") == distributed.master_port_for("1234")  # array ids work too


@pytest.mark.slow
def test_two_ranks_on_one_host_leave_no_shared_memory_behind(tmp_path):
    """DeepSpeed's CPU all-reduce maps a 69 MB /dev/shm file per rank and never removes it: each
    multi-rank run would leak them (a new name per MASTER_PORT) until RAM fills. distributed.init
    unlinks them once every rank has mapped them; the all-reduces still work, even after a kill -9."""
    import glob
    import subprocess

    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, sys\n"
        "from gpt_ds import distributed\n"
        "env = distributed.fill_env()\n"
        "distributed.init(env)\n"
        "for _ in range(3):\n"
        "    (total,) = distributed.all_reduce_sum([1.0])\n"
        "print(f'rank {env.rank} sum {total}', flush=True)\n"
        "if env.rank == 1 and sys.argv[1] == 'kill':\n"
        "    os.kill(os.getpid(), 9)\n")
    for how in ("exit", "kill"):
        command = distributed.launcher_command(2, str(script), [how])
        port = command[command.index("--master_port") + 1]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert "rank 0 sum 2.0" in proc.stdout + proc.stderr, proc.stderr[-3000:]
        assert glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*") == [], how


# ------------------------------------------------------------------------------------- a lost rank


def test_the_watchdog_stops_a_rank_that_waits_past_the_timeout_with_one_line():
    """Kicked every 0.3 s it lets the rank run; left alone for more than 1 s it exits 4 with one line."""
    import subprocess
    import sys
    import time

    code = ("import time\nfrom gpt_ds.distributed import Watchdog\nw = Watchdog(1.0, rank=3, world_size=4)\n"
            "for _ in range(8):\n    w.kick(); time.sleep(0.3)\nprint('kicked', flush=True)\ntime.sleep(30)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == distributed.RANK_LOST_EXIT_CODE and proc.stdout == "kicked\n", proc.stderr
    assert 2.1 + 1.0 < elapsed < 15 and len(lines) == 1, (elapsed, proc.stderr)  # the last kick at 2.1 s
    assert "rank 3 made no progress for 1 s (--collective-timeout 1): another rank died or hung" in lines[0]

    alone = subprocess.run([sys.executable, "-c", "import time\nfrom gpt_ds.distributed import Watchdog\n"
                            "w = Watchdog(0.2, rank=0, world_size=1)\ntime.sleep(1.5)\nprint('no peers', flush=True)\n"],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0 and alone.stdout == "no peers\n", alone.stderr  # one rank: nobody to wait for


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSTOP"])
def test_a_rank_that_dies_or_hangs_stops_the_other_within_the_timeout(tmp_path, signal_name):
    """Two ranks started by hand (no launcher to kill the survivor): after the first checkpoint rank 1 is
    killed (gloo reports the closed connection at once) or stopped (DeepSpeed's shared-memory all-reduce
    would wait forever; the watchdog ends it). Rank 0 exits 4 within --collective-timeout plus a margin,
    with one error line and no traceback; the checkpoint stays complete."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from gpt_ds import checkpoint
    from gpt_ds.data import write_shard

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 20_000))
    out = tmp_path / "run"
    args = [sys.executable, str(repo / "launch" / "train.py"), "--deepspeed_config", str(repo / "ds_configs" /
            "zero2.json"), "--data", str(tmp_path / "data"), "--out", str(out), "--n-layer", "1", "--n-embd", "32",
            "--n-head", "2", "--block-size", "32", "--max-steps", "100000", "--save-interval", "3",
            "--sample-tokens", "0", "--collective-timeout", "8"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(distributed.free_port()), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}
    ranks = [subprocess.Popen(args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / checkpoint.LATEST).exists():
            assert all(r.poll() is None for r in ranks) and time.monotonic() < deadline, "no checkpoint came"
            time.sleep(0.1)
        ranks[1].send_signal(getattr(signal, signal_name))
        lost_at = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=60)
        waited = time.monotonic() - lost_at
    finally:
        for proc in ranks:
            proc.kill()
            proc.communicate()
    errors = [line for line in stderr.splitlines() if "launch/train.py: error:" in line]
    assert ranks[0].returncode == distributed.RANK_LOST_EXIT_CODE and "Traceback" not in stderr, stderr[-3000:]
    assert len(errors) == 1 and "another rank died or hung" in errors[0] and waited < 8 + 10, (waited, errors)
    checkpoint.verify(checkpoint.latest_tag_dir(out / "checkpoints"))


def test_only_a_lost_peer_becomes_a_rank_lost_line():
    """gloo's words for a peer that is gone or silent become one line; a rank's own failure keeps its traceback."""
    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:18560: Connection reset by peer.\n"
                        "This is typically caused by a remote worker hanging")
    lost = distributed.rank_lost(gone, rank=1)
    assert isinstance(lost, UserError) and lost.exit_code == distributed.RANK_LOST_EXIT_CODE
    assert str(lost).startswith("rank 1: a collective with the other ranks failed ([../gloo") and "\n" not in str(lost)
    assert distributed.rank_lost(RuntimeError("Timed out waiting 5000ms for recv operation to complete"), 0)
    # NCCL's words for a peer that exited (as torch's DistBackendError carries them; no NCCL runs here)
    nccl = getattr(torch.distributed, "DistBackendError", RuntimeError)(
        "NCCL error in: ProcessGroupNCCL.cpp:3356, remote process exited or there was a network error, NCCL version "
        "2.27.3\nncclRemoteError: A call failed possibly due to a network error or a remote process exiting")
    assert str(distributed.rank_lost(nccl, 3)).startswith("rank 3: a collective with the other ranks failed (NCCL error")
    for own in (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp, unhandled cuda error"), RuntimeError("shape mismatch")):
        assert distributed.rank_lost(own, 0) is None
    with pytest.raises(distributed.RankLost):
        with distributed.peers_lost_as_errors(0):
            raise gone
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with distributed.peers_lost_as_errors(0):
            raise RuntimeError("shape mismatch")


def test_equal_forwards_pads_a_rank_to_the_busiest_ones_count_with_forwards_that_do_not_count():
    shares = {0: ["a", "b", "c"], 1: ["d"], 2: []}
    share = shares.__getitem__
    assert list(distributed.equal_forwards(share, 1, 3, False, spare=lambda: "s")) == [("d", True)]
    assert list(distributed.equal_forwards(share, 1, 3, True, spare=lambda: "s")) == [("d", True), ("d", False),
                                                                                       ("d", False)]
    assert list(distributed.equal_forwards(share, 2, 3, True, spare=lambda: "s")) == [("s", False)] * 3
    assert list(distributed.equal_forwards(share, 0, 3, True, spare=lambda: "s")) == [(x, True) for x in "abc"]
