"""The training loop: a GPT model inside a DeepSpeed engine, from prepared shards to RUN_DIR.

Read `run` top to bottom: check everything (before any work), start the ranks, build the engine,
resume, then per step: learning rate, micro-batches, optimizer step, metrics, eval, checkpoint,
preemption; finally a checkpoint and the consolidated model. The pieces live in their modules:
settings (RunSettings, the DeepSpeed JSON), sampler (batches as a function of the step),
checkpoint (save/resume/keep-K), metrics (TensorBoard, tokens/s, MFU, ETA), distributed, export.

Entry points: `main(argv) -> exit code` (launch/train.py, submitit tasks), `parse_args(argv)`
(validation only, e.g. before submitting a Slurm job), `run(settings) -> TrainResult`.
Exit codes: 0 done, 2 bad input, 3 training diverged (non-finite loss), PREEMPTED_EXIT_CODE (75,
EX_TEMPFAIL: "try again") when a signal stopped the run after its checkpoint was saved.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt_ds import atomic, checkpoint, distributed, metrics, sampler, settings as run_settings
from gpt_ds.errors import UserError
from gpt_ds.settings import RunSettings

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1/SIGUSR2 after a checkpoint; rerun to resume
NONFINITE_PATIENCE = 3  # consecutive non-finite losses before we call the run diverged
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class TrainingDiverged(UserError):
    exit_code = 3


@dataclass
class Plan:
    """What `settings` resolve to, checked before any work."""

    settings: RunSettings
    ds_config: dict[str, Any]
    model_config: Any  # GPTConfig
    train: sampler.TokenWindows
    val: sampler.TokenWindows | None
    resume_from: Path | None
    world_size: int


@dataclass
class TrainState:
    """Progress carried in every checkpoint (with the model config and settings)."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    train_loss: float | None = None  # smoothed (EMA)
    val_loss: float | None = None
    target_step: int | None = None
    target_tokens: int | None = None
    target_seconds: float | None = None

    @property
    def target_reached(self) -> bool:
        return self.target_step is not None


@dataclass
class TrainResult:
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    target_reached: bool
    target_step: int | None
    target_tokens: int | None
    target_seconds: float | None
    train_seconds: float
    preempted: bool
    run_dir: Path
    model_dir: Path | None = None
    checkpoint: Path | None = None


def lr_at(step: int, peak: float, floor: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor` at `decay_steps`, then `floor`.
    A function of the step only: a resumed run follows the very same schedule."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def plan_run(settings: RunSettings, world_size: int) -> Plan:
    """Every check that can fail on bad input, before any rank starts or any file is written."""
    ds_config = run_settings.resolve_ds_config(settings.deepspeed_config, world_size)
    if run_settings.precision_of(ds_config) == "fp16" and not torch.cuda.is_available():
        raise UserError(f"{settings.deepspeed_config} trains in fp16, which needs a GPU; on the CPU use "
                        "ds_configs/zero2.json (bf16)")
    run_settings.peak_lr(settings, ds_config)
    model_config = resolve_model(settings)
    train, val = open_data(settings.data, model_config)
    resume_from = resolve_resume(settings, model_config, world_size)
    return Plan(settings, ds_config, model_config, train, val, resume_from, world_size)


def resolve_model(settings: RunSettings) -> Any:
    """The preset's GPTConfig with --block-size, which may not exceed the preset's context."""
    from gpt_ds.model import PRESETS, config_from_preset

    if settings.model not in PRESETS:
        config_from_preset(settings.model)  # raises the UserError listing the presets
    context = PRESETS[settings.model].block_size
    block_size = settings.block_size or context
    if block_size > context:
        raise UserError(f"--block-size {block_size} exceeds the context of the {settings.model!r} preset "
                        f"({context} positions); use --block-size <= {context}")
    return config_from_preset(settings.model, block_size=block_size)


def open_data(data_dir: str, model_config: Any) -> tuple[sampler.TokenWindows, sampler.TokenWindows | None]:
    """Training windows, and validation windows where the folder has a val split."""
    from gpt_ds import data

    block_size = model_config.block_size
    train = sampler.TokenWindows(data.open_split(data_dir, "train"), block_size, "train")
    if (Path(data_dir) / data.MANIFEST_NAME).is_file():
        manifest = data.load_manifest(data_dir)
        if int(manifest.get("vocab_size", 0)) > model_config.vocab_size:
            raise UserError(f"{data_dir} was tokenized with a vocabulary of {manifest['vocab_size']} tokens, "
                            f"more than the model's {model_config.vocab_size}; prepare it with r50k_base")
        has_val = bool((manifest["splits"].get("val") or {}).get("shards"))
    else:  # llm.c-style shards without a manifest: found by the very names open_split looks for
        has_val = bool(data._foreign_shards(Path(data_dir), "val"))
    val = sampler.TokenWindows(data.open_split(data_dir, "val"), block_size, "val") if has_val else None
    return train, val


def resolve_resume(settings: RunSettings, model_config: Any, world_size: int) -> Path | None:
    """The checkpoint to resume from, checked against this run; nothing in RUN_DIR is touched."""
    run_dir = settings.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder; choose another path")
    if settings.resume == "never":
        checkpoint.check_fresh_run_dir(run_dir)
    resume_from = checkpoint.resolve_resume(settings.resume, run_dir)
    if resume_from is not None:
        saved = checkpoint.read_client_state(resume_from)
        checkpoint.check_same_model(saved, model_config.to_dict(), resume_from)
        if saved.get("world_size") != world_size:
            raise UserError(f"{resume_from} was written by {saved.get('world_size')} ranks, this run has "
                            f"{world_size}; resume with the same number of ranks, or --resume never with a new --out")
    return resume_from


def parse_args(argv: list[str], world_size: int | None = None) -> RunSettings:
    """Parse and fully validate launch/train.py's arguments for `world_size` ranks (default: from the
    environment), without starting anything. Raises UserError (or SystemExit for unknown flags)."""
    settings = run_settings.settings_from_args(argv)
    plan_run(settings, world_size if world_size is not None else distributed.current().world_size)
    return settings


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


def build_engine(plan: Plan) -> Any:
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    from gpt_ds.model import GPT

    ds_logger.setLevel(logging.WARNING)  # our progress bar is the console; DeepSpeed's INFO lines drown it
    # DeepSpeed calls torch.distributed APIs that torch marks deprecated, once per rank: noise to users
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    torch.manual_seed(plan.settings.seed)  # same initial weights on every rank and every fresh run
    model = GPT(plan.model_config)
    model.set_activation_checkpointing(plan.settings.activation_checkpointing)
    groups = model.param_groups(run_settings.weight_decay_of(plan.ds_config))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=plan.ds_config)
    if plan.settings.compile:
        engine.compile()
    return engine


def train_step(engine: Any, plan: Plan, step: int, rank: int) -> float:
    """One optimizer step over gradient_accumulation_steps micro-batches; this rank's mean loss."""
    accum = plan.ds_config["gradient_accumulation_steps"]
    micro = plan.ds_config["train_micro_batch_size_per_gpu"]
    total = 0.0
    for micro_step in range(accum):
        x, y = sampler.train_batch(plan.train, micro, seed=plan.settings.seed, step=step, rank=rank,
                                   micro_step=micro_step)
        _, loss = engine(x.to(engine.device), y.to(engine.device))
        engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
        total += loss.item()
    return total / accum


@torch.no_grad()
def evaluate(engine: Any, plan: Plan, rank: int) -> float:
    """Mean validation loss over the fixed token budget, across all ranks."""
    engine.eval()
    batches = sampler.val_batches(plan.val, plan.settings.eval_tokens, plan.ds_config["train_micro_batch_size_per_gpu"],
                                  rank=rank, world_size=plan.world_size)
    loss_sum, count = 0.0, 0
    for x, y in batches:
        _, loss = engine(x.to(engine.device), y.to(engine.device))
        loss_sum += loss.item() * len(x)
        count += len(x)
    engine.train()
    loss_sum, count = distributed.all_reduce_sum([loss_sum, count])
    return loss_sum / count


def text_sample(engine: Any, plan: Plan, step: int) -> str | None:
    """A short generated text (rank 0), to watch the model learn in TensorBoard."""
    if plan.settings.sample_tokens == 0:
        return None
    from gpt_ds.generate import generate
    from gpt_ds.tokenizer import EOT_TOKEN, get_encoding

    try:
        encoding = get_encoding()
    except UserError:  # no tiktoken cache offline: train on, without samples
        return None
    model = engine.module
    model.eval()
    new = generate(model, [[EOT_TOKEN]], plan.settings.sample_tokens, temperature=0.8, top_k=50,
                   seed=plan.settings.seed + step)[0]
    model.train()
    return encoding.decode([t for t in new if t != EOT_TOKEN])


def client_state(plan: Plan, state: TrainState) -> dict[str, Any]:
    s = plan.settings
    return {
        **vars(state),
        "target_reached": state.target_reached,
        "target_loss": s.target_loss,
        "model": plan.model_config.to_dict(),
        "preset": s.model,
        "settings": s.to_dict(),
        "ds_config": plan.ds_config,
        "world_size": plan.world_size,
        "precision": run_settings.precision_of(plan.ds_config),
        "seed": s.seed,
        "data": str(s.data),
        # Data position and RNG: the sampler and torch's RNG are reseeded from (seed, step, rank)
        # every step, so the step alone restores both exactly.
        "rng": "reseeded every step from (seed, step, rank)",
    }


def write_settings(plan: Plan) -> None:
    run_dir = plan.settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"settings": plan.settings.to_dict(), "ds_config": plan.ds_config, "world_size": plan.world_size,
                "model": plan.model_config.to_dict()}
    atomic.write_text(run_dir / "settings.json", json.dumps(resolved, indent=2))


def start(settings: RunSettings) -> tuple[distributed.DistEnv, Plan, Any, TrainState]:
    """Check everything, start the ranks, build the engine, resume; write RUN_DIR/settings.json."""
    dist_env = distributed.fill_env()
    distributed.share_cpu_threads(dist_env)
    plan = plan_run(settings, dist_env.world_size)
    distributed.init(dist_env)
    engine = build_engine(plan)
    state = TrainState()
    if plan.resume_from is not None:
        saved = checkpoint.load(engine, plan.resume_from)
        state = TrainState(**{k: saved[k] for k in vars(state)})
        if dist_env.is_main:
            print(f"resumed from {plan.resume_from} at step {state.step}{changed_settings(saved['settings'], settings)}",
                  flush=True)
    if dist_env.is_main:
        write_settings(plan)
    return dist_env, plan, engine, state


def model_flops_per_token(plan: Plan) -> int:
    """From a shape-only (meta) model: under ZeRO-3 the engine's own parameters are partitioned."""
    from gpt_ds.model import GPT

    with torch.device("meta"):
        return GPT(plan.model_config).flops_per_token(plan.model_config.block_size)


def changed_settings(saved: dict[str, Any], now: RunSettings) -> str:
    """'; changed: x 1 -> 2' for settings that differ from the checkpoint's (a changed seed, schedule
    length or config means the run no longer matches one made in one go)."""
    routine = {"max_steps", "resume"}  # expected to change between a run and its resume
    changes = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.to_dict().items()
               if k not in routine and saved.get(k) != v]
    saved_decay = saved.get("lr_decay_steps") or saved.get("max_steps")
    if saved_decay != now.decay_steps:
        changes.append(f"learning-rate schedule length {saved_decay} -> {now.decay_steps} "
                       f"(pass --lr-decay-steps {saved_decay} to keep the original schedule)")
    return f"; changed: {', '.join(changes)}" if changes else ""


def open_monitor(plan: Plan, state: TrainState, dist_env: distributed.DistEnv) -> metrics.Monitor:
    settings, precision = plan.settings, run_settings.precision_of(plan.ds_config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    peak_flops, peak_source = metrics.device_peak_flops(dtype)
    monitor = metrics.Monitor(
        settings.run_dir / "tb", is_main=dist_env.is_main, world_size=plan.world_size,
        flops_per_token=model_flops_per_token(plan), peak_flops=peak_flops,
        target_loss=settings.target_loss, target_on_val=plan.val is not None, start_step=state.step,
        max_steps=settings.max_steps, log_interval=settings.log_interval, smoothed_loss=state.train_loss)
    if state.step == 0:
        monitor.tb.hparams({**settings.to_dict(), "world_size": plan.world_size, "precision": precision,
                            "peak_flops_source": peak_source, "train_batch_size": plan.ds_config["train_batch_size"]},
                           {"val/loss": float("nan"), "train/loss": float("nan")})
        monitor.tb.text("run/settings", "```\n" + json.dumps(client_state(plan, state), indent=2) + "\n```", 0)
        monitor.tb.scalars(0, {"target/loss": settings.target_loss})
    return monitor


def run(settings: RunSettings) -> TrainResult:
    """Train in this process (one rank of WORLD_SIZE), from RUN_DIR's checkpoint when resuming."""
    preemption = PreemptionFlag()  # first: a signal during start-up is honoured at the first step
    dist_env, plan, engine, state = start(settings)
    rank, world = dist_env.rank, dist_env.world_size
    monitor = open_monitor(plan, state, dist_env)
    tokens_per_step = plan.ds_config["train_batch_size"] * plan.model_config.block_size
    lr_peak, lr_floor = run_settings.peak_lr(settings, plan.ds_config), run_settings.floor_lr(settings, plan.ds_config)
    fp16 = run_settings.precision_of(plan.ds_config) == "fp16"
    last_saved_step = state.step if plan.resume_from is not None else None
    nonfinite_streak, preempted = 0, False

    def save() -> None:
        nonlocal last_saved_step
        last_saved_step = state.step
        checkpoint.save(engine, settings.run_dir, state.step, client_state(plan, state), settings.keep_checkpoints)

    try:
        while state.step < settings.max_steps and not state.target_reached:
            # -- one optimizer step: the schedule and the randomness are functions of the step
            lr = lr_at(state.step, lr_peak, lr_floor, settings.warmup_steps, settings.decay_steps)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(sampler.step_seed(settings.seed, state.step, rank))
            started = time.perf_counter()
            local_loss = train_step(engine, plan, state.step, rank)
            finite = math.isfinite(local_loss)
            # One collective per step carries every rank's loss, non-finite flag and preemption flag.
            loss_sum, nonfinite_ranks, preempted_ranks = distributed.all_reduce_sum(
                [local_loss if finite else 0.0, float(not finite), float(preemption.raised)])
            seconds = time.perf_counter() - started
            state.step += 1
            state.tokens += tokens_per_step
            state.train_seconds += seconds

            # -- non-finite loss (fp16's scaler skips those steps): if it persists, stop; the last good checkpoint stays
            nonfinite_streak = nonfinite_streak + 1 if nonfinite_ranks else 0
            if nonfinite_streak >= NONFINITE_PATIENCE:
                latest = checkpoint.latest_tag_dir(settings.run_dir / checkpoint.CHECKPOINTS)
                raise TrainingDiverged(
                    f"the loss was not finite for {nonfinite_streak} steps in a row (step {state.step}); the last good "
                    f"checkpoint {latest or '(none)'} is kept. Lower --lr or raise --warmup-steps (or use bf16, "
                    "ds_configs/zero2.json, instead of fp16), then rerun to resume")
            grad_norm = engine.get_global_grad_norm()
            monitor.step(state.step, None if nonfinite_ranks else loss_sum / world, tokens_per_step, seconds,
                         state.tokens, {"train/lr": lr,
                                        "train/grad_norm": None if grad_norm is None else float(grad_norm),
                                        "train/loss_scale": getattr(engine.optimizer, "cur_scale", None) if fp16 else None})
            state.train_loss = monitor.smoothed_loss

            # -- evaluation and the loss target (on val loss; on the smoothed train loss without a val split)
            if plan.val is not None and (state.step % settings.eval_interval == 0 or state.step == settings.max_steps):
                state.val_loss = evaluate(engine, plan, rank)
                monitor.evaluation(state.step, state.val_loss, text_sample(engine, plan, state.step) if rank == 0 else None)
            target_metric = state.val_loss if plan.val is not None else state.train_loss
            if settings.target_loss is not None and not nonfinite_streak and target_metric is not None \
                    and target_metric <= settings.target_loss:
                state.target_step, state.target_tokens, state.target_seconds = state.step, state.tokens, state.train_seconds
                monitor.tb.scalars(state.step, {"target/step": state.step, "target/tokens": state.tokens})

            # -- checkpoints, and preemption: all ranks agreed above, so all save and stop at this same step
            if preempted_ranks:
                save()
                preempted = True
                break
            if state.step % settings.save_interval == 0 and not nonfinite_streak:
                save()
        if last_saved_step != state.step:
            save()
    finally:
        preemption.restore()
        monitor.close()

    result = TrainResult(**vars(state), target_reached=state.target_reached, preempted=preempted,
                         run_dir=settings.run_dir,
                         checkpoint=settings.run_dir / checkpoint.CHECKPOINTS / checkpoint.tag_for(state.step))
    if dist_env.is_main and not preempted:
        from gpt_ds.export import export_run

        result.model_dir = export_run(settings.run_dir, tag=checkpoint.tag_for(state.step))
    if dist_env.is_main:
        print(summary_line(result, monitor.throughput, world), flush=True)
    return result


def summary_line(result: TrainResult, throughput: metrics.Throughput, world: int) -> str:
    losses = f"train loss {result.train_loss:.4f}" if result.train_loss is not None else "train loss n/a"
    if result.val_loss is not None:
        losses += f", val loss {result.val_loss:.4f}"
    if result.preempted:
        outcome = f"preempted: checkpoint {result.checkpoint} saved; run the same command to resume"
    elif result.target_reached:
        outcome = (f"target reached at step {result.target_step} ({result.target_tokens:,} tokens, "
                   f"{result.target_seconds:.1f}s); model: {result.model_dir}")
    else:
        outcome = f"model: {result.model_dir}"
    return (f"done: step {result.step}, {result.tokens:,} tokens, {losses}, {result.train_seconds:.1f}s training, "
            f"{throughput.tokens_per_sec:,.0f} tok/s, MFU {throughput.mfu(world):.1%}; {outcome}")


def main(argv: list[str] | None = None) -> int:
    """Train in this process; 0 when done, PREEMPTED_EXIT_CODE when stopped by a signal after saving."""
    import sys

    # Only the values here: `run` makes the full plan (data, resume, DeepSpeed JSON) itself, before any work.
    settings = run_settings.settings_from_args(sys.argv[1:] if argv is None else argv)
    result = run(settings)
    return PREEMPTED_EXIT_CODE if result.preempted else 0
