"""The page's Altair charts: the loss curves with the target (`loss_chart`), the learning rate
(`lr_chart`) and one head's attention heatmap (`attention_chart`). The only module that imports
Altair and pandas; the data comes from curves.RunCurves and gpt_ds.inference.AttentionMap.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd
from curves import RunCurves

from gpt_ds import tags
from gpt_ds.inference import AttentionMap


def _series_frame(curves: RunCurves, labels: dict[str, str]) -> pd.DataFrame:
    rows = [
        {"step": step, "value": value, "series": label}
        for tag, label in labels.items()
        for step, value in curves.series.get(tag, [])
        if math.isfinite(value)
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def loss_chart(curves: RunCurves, target_loss: float | None) -> alt.Chart:
    """Train and val loss against step, with the target as a dashed rule."""
    frame = _series_frame(curves, {tags.TRAIN_LOSS: "train loss", tags.VAL_LOSS: "val loss"})
    colors = alt.Scale(domain=["train loss", "val loss", "target"], range=["#4c78a8", "#f58518", "#54a24b"])
    lines = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=18, filled=True), strokeWidth=2)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title="loss", scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", scale=colors, legend=alt.Legend(title=None, orient="top")),
            tooltip=["series:N", "step:Q", alt.Tooltip("value:Q", format=".4f")],
        )
    )
    if target_loss is None:
        return lines.properties(height=320)
    target = pd.DataFrame({"value": [target_loss], "series": ["target"]})
    rule = (
        alt.Chart(target)
        .mark_rule(strokeDash=[6, 4], strokeWidth=2)
        .encode(y="value:Q", color=alt.Color("series:N", scale=colors), tooltip=["series:N", "value:Q"])
    )
    return (lines + rule).properties(height=320)


def lr_chart(curves: RunCurves) -> alt.Chart:
    frame = _series_frame(curves, {tags.LR: "learning rate"})
    return (
        alt.Chart(frame)
        .mark_area(line={"color": "#72b7b2"}, color="#72b7b233")
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title="learning rate", axis=alt.Axis(format=".1e")),
            tooltip=["step:Q", alt.Tooltip("value:Q", format=".3e", title="lr")],
        )
        .properties(height=200)
    )


def attention_chart(attention: AttentionMap) -> alt.Chart:
    """A heatmap: query tokens down, key tokens across; the masked future is left blank."""
    rows = [
        {"query": q_label, "key": attention.labels[k], "weight": attention.weights[q][k]}
        for q, q_label in enumerate(attention.labels)
        for k in range(q + 1)  # causal: a token never attends to later ones
    ]
    size = max(420, min(820, 34 * len(attention.labels)))  # the axis labels take part of it
    return (
        alt.Chart(pd.DataFrame(rows))
        .mark_rect()
        .encode(
            x=alt.X("key:O", sort=attention.labels, title="attended-to token (key)", axis=alt.Axis(labelAngle=-55, labelLimit=90, labelOverlap=False)),
            y=alt.Y("query:O", sort=attention.labels, title="attending token (query)", axis=alt.Axis(labelLimit=90, labelOverlap=False)),
            color=alt.Color("weight:Q", scale=alt.Scale(scheme="viridis"), title="weight"),
            tooltip=["query:N", "key:N", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(width=size, height=size)
    )
