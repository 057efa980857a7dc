"""gpt_ds.slurm_task: the checkpointable job's requeue count and limit, and an import that loads
neither torch nor DeepSpeed (a task sets OMP_NUM_THREADS and the ranks before they load).

The task's real runs (training through a preemption on the 2-node cluster) are in
tests/test_slurm_submit.py, which submits them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpt_ds import slurm_task

REPO = Path(__file__).resolve().parents[1]


def test_checkpoint_counts_requeues_and_stops_at_the_limit():
    job = slurm_task.TrainingJob(train_argv=("--out", "x"), max_requeues=2)
    first = job.checkpoint()
    assert first.function.requeues == 1 and first.function.train_argv == job.train_argv
    second = first.function.checkpoint()
    assert second.function.requeues == 2
    assert second.function.checkpoint() is None  # submitit then does not requeue
    with pytest.raises(slurm_task.RequeueRefused, match="--max-requeues 2"):
        second.function._requeue(job_env=None, step=7)


def test_the_task_loads_torch_only_after_its_environment_is_set():
    code = ("import sys, gpt_ds.slurm_task, gpt_ds.slurm_submit; "
            "print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"
