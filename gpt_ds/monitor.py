"""The run's monitor: what training reports and the policies that watch it.

`Monitor` writes the run's start records (hyper-parameters, the settings text, the target line),
each step's scalars (loss, lr, grad norm, loss scale, tokens/s, MFU, memory, ETA) to TensorBoard and
the progress bar (rank 0), the evaluations (val loss, bits per byte) and their text samples; it
decides when the loss target is met (`check_target`: on the validation loss, or on the smoothed
training loss without a val split) and stops a run whose loss stays non-finite (`TrainingDiverged`,
exit 3, the last good checkpoint kept).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from gpt_ds import tags
from gpt_ds.errors import UserError
from gpt_ds.metrics import LossCurve, PeakMemory, TensorBoard, Throughput
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir

NONFINITE_PATIENCE = 3  # consecutive non-finite losses before the run counts as diverged


class TrainingDiverged(UserError):
    exit_code = 3


class Monitor:
    """Reports one run (TensorBoard and the progress bar on rank 0) and watches its loss."""

    def __init__(self, run_dir: RunDir, *, is_main: bool, world_size: int, flops_per_token: float,
                 peak_flops: float, target_loss: float | None, target_on_val: bool, record: RunRecord,
                 max_steps: int, log_interval: int, last_checkpoint: Callable[[], Path | None] = lambda: None) -> None:
        self.run_dir = run_dir
        self.last_checkpoint = last_checkpoint  # the checkpoint a diverged run keeps, named in its error
        self.world_size = world_size
        self.target_loss = target_loss
        self.target_on_val = target_on_val
        self.log_interval = log_interval
        self.nonfinite_streak = 0
        self.throughput = Throughput(flops_per_token, peak_flops)
        self.memory = PeakMemory()
        self.train_curve = LossCurve(ema=record.train_loss)
        # The ETA fits the curve of the metric the target is checked on.
        self.target_curve = LossCurve() if target_on_val else self.train_curve
        # A resumed run logs from its step + 1; what an interrupted run logged after its checkpoint is dropped.
        self.tb = TensorBoard(run_dir.tb, enabled=is_main, purge_step=record.step + 1 if record.step else None)
        self.progress = None
        if is_main:
            from tqdm import tqdm

            self.progress = tqdm(total=max_steps, initial=record.step, desc="train", unit="step", dynamic_ncols=True)

    @property
    def healthy(self) -> bool:
        """The last step's loss was finite on every rank."""
        return self.nonfinite_streak == 0

    def start(self, hparams: dict[str, Any], settings_text: str) -> None:
        """The records of a fresh run: hyper-parameters, the settings as text, the target as a line."""
        self.tb.hparams(hparams, {tags.VAL_LOSS: float("nan"), tags.VAL_BPB: float("nan"), tags.TRAIN_LOSS: float("nan")})
        self.tb.text(tags.SETTINGS, "```\n" + settings_text + "\n```", 0)
        self.tb.scalars(0, {tags.TARGET_LOSS: self.target_loss})

    def eta(self) -> tuple[float | None, float | None]:
        """Steps and seconds still needed to reach the target, from the recent curve (None: unknown)."""
        steps = self.target_curve.eta_steps(self.target_loss)
        return steps, (steps * self.throughput.seconds_per_step if steps is not None else None)

    def step(self, record: RunRecord, loss: float | None, tokens: int, seconds: float,
             extra: dict[str, float | None], memory_gib: list[float] | None = None) -> None:
        """Account the step `record` has just counted; `loss` is the mean over ranks, None when it was not
        finite on some rank. `extra`: lr, grad norm, loss scale; `memory_gib`: each rank's peak memory.
        Raises TrainingDiverged when the loss has not been finite for NONFINITE_PATIENCE steps in a row."""
        memory = self.memory.add(memory_gib or [])
        self.nonfinite_streak = 0 if loss is not None else self.nonfinite_streak + 1
        if self.nonfinite_streak >= NONFINITE_PATIENCE:
            raise TrainingDiverged(
                f"the loss was not finite for {self.nonfinite_streak} steps in a row (step {record.step}); the last "
                f"good checkpoint {self.last_checkpoint() or '(none)'} is kept. Lower "
                "--lr or raise --warmup-steps (or use bf16, ds_configs/zero2.json, instead of fp16), then rerun to resume")
        self.throughput.add(tokens, seconds)
        if loss is not None:
            self.train_curve.add(record.step, loss)
        record.train_loss = self.train_curve.ema
        eta_steps, eta_seconds = self.eta()
        if record.step % self.log_interval == 0 or record.step == 1:
            self.tb.scalars(record.step, {
                tags.TRAIN_LOSS: loss,
                tags.TRAIN_LOSS_SMOOTHED: self.train_curve.ema,
                tags.TOKENS_PER_SEC: self.throughput.tokens_per_sec,
                tags.MFU: self.throughput.mfu(self.world_size),
                tags.STEP_TIME: self.throughput.seconds_per_step,
                **memory,
                tags.TOKENS: record.tokens,
                tags.SECONDS: record.train_seconds,
                tags.ETA_STEPS: eta_steps,
                tags.ETA_SECONDS: eta_seconds,
                **extra,
            })
        if self.progress is not None:
            ema = self.train_curve.ema
            self.progress.update(1)
            self.progress.set_postfix(loss="nan" if ema is None else f"{ema:.3f}",
                                      tok_s=f"{self.throughput.tokens_per_sec:,.0f}",
                                      eta=_duration(eta_seconds), refresh=False)

    def evaluation(self, step: int, val_loss: float | None, sample: str | None, val_bpb: float | None = None,
                   eval_tasks: dict[str, dict[str, float]] | None = None) -> None:
        """An evaluation's figures (val_loss, val_bpb: None when unknown; eval_tasks: --eval-tasks' figures)
        and its text sample."""
        if self.target_on_val and val_loss is not None:
            self.target_curve.add(step, val_loss)
        self.tb.scalars(step, {tags.VAL_LOSS: val_loss, tags.VAL_BPB: val_bpb})
        for task, figures in (eval_tasks or {}).items():
            self.tb.scalars(step, {tags.eval_acc(task): figures["acc"], tags.eval_acc_norm(task): figures["acc_norm"]})
        if sample is not None:
            self.tb.text(tags.SAMPLE, sample, step)
        self.tb.flush()

    def check_target(self, record: RunRecord) -> bool:
        """Whether the run has met its target; the first time, record when (step, tokens, seconds)."""
        if record.target_reached:
            return True
        metric = record.val_loss if self.target_on_val else record.train_loss
        if self.target_loss is None or not self.healthy or metric is None or metric > self.target_loss:
            return False
        record.reach_target()
        self.tb.scalars(record.step, {tags.TARGET_STEP: record.step, tags.TARGET_TOKENS: record.tokens})
        return True

    def summary(self, record: RunRecord, outcome: str) -> str:
        """The run's one closing line."""
        losses = f"train loss {record.train_loss:.4f}" if record.train_loss is not None else "train loss n/a"
        if record.val_loss is not None:
            losses += f", val loss {record.val_loss:.4f}"
        if record.val_bpb is not None:
            losses += f", val bpb {record.val_bpb:.4f}"
        for task, figures in record.eval_tasks.items():
            losses += f", {task} acc {figures['acc']:.4f} acc_norm {figures['acc_norm']:.4f}"
        return (f"done: step {record.step}, {record.tokens:,} tokens, {losses}, {record.train_seconds:.1f}s "
                f"training, {self.throughput.tokens_per_sec:,.0f} tok/s, MFU {self.throughput.mfu(self.world_size):.1%}"
                f"{self.memory.summary()}; {outcome}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.tb.close()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f}d"
