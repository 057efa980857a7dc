"""gpt_ds.monitor: the run's records in TensorBoard (read back), the loss target, the non-finite guard."""

from __future__ import annotations

import pytest

from gpt_ds import metrics, tags
from gpt_ds.monitor import NONFINITE_PATIENCE, Monitor, TrainingDiverged
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir


def make_monitor(tmp_path, record: RunRecord, target_on_val: bool = True, target: float | None = 5.0) -> Monitor:
    return Monitor(RunDir(tmp_path / "run"), is_main=True, world_size=2, flops_per_token=1e6, peak_flops=1e12,
                   target_loss=target, target_on_val=target_on_val, record=record, max_steps=10, log_interval=2)


def test_start_steps_evaluations_and_target_on_val(tmp_path):
    record = RunRecord(target_loss=5.0)
    monitor = make_monitor(tmp_path, record)
    monitor.start({"lr": 1e-3}, '{"seed": 1}')
    memory = ([1.0, 1.5], [1.25, 2.5], [3.0, 2.0], [1.0, 1.0])  # each rank's peak, as agreed after the step
    for (loss, val), per_rank in zip(((7.0, None), (6.0, 5.5), (4.0, None), (4.5, 4.9)), memory):
        record.advance(tokens=100, seconds=0.5)
        monitor.step(record, loss, 100, 0.5, {tags.LR: 1e-3, tags.LOSS_SCALE: None}, per_rank)
        if val is not None:
            record.val_loss = val
            record.val_bpb = None if record.step == 2 else 1.5  # step 2: without the tokenizer's files
            monitor.evaluation(record.step, val, sample=f"text {record.step}", val_bpb=record.val_bpb)
        # the smoothed training loss is below the target at step 3, but the target is on val
        assert monitor.check_target(record) == (record.step == 4)
    assert record.target_reached and (record.target_step, record.target_tokens, record.target_seconds) == (4, 400, 2.0)
    assert "target reached" in monitor.summary(record, "target reached") and "MFU" in monitor.summary(record, "")
    assert "peak memory 3.00 GiB (rank 0)" in monitor.summary(record, "")
    assert ", val loss 4.9000, val bpb 1.5000, " in monitor.summary(record, "")
    assert ", val bpb" not in monitor.summary(RunRecord(train_loss=4.0, val_loss=4.5), "")
    monitor.close()

    scalars = metrics.read_scalars(tmp_path / "run" / "tb")
    assert [s for s, _ in scalars[tags.TRAIN_LOSS]] == [1, 2, 4]  # step 1 and every log_interval
    assert scalars[tags.VAL_LOSS] == [(2, 5.5), (4, pytest.approx(4.9))]
    assert scalars[tags.VAL_BPB] == [(4, 1.5)]  # unknown bits per byte are not written
    assert scalars[tags.TARGET_LOSS] == [(0, 5.0)] and scalars[tags.TARGET_STEP] == [(4, 4.0)]
    assert tags.LOSS_SCALE not in scalars and scalars[tags.TOKENS][-1] == (4, 400.0)
    assert scalars[tags.MFU][-1][1] == pytest.approx(200 * 1e6 / 2e12)  # 100 tokens / 0.5 s on 2 devices
    assert scalars[tags.MEMORY_GIB] == [(1, 1.5), (2, 2.5), (4, 1.0)]  # the largest over the ranks
    assert scalars[tags.memory_of_rank(1)] == [(1, 1.5), (2, 2.5), (4, 1.0)] and scalars["memory/rank_0_gib"][1] == (2, 1.25)
    assert metrics.read_texts(tmp_path / "run" / "tb", tags.SAMPLE) == [(2, "text 2"), (4, "text 4")]
    assert "seed" in metrics.read_texts(tmp_path / "run" / "tb", tags.SETTINGS)[0][1]


def test_target_on_the_smoothed_train_loss_without_val(tmp_path):
    record = RunRecord()
    monitor = make_monitor(tmp_path, record, target_on_val=False, target=6.5)
    for loss in (7.0, 6.0, 5.0):
        record.advance(tokens=10, seconds=0.1)
        monitor.step(record, loss, 10, 0.1, {})
        monitor.check_target(record)
    monitor.close()
    assert record.train_loss == pytest.approx(0.9 * (0.9 * 7 + 0.1 * 6) + 0.1 * 5)  # EMA 6.8: not yet
    assert not record.target_reached
    assert not make_monitor(tmp_path, RunRecord(), target=None).check_target(RunRecord(val_loss=0.1))


def test_a_loss_that_stays_nonfinite_stops_the_run(tmp_path):
    record = RunRecord()
    monitor = make_monitor(tmp_path, record, target_on_val=False, target=100.0)
    record.advance(10, 0.1)
    monitor.step(record, None, 10, 0.1, {})  # one skipped (fp16 overflow) step is tolerated ...
    assert not monitor.healthy and not monitor.check_target(record)  # ... but never counts as the target
    record.advance(10, 0.1)
    monitor.step(record, 3.0, 10, 0.1, {})
    assert monitor.healthy
    with pytest.raises(TrainingDiverged) as err:
        for _ in range(NONFINITE_PATIENCE):
            record.advance(10, 0.1)
            monitor.step(record, None, 10, 0.1, {})
    monitor.close()
    assert err.value.exit_code == 3 and "3 steps in a row (step 5)" in str(err.value) and "(none)" in str(err.value)
