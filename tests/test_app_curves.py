"""Tests of app/curves.py: a run's curves read back from real TensorBoard files."""

from __future__ import annotations

import pytest
from app_fixtures import STEPS, lr_at, make_run, train_loss_at

from curves import read_run_curves
from gpt_ds import tags
from gpt_ds.errors import UserError
from gpt_ds.metrics import TensorBoard
from gpt_ds.run_dir import RunDir


def test_run_curves_come_from_the_tensorboard_files(tmp_path):
    run_dir = tmp_path / "demo"
    make_run(run_dir)
    run = RunDir.of_model(run_dir / "model")
    assert run.root == run_dir.resolve()
    curves = read_run_curves(run.tb)
    train = curves.series[tags.TRAIN_LOSS]
    assert [s for s, _ in train] == list(range(0, STEPS + 1, 10))
    assert train[3][1] == pytest.approx(train_loss_at(30), rel=1e-6)
    assert [s for s, _ in curves.series[tags.VAL_LOSS]] == [0, 50, 100, 150, 200]
    assert curves.series[tags.LR][-1][1] == pytest.approx(lr_at(STEPS), rel=1e-6)
    assert curves.has(tags.LR) and not curves.has(tags.MFU)


def test_resumed_run_curve_has_each_step_once(tmp_path):
    tb = tmp_path / "tb"
    first = TensorBoard(tb, enabled=True)
    for step in range(0, 100, 10):
        first.scalars(step, {tags.TRAIN_LOSS: 10.0})
    first.close()
    resumed = TensorBoard(tb, enabled=True, purge_step=50)  # as training does on resume
    for step in range(50, 150, 10):
        resumed.scalars(step, {tags.TRAIN_LOSS: 5.0})
    resumed.close()
    series = read_run_curves(tb).series[tags.TRAIN_LOSS]
    assert [s for s, _ in series] == list(range(0, 150, 10))
    assert [v for s, v in series if s >= 50] == [5.0] * 10


def test_missing_tb_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no TensorBoard logs"):
        read_run_curves(tmp_path / "tb")
