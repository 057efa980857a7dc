"""Training measurements: the TensorBoard writer (rank 0), throughput and MFU against a stated peak,
the ETA-to-target fit, and reading a run's TensorBoard scalars back (for tests and the app).

MFU = achieved model FLOPs / the device's peak. Model FLOPs per token come from
`GPT.flops_per_token` (6N + attention); the peak from a table of accelerators' dense bf16/fp16
tensor-core figures (gpt_ds.hardware), or `--peak-tflops`. A CPU has no datasheet figure, so there the peak is measured
once per machine, dtype and thread count with a large matmul (the best of several rounds, so a busy
moment does not lower it) and cached in GPT_DS_CACHE_DIR (default ~/.cache/gpt-ds): the same run then
reports the same MFU on a quiet machine and a busy one, and MFU on the CPU reads "fraction of the
matmul speed this process can reach".
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt_ds import atomic, json_object, tags
from gpt_ds.cache import cache_dir
from gpt_ds.hardware import gpu_peak_flops

CPU_PEAK_MATMUL = 2048  # the measured peak's matmul size: large enough to reach the kernels' plateau
CPU_PEAK_ROUNDS = 5


def measure_matmul_flops(dtype: torch.dtype, size: int = CPU_PEAK_MATMUL, rounds: int = CPU_PEAK_ROUNDS,
                         device: str = "cpu") -> float:
    """FLOP/s of a size x size matmul in `dtype` with the current torch threads: the best of `rounds`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up: the first call allocates and picks kernels
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_peak_flops(dtype: torch.dtype) -> tuple[float, str]:
    """This CPU's matmul peak in `dtype` with this process's threads, measured once and cached."""
    threads = torch.get_num_threads()
    key = f"{_cpu_name()} | {str(dtype).removeprefix('torch.')} | {threads} threads"
    path = cache_dir() / "peak_flops.json"
    cached = json_object.read_or_none(path) or {}
    if isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return float(cached[key]), f"CPU {key}: measured {CPU_PEAK_MATMUL}^3 matmul, cached in {path}"
    peak = measure_matmul_flops(dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps({**cached, key: peak}, indent=2, sort_keys=True))
        where = f"cached in {path}"
    except OSError as err:  # a read-only home: measure again next time
        where = f"not cached ({err.strerror})"
    return peak, f"CPU {key}: measured {CPU_PEAK_MATMUL}^3 matmul now, {where}"


def device_peak_flops(dtype: torch.dtype, given_tflops: float | None = None) -> tuple[float, str]:
    """Peak FLOP/s of this process's device for `dtype`, and where the figure comes from."""
    if given_tflops is not None:
        return given_tflops * 1e12, "given with --peak-tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = gpu_peak_flops(name)
        if peak is not None:
            return peak, f"{name}: dense bf16/fp16 datasheet figure"
        return measure_matmul_flops(dtype, size=8192, device="cuda"), f"{name}: measured 8192^3 matmul (not in the table)"
    return cpu_peak_flops(dtype)


def memory_gib() -> float:
    """Peak accelerator memory allocated, or this process's resident memory on the CPU, in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


class PeakMemory:
    """Every rank's peak memory (memory_gib, agreed each step): TensorBoard scalars of a step, and the
    run's peak and the rank that reached it for the summary line."""

    def __init__(self) -> None:
        self.peak: float | None = None
        self.peak_rank = 0

    def add(self, per_rank: list[float]) -> dict[str, float]:
        """The step's scalars: the largest over the ranks, and with several ranks each rank's own."""
        if not per_rank:
            return {}
        top = max(range(len(per_rank)), key=per_rank.__getitem__)
        if self.peak is None or per_rank[top] > self.peak:
            self.peak, self.peak_rank = per_rank[top], top
        scalars = {tags.MEMORY_GIB: per_rank[top]}
        if len(per_rank) > 1:
            scalars.update({tags.memory_of_rank(rank): value for rank, value in enumerate(per_rank)})
        return scalars

    def summary(self) -> str:
        """', peak memory 1.23 GiB (rank 1)' ('' before any step)."""
        return "" if self.peak is None else f", peak memory {self.peak:.2f} GiB (rank {self.peak_rank})"


def steps_to_target(steps: list[int], losses: list[float], target: float) -> float | None:
    """Steps still needed until the loss reaches `target`, extrapolating the recent curve.

    Fits loss = a + b*ln(step) (least squares) on the given recent points: a loss curve is close to
    a straight line in log-step over a window, and the fit has two parameters, so it stays stable
    on noisy points. None when the curve does not fall (b >= 0) or there are too few points.
    """
    if len(steps) < 3 or min(steps) <= 0:
        return None
    if losses[-1] <= target:
        return 0.0
    b, a = np.polyfit(np.log(np.asarray(steps, dtype=np.float64)), np.asarray(losses, dtype=np.float64), 1)
    if not b < 0:
        return None
    reach = math.exp(min(50.0, (target - a) / b))  # step at which the fitted line crosses the target
    return max(0.0, reach - steps[-1])


class LossCurve:
    """Recent (step, loss) points for the ETA fit, and an exponential moving average of the loss."""

    def __init__(self, window: int = 200, smoothing: float = 0.9, ema: float | None = None) -> None:
        self.points: deque[tuple[int, float]] = deque(maxlen=window)
        self.smoothing = smoothing
        self.ema = ema

    def add(self, step: int, loss: float) -> None:
        self.points.append((step, loss))
        self.ema = loss if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * loss

    def eta_steps(self, target: float | None) -> float | None:
        if target is None or not self.points:
            return None
        # the curve as it is now: the latter half of the points, but at least 4 (evals are few)
        recent = list(self.points)[-max(4, len(self.points) // 2) :]
        return steps_to_target([s for s, _ in recent], [l for _, l in recent], target)


class Throughput:
    """Tokens per second and MFU over the last few steps."""

    def __init__(self, flops_per_token: float, peak_flops: float, window: int = 20) -> None:
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)

    def add(self, tokens: int, seconds: float) -> None:
        self.samples.append((tokens, seconds))

    @property
    def tokens_per_sec(self) -> float:
        seconds = sum(s for _, s in self.samples)
        return sum(t for t, _ in self.samples) / seconds if seconds > 0 else 0.0

    def mfu(self, world_size: int) -> float:
        """Model FLOPs utilisation of the devices (tokens/s counts all ranks' tokens)."""
        return self.tokens_per_sec * self.flops_per_token / (self.peak_flops * world_size)

    @property
    def seconds_per_step(self) -> float:
        return sum(s for _, s in self.samples) / len(self.samples) if self.samples else 0.0


class TensorBoard:
    """The run's TensorBoard log, written by rank 0 only (other ranks get a writer that does nothing).

    purge_step: on resume, events at or after purge_step (the first step the resumed run logs)
    left by the interrupted run are dropped by TensorBoard, so the curve has no duplicated steps.
    """

    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            if purge_step is not None:
                _after_existing_logs(Path(log_dir))
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Hyper-parameters into this same log (SummaryWriter.add_hparams would open a second run)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        for summary in hparams_summary(clean, metrics):
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _after_existing_logs(log_dir: Path, longest_s: float = 2.0) -> None:
    """Wait (at most `longest_s`) until the clock's second is past that of every event file in log_dir. TensorBoard
    reads the files, and applies a resume's purge, in name order; a name starts with its second, then host, pid and
    a per-process count, which sorts "10" before "9": in one second of one process a resumed log could come first."""
    seconds = [int(part[3]) for part in (path.name.split(".") for path in log_dir.glob("events.out.tfevents.*"))
               if len(part) > 3 and part[3].isdigit()]
    deadline = time.monotonic() + longest_s
    while seconds and int(time.time()) <= max(seconds) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a TensorBoard log folder: tag -> [(step, value), ...] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def read_texts(log_dir: str | Path, tag: str) -> list[tuple[int, str]]:
    """The text entries (e.g. generated samples) of `tag`: [(step, text), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags().get("tensors", [])
    tag = tag if tag in tags else f"{tag}/text_summary"  # SummaryWriter.add_text's own suffix
    if tag not in tags:
        return []
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(tag)]
