"""The training loop: a GPT model inside a DeepSpeed engine, from prepared shards to RUN_DIR.

`run` reads like a table of contents: start (plan every check, start the ranks, lock RUN_DIR, build the
engine, resume), then per step: learning rate, micro-batches and the one agreed all-reduce (`agreed_step`),
monitor, validation, target, checkpoint; finally the consolidated model. Each component decides its own
cadence: plan (gpt_ds.plan), the engine and its optimizers (gpt_ds.engine), Schedule (gpt_ds.schedule),
Monitor with the target and the non-finite guard (gpt_ds.monitor), Validator (gpt_ds.validate),
Checkpointer (gpt_ds.checkpoint), RunRecord (gpt_ds.record), batches as a function of the step
(gpt_ds.sampler, gpt_ds.prefetch), the export (gpt_ds.export).

Entry points: `main(argv) -> exit code` (launch/train.py, submitit tasks), `parse_args(argv)`
(validation only, e.g. before submitting a Slurm job), `run(settings) -> TrainResult`.
Exit codes: 0 done, 2 bad input, 3 training diverged (non-finite loss), PREEMPTED_EXIT_CODE (75,
EX_TEMPFAIL: "try again") when a signal stopped the run after its checkpoint was saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from gpt_ds import atomic, checkpoint, distributed, host_memory, metrics, sampler, settings as run_settings, tags
from gpt_ds.checkpoint import Checkpointer
from gpt_ds.engine import build_engine, set_lr
from gpt_ds.errors import UserError
from gpt_ds.lock import FolderLock
from gpt_ds.monitor import Monitor
from gpt_ds.plan import Plan, changed_settings, plan_run
from gpt_ds.prefetch import Prefetcher
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir
from gpt_ds.settings import RunSettings
from gpt_ds.validate import Validator

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1/SIGUSR2 after a checkpoint; rerun to resume
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class TrainResult:
    """How `run` ended: the run's record, and where its checkpoint and model are."""

    record: RunRecord
    run_dir: RunDir
    preempted: bool
    checkpoint: Path | None = None
    model_dir: Path | None = None


@dataclass
class Started:
    """What `start` hands the loop: where this rank stands, the plan, the engine (resumed), the record."""

    dist_env: distributed.DistEnv
    plan: Plan
    engine: Any
    record: RunRecord


def run(settings: RunSettings) -> TrainResult:
    """Train in this process (one rank of WORLD_SIZE), from RUN_DIR's checkpoint when resuming."""
    preemption = PreemptionFlag()  # first: a signal during start-up is honoured at the first step
    with start(settings) as started:  # rank 0 holds RUN_DIR's lock until this block ends, however it ends
        dist_env, plan, engine, record = started.dist_env, started.plan, started.engine, started.record
        monitor = open_monitor(plan, record, dist_env)
        checkpointer = Checkpointer(engine, plan.run_dir, settings.save_interval, settings.keep_checkpoints,
                                    last_saved=record.step if plan.resume_from is not None else None)
        validator = Validator(plan, dist_env.rank)
        batches = prefetcher(plan, dist_env.rank, engine.device)
        watchdog = distributed.Watchdog(settings.collective_timeout, dist_env.rank, dist_env.world_size)
        done, preempted = record.step >= settings.max_steps or record.target_reached, False
        stepping = record.step + 1  # the step a failure is reported at
        try:
            with distributed.peers_lost_as_errors(dist_env.rank):  # a lost peer: one line, not a traceback
                while not done:
                    watchdog.kick()  # each iteration (step, evaluation, checkpoint) within --collective-timeout
                    stepping = record.step + 1
                    lr = set_lr(engine, plan.schedule.lr(record.step), plan.muon_lr_ratio)
                    (loss, preempted, memory_gib), seconds = agreed_step(engine, batches, record.step, settings.seed,
                                                                         dist_env.rank, preemption.raised)
                    record.advance(plan.tokens_per_step, seconds)
                    monitor.step(record, loss, plan.tokens_per_step, seconds,
                                 {tags.LR: lr, **engine_stats(engine, plan)}, memory_gib)
                    last_step = record.step >= settings.max_steps
                    if validator.should_validate(record.step, last_step=last_step):
                        record.val_loss, record.val_bpb = validator.loss(engine)
                        record.eval_tasks = validator.tasks(engine)
                        sample = validator.text_sample(engine.module, record.step)  # every rank: ZeRO-3 gathers
                        monitor.evaluation(record.step, record.val_loss, sample, record.val_bpb, record.eval_tasks)
                    done = monitor.check_target(record) or last_step or preempted
                    if monitor.healthy or done:
                        checkpointer.save(record.step, client_state(plan, record), last_step=done)
        except torch.cuda.OutOfMemoryError as err:  # at the first step, typically: which knob to turn, not a traceback
            raise plan.out_of_memory(stepping, err) from err
        finally:
            watchdog.stop()
            preemption.restore()
            monitor.close()
        return finish(plan, record, preempted, dist_env, monitor)


@contextlib.contextmanager
def start(settings: RunSettings) -> Iterator[Started]:
    """Check everything, start the ranks, lock RUN_DIR (for the block's length), build the engine, resume;
    write RUN_DIR/settings.json."""
    dist_env = distributed.fill_env()
    distributed.share_cpu_threads(dist_env)
    host_memory.keep_freed_memory()  # before the engine's first large blocks
    try:
        plan = plan_run(settings, dist_env.world_size)
    except UserError as err:
        err.every_rank = True  # the same files and flags on every rank: the same verdict, printed once
        raise
    with contextlib.ExitStack() as run_lock:
        with distributed.peers_lost_as_errors(dist_env.rank):  # a lost peer: one line, not a traceback
            distributed.init(dist_env, settings.collective_timeout)
            lock_run_dir(plan, dist_env, run_lock)
            try:  # the weights and optimizer states alone may not fit: which knob to turn, not a traceback
                engine = build_engine(plan)
                saved = None if plan.resume_from is None else checkpoint.load(engine, plan.resume_from,
                                                                              reshard=plan.reshard)
            except torch.cuda.OutOfMemoryError as err:
                raise plan.out_of_memory(None, err) from err
        record = resumed_record(plan, saved, dist_env.is_main)
        if dist_env.is_main:  # RUN_DIR exists: rank 0 made it to hold its lock
            atomic.write_text(plan.run_dir.settings, json.dumps(client_state(plan, record), indent=2))
        yield Started(dist_env, plan, engine, record)


def lock_run_dir(plan: Plan, dist_env: distributed.DistEnv, held: contextlib.ExitStack) -> None:
    """One run per RUN_DIR: rank 0 takes its lock into `held`, which releases it when its block ends (the kernel
    drops it if the process dies). All ranks learn the outcome in one all-reduce, so a refused run stops everywhere."""
    distributed.agreed(lambda: held.enter_context(FolderLock(plan.run_dir.root, "training run")),
                       here=dist_env.is_main, what=f"the lock of {plan.run_dir}")


def resumed_record(plan: Plan, saved: dict[str, Any] | None, is_main: bool) -> RunRecord:
    """The run's record: the checkpoint's (`saved` client state; rank 0 says what changed since) or a fresh
    one, with what the plan says the run is."""
    record = RunRecord()
    if saved is not None:
        record = RunRecord.from_dict(saved)
        if is_main:
            print(f"resumed from {plan.resume_from} at step {record.step}"
                  f"{changed_settings(saved['settings'], plan.settings)}", flush=True)
    return dataclasses.replace(record, **plan.record_fields())


def finish(plan: Plan, record: RunRecord, preempted: bool, dist_env: distributed.DistEnv,
           monitor: Monitor) -> TrainResult:
    """Consolidate the model (rank 0, unless preempted) and print the summary line."""
    result = TrainResult(record, plan.run_dir, preempted,
                         checkpoint=plan.run_dir.checkpoints / checkpoint.tag_for(record.step))
    if dist_env.is_main and not preempted:
        from gpt_ds.export import export_run

        result.model_dir = export_run(plan.run_dir, tag=checkpoint.tag_for(record.step), verify=False)
    if dist_env.is_main:
        if preempted:
            outcome = f"preempted: checkpoint {result.checkpoint} saved; run the same command to resume"
        elif record.target_reached:
            outcome = (f"target reached at step {record.target_step} ({record.target_tokens:,} tokens, "
                       f"{record.target_seconds:.1f}s); model: {result.model_dir}")
        else:
            outcome = f"model: {result.model_dir}"
        print(monitor.summary(record, outcome), flush=True)
    return result


def client_state(plan: Plan, record: RunRecord) -> dict[str, Any]:
    """What every checkpoint carries beside the weights: the record, and what the run is. The data
    position and the RNG need no saving: the batch is a function of (seed, step) and torch is reseeded
    from (seed, step, rank) at every step; `data_position` says where the stream stands (windows, tokens, epoch)."""
    return {**plan.identity(), **record.to_dict(), "data_position": plan.stream.position(record.step),
            "rng": "reseeded every step from (seed, step, rank)"}


def prefetcher(plan: Plan, rank: int, device: torch.device) -> Prefetcher:
    """This rank's micro-batches of the plan's stream on `device`, one ahead (gpt_ds.prefetch)."""
    return Prefetcher(plan.stream, micro_batch=plan.micro_batch, accumulation=plan.accumulation, rank=rank,
                      world_size=plan.world_size, device=device)


def agreed_step(engine: Any, batches: Prefetcher, step: int, seed: int, rank: int,
                preempt: bool) -> tuple[Agreement, float]:
    """Optimizer step `step` + 1, agreed by all ranks (`agree`), and the seconds it took, its one host read
    included. torch is reseeded from (seed, step, rank) first, so dropout and any other randomness are
    functions of the step too, and a resume needs no saved RNG state."""
    torch.manual_seed(sampler.step_seed(seed, step, rank))
    started = time.perf_counter()
    agreement = agree(train_step(engine, batches, step), preempt)
    return agreement, time.perf_counter() - started


def train_step(engine: Any, batches: Prefetcher, step: int) -> torch.Tensor:
    """One optimizer step over gradient_accumulation_steps micro-batches; this rank's mean loss as a
    0-dim tensor on the device. Nothing here reads a value back to the host: the micro-batches'
    losses are summed on the device, and `agree` reads the step's figures once. The next micro-batch
    is on its way to the device while this one computes (gpt_ds.prefetch)."""
    total = None
    divisor = batches.loss_divisor(step)  # a fine-tune: the global batch's trained tokens (gpt_ds.prefetch)
    for micro_step in range(batches.accumulation):
        x, y = batches.get(step, micro_step)
        _, loss = engine(x, y) if divisor is None else engine(x, y, loss_divisor=divisor)
        batches.prefetch_after(step, micro_step)  # host work while the device runs the forward
        engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
        total = loss.detach().float() if total is None else total + loss.detach().float()
    return total / batches.accumulation


class Agreement(NamedTuple):
    """What all ranks agree on after a step: the mean loss (None: not finite on some rank), whether any
    rank was asked to stop, and every rank's peak device memory (GiB; resident memory on the CPU)."""

    loss: float | None
    preempted: bool
    memory_gib: list[float]


def agree(local_loss: torch.Tensor | float, preempt: bool) -> Agreement:
    """The step's one collective and its one host sync: the loss summed over ranks with a count of the
    ranks where it was not finite, the preemption flag, and each rank's memory in its own slot, so that
    all ranks take the same decisions. Built on the device and read back together after the all-reduce."""
    dist_env = distributed.current()
    loss = torch.as_tensor(local_loss).to(distributed.device(), torch.float64)
    finite = torch.isfinite(loss)
    memory = torch.zeros(dist_env.world_size, dtype=loss.dtype, device=loss.device)
    memory[dist_env.rank] = metrics.memory_gib()
    values = torch.cat([torch.stack([torch.where(finite, loss, torch.zeros_like(loss)), (~finite).to(loss.dtype),
                                     torch.full_like(loss, float(preempt))]), memory])
    loss_sum, nonfinite_ranks, preempted_ranks, *memory_gib = distributed.all_reduce_sum(values)
    return Agreement(None if nonfinite_ranks else loss_sum / dist_env.world_size, bool(preempted_ranks), memory_gib)


def engine_stats(engine: Any, plan: Plan) -> dict[str, float | None]:
    """The engine's own figures of the last step: the gradient norm, and fp16's dynamic loss scale."""
    grad_norm = engine.get_global_grad_norm()
    scale = getattr(engine.optimizer, "cur_scale", None) if plan.precision == "fp16" else None
    return {tags.GRAD_NORM: None if grad_norm is None else float(grad_norm),
            tags.LOSS_SCALE: None if scale is None else float(scale)}


def open_monitor(plan: Plan, record: RunRecord, dist_env: distributed.DistEnv) -> Monitor:
    from gpt_ds.model import GPT

    settings = plan.settings
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision, torch.float32)
    peak_flops, peak_source = metrics.device_peak_flops(dtype, settings.peak_tflops)
    with torch.device("meta"):  # shapes only: under ZeRO-3 the engine's own parameters are partitioned
        flops_per_token = GPT(plan.model_config).flops_per_token(plan.seq_len)
    monitor = Monitor(plan.run_dir, is_main=dist_env.is_main, world_size=plan.world_size,
                      flops_per_token=flops_per_token, peak_flops=peak_flops, target_loss=settings.target_loss,
                      target_on_val=plan.val is not None, record=record, max_steps=settings.max_steps,
                      log_interval=settings.log_interval,
                      last_checkpoint=lambda: checkpoint.latest_tag_dir(plan.run_dir.checkpoints))
    if dist_env.is_main:
        print(f"MFU against a peak of {peak_flops / 1e12:.2f} TFLOP/s per rank ({peak_source})", flush=True)
    if record.step == 0:
        monitor.start({**settings.to_dict(), "world_size": plan.world_size, "precision": plan.precision,
                       "peak_flops_source": peak_source, "train_batch_size": plan.ds_config["train_batch_size"]},
                      json.dumps(client_state(plan, record), indent=2))
    return monitor


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1/SIGUSR2; the loop checks it (agreed by all ranks) at step boundaries."""

    def __init__(self) -> None:
        self.raised = False
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a run in a thread cannot be preempted
        for sig in PREEMPTION_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def parse_args(argv: list[str], world_size: int | None = None, cuda: bool | None = None) -> RunSettings:
    """Parse and fully validate launch/train.py's arguments for `world_size` ranks (default: from the
    environment) on GPUs or not (`cuda`, default: this machine's), without starting anything. Raises UserError
    (or SystemExit for unknown flags)."""
    settings = run_settings.settings_from_args(argv)
    plan_run(settings, world_size if world_size is not None else distributed.current().world_size, cuda=cuda)
    return settings


def main(argv: list[str] | None = None) -> int:
    """Train in this process; 0 when done, PREEMPTED_EXIT_CODE when stopped by a signal after saving."""
    import sys

    # Only the values here: `run` makes the full plan (data, resume, DeepSpeed JSON) itself, before any work.
    try:
        settings = run_settings.settings_from_args(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        err.every_rank = True
        raise
    result = run(settings)
    return PREEMPTED_EXIT_CODE if result.preempted else 0
