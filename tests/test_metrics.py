"""gpt_ds.metrics: the ETA fit, throughput/MFU arithmetic, the peak table, and real TensorBoard
files written by our writer and read back with EventAccumulator (including purge_step on resume)."""

from __future__ import annotations

import math

import pytest
import torch

from gpt_ds import hardware, metrics


def test_eta_fit_recovers_a_log_linear_curve():
    steps = list(range(100, 201, 10))
    losses = [8.0 - 0.5 * math.log(s) for s in steps]
    # 8 - 0.5 ln(s) = 4.5  <=>  s = e^7 ~ 1096.6
    assert metrics.steps_to_target(steps, losses, 4.5) == pytest.approx(math.exp(7) - 200, rel=1e-6)
    assert metrics.steps_to_target(steps, losses, 6.0) == 0.0  # already below
    assert metrics.steps_to_target(steps, [5.0] * len(steps), 4.0) is None  # flat: no estimate
    assert metrics.steps_to_target(steps[:2], losses[:2], 4.5) is None  # too few points


def test_loss_curve_smooths_and_estimates():
    curve = metrics.LossCurve(smoothing=0.5)
    for step, loss in [(1, 10.0), (2, 8.0), (3, 7.0), (4, 6.5), (5, 6.2)]:
        curve.add(step, loss)
    assert curve.ema == pytest.approx(((10 * 0.5 + 8 * 0.5) * 0.5 + 7 * 0.5) * 0.5 * 0.5 + 6.5 * 0.25 + 6.2 * 0.5)
    assert curve.eta_steps(None) is None and curve.eta_steps(6.0) > 0


def test_throughput_and_mfu():
    throughput = metrics.Throughput(flops_per_token=1e6, peak_flops=1e12)
    throughput.add(tokens=1000, seconds=0.5)
    throughput.add(tokens=3000, seconds=1.5)
    assert throughput.tokens_per_sec == pytest.approx(2000)
    assert throughput.mfu(world_size=2) == pytest.approx(2000 * 1e6 / 2e12)
    assert throughput.seconds_per_step == pytest.approx(1.0)


def test_peak_table_and_cpu_measurement():
    assert hardware.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert hardware.gpu_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert hardware.gpu_peak_flops("Some Unknown Device") is None
    assert metrics.measure_matmul_flops(torch.float32, size=128, rounds=2) > 1e7


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_DS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = metrics.measure_matmul_flops
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda dtype: calls.append(dtype) or real(dtype, size=64))
    first, source = metrics.device_peak_flops(torch.float32)
    assert "measured" in source and "cached in" in source and calls == [torch.float32]
    again, source_again = metrics.device_peak_flops(torch.float32)
    assert again == first and calls == [torch.float32] and "cached in" in source_again  # no second measurement
    metrics.device_peak_flops(torch.bfloat16)
    assert calls == [torch.float32, torch.bfloat16]  # one figure per dtype
    assert metrics.device_peak_flops(torch.float32, given_tflops=2.5) == (2.5e12, "given with --peak-tflops")
    (tmp_path / "cache" / "peak_flops.json").write_text("{not json")  # a damaged cache is measured again
    assert metrics.device_peak_flops(torch.float32)[0] > 0 and len(calls) == 3


def test_tensorboard_round_trip_and_purge_on_resume(tmp_path):
    log_dir = tmp_path / "tb"
    first = metrics.TensorBoard(log_dir, enabled=True)
    first.hparams({"lr": 1e-3, "model": "tiny", "groups": [1, 2]}, {"val/loss": float("nan")})
    for step in range(1, 11):
        first.scalars(step, {"train/loss": 10.0 - step, "train/loss_scale": None})
    first.text("sample", "to be or not", 10)
    first.close()  # "killed" after step 10; its checkpoint was at step 6
    resumed = metrics.TensorBoard(log_dir, enabled=True, purge_step=7)
    for step in range(7, 13):
        resumed.scalars(step, {"train/loss": 100.0 + step})
    resumed.close()
    metrics.TensorBoard(log_dir, enabled=False).scalars(99, {"train/loss": 1.0})  # other ranks write nothing

    scalars = metrics.read_scalars(log_dir)
    assert set(scalars) == {"train/loss"}
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert scalars["train/loss"][5][1] == 4.0 and scalars["train/loss"][6][1] == 107.0
    assert metrics.read_texts(log_dir, "sample") == [(10, "to be or not")]


def test_a_resumed_log_is_read_after_the_interrupted_one_in_the_same_second(tmp_path, monkeypatch):
    """An event file's name is its second, host, pid and the process's writer count: "events...pid.10" sorts before
    "...pid.9", and TensorBoard reads (and purges) in name order. A resume in the same second of the same process,
    across that count's 9 -> 10, must still be read last (the CI flake this reproduces)."""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    log_dir = tmp_path / "tb"
    first = metrics.TensorBoard(log_dir, enabled=True)
    for step in range(1, 5):
        first.scalars(step, {"train/loss": float(step)})
    first.close()
    resumed = metrics.TensorBoard(log_dir, enabled=True, purge_step=3)
    resumed.scalars(3, {"train/loss": 30.0})
    resumed.close()
    assert metrics.read_scalars(log_dir)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks what a machine without CUDA answers")
def test_native_bf16_without_cuda_is_false_not_an_error():
    """A CPU-only machine (a login node) may ask: the answer is False (torch's device query would raise)."""
    assert hardware.gpu_native_bf16() is False and hardware.gpu_native_bf16("cuda:1") is False
