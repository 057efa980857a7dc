"""Send launch/train.py's training to a Slurm cluster (or local processes) through submitit.

    python launch/submit.py [--cluster slurm|local] [--nodes N] [--gpus-per-node G] [--tasks-per-node T]
        [--partition P] [--account A] [--qos Q] [--time MINUTES] [--cpus-per-task C] [--mem M]
        [--constraint C] [--exclusive] [--job-name NAME] [--max-requeues K] [--master-port PORT]
        [--signal-delay S] [--dry-run] [--wait] -- <the arguments of launch/train.py>

Everything happens in gpt_ds.slurm_submit (the tasks run gpt_ds.slurm_task); this file only turns
the command line into a `JobSpec`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_ds.errors import UserError, run_cli  # noqa: E402
from gpt_ds.slurm_submit import CLUSTERS, JobSpec, launch  # noqa: E402

PROG = "gpt-ds-submit"


def build_parser() -> argparse.ArgumentParser:
    defaults = JobSpec()
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] -- <the arguments of launch/train.py>",
        description="Run launch/train.py's training on a Slurm cluster (or as local processes) through "
                    "submitit: one task per GPU, checkpoint and requeue on preemption or time limit.",
    )
    p.add_argument("--cluster", choices=CLUSTERS, default=defaults.cluster,
                   help="slurm: submit with sbatch; local: the same job as processes on this machine")
    p.add_argument("--nodes", type=int, default=defaults.nodes, metavar="N")
    p.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node, metavar="G",
                   help="GPUs per node; one training task (rank) per GPU")
    p.add_argument("--tasks-per-node", type=int, default=None, metavar="T",
                   help="ranks per node on CPU-only nodes (default: --gpus-per-node, else 1)")
    p.add_argument("--partition", metavar="P")
    p.add_argument("--account", metavar="A")
    p.add_argument("--qos", metavar="Q")
    p.add_argument("--time", type=int, default=defaults.time_min, metavar="MINUTES",
                   help=f"time limit of each (re)queued run (default {defaults.time_min})")
    p.add_argument("--cpus-per-task", type=int, metavar="C", help="also sets OMP_NUM_THREADS in each task")
    p.add_argument("--mem", metavar="M", help="memory per node in Slurm's syntax: 64G, 500M, 0 (all)")
    p.add_argument("--constraint", metavar="C", help="node features, e.g. h100")
    p.add_argument("--exclusive", action="store_true", help="whole nodes only")
    p.add_argument("--job-name", default=defaults.job_name, metavar="NAME")
    p.add_argument("--max-requeues", type=int, default=defaults.max_requeues, metavar="K",
                   help=f"times a preempted or timed-out job is requeued (default {defaults.max_requeues})")
    p.add_argument("--master-port", type=int, metavar="PORT",
                   help="rendezvous port on the first node (default: derived from the job id)")
    p.add_argument("--signal-delay", type=int, default=defaults.signal_delay_s, metavar="S",
                   help="seconds before the time limit at which Slurm signals the job to checkpoint "
                        f"(default {defaults.signal_delay_s})")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything and print the sbatch script, without submitting")
    p.add_argument("--wait", action="store_true",
                   help="follow the job, show rank 0's progress, exit with the job's outcome")
    return p


def parse(argv: list[str]) -> tuple[JobSpec, list[str], argparse.Namespace]:
    """Split `argv` at `--` into the job's options and the training's arguments."""
    if "--" not in argv:
        if any(arg in ("-h", "--help") for arg in argv):
            build_parser().parse_args(argv)
        raise UserError("give the training's arguments after `--`, e.g. "
                        f"{PROG} --nodes 2 -- --deepspeed_config ds_configs/zero2.json --data DIR --out RUN_DIR")
    split = argv.index("--")
    ns = build_parser().parse_args(argv[:split])
    train_argv = argv[split + 1:]
    spec = JobSpec(cluster=ns.cluster, nodes=ns.nodes, gpus_per_node=ns.gpus_per_node,
                   tasks_per_node=ns.tasks_per_node, partition=ns.partition, account=ns.account, qos=ns.qos,
                   time_min=ns.time, cpus_per_task=ns.cpus_per_task, mem=ns.mem, constraint=ns.constraint,
                   exclusive=ns.exclusive, job_name=ns.job_name, max_requeues=ns.max_requeues,
                   master_port=ns.master_port, signal_delay_s=ns.signal_delay)
    return spec, train_argv, ns


def main(argv: list[str] | None = None) -> NoReturn:
    def run() -> int:
        spec, train_argv, ns = parse(sys.argv[1:] if argv is None else argv)
        return launch(spec, train_argv, dry_run=ns.dry_run, wait=ns.wait)

    run_cli(run, PROG)


if __name__ == "__main__":
    main()
