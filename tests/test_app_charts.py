"""Tests of app/charts.py: the Altair specs of the loss curves and the attention heatmap."""

from __future__ import annotations

import json

from app_fixtures import TARGET_LOSS, make_run

from charts import attention_chart, loss_chart, lr_chart
from curves import read_run_curves
from gpt_ds.inference import attention_map, load_for_inference
from gpt_ds.run_dir import RunDir


def test_loss_chart_has_both_losses_and_the_target(tmp_path):
    curves = read_run_curves(RunDir.of_model(make_run(tmp_path / "demo")).tb)
    spec = json.dumps(loss_chart(curves, TARGET_LOSS).to_dict())
    assert "val loss" in spec and '"target"' in spec and str(TARGET_LOSS) in spec
    assert '"target"' not in json.dumps(loss_chart(curves, None).to_dict()["datasets"])
    assert "learning rate" in json.dumps(lr_chart(curves).to_dict())


def test_attention_chart_draws_the_causal_half(tmp_path):
    model, info = load_for_inference(make_run(tmp_path / "demo", with_tb=False))
    attention = attention_map(model, info.tokenizer, list(range(100, 200)), layer=0, head=0, max_shown=16)
    spec = attention_chart(attention).to_dict()
    assert len(spec["datasets"][next(iter(spec["datasets"]))]) == 16 * 17 // 2  # the causal half
