"""What the Streamlit page (app/app.py) needs beyond layout.

Defines: the page's command-line arguments (`parse_app_args`), model-folder discovery under
`runs/` (`discover_model_folders`), safe loading that turns every failure into one `UserError`
(`load_model_for_app`), the model card (`ModelCard`, `model_card`), the generation controls and
prompt checks (`GenerationControls`, `encode_prompt`, `stream_continuation`), a run's training
curves read back from its TensorBoard logs (`RunCurves`, `read_run_curves`), the attention
heatmap data (`AttentionMap`, `attention_map`) and the Altair charts drawn from them.

Nothing here imports Streamlit, so every piece is testable without a page; the page adds caching
(`st.cache_resource` for weights) and layout.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import altair as alt
import pandas as pd
import torch

from gpt_ds.errors import UserError
from gpt_ds.generate import detokenize_stream, stream
from gpt_ds.model import GPT
from gpt_ds.metrics import read_scalars
from gpt_ds.model_io import CONFIG_FILE, WEIGHTS_FILE, ModelInfo, load_model
from gpt_ds.tokenizer import EOT_TOKEN, get_encoding

REPO_ROOT = Path(__file__).resolve().parents[1]
# TensorBoard tags written by training (DESIGN.md, "TensorBoard tags").
TRAIN_LOSS_TAG = "train/loss"
VAL_LOSS_TAG = "val/loss"
LR_TAG = "train/lr"
CURVE_TAGS = (TRAIN_LOSS_TAG, VAL_LOSS_TAG, LR_TAG)
# Discovery walks at most this deep below each root: runs/NAME/model is depth 2, and a few
# more levels allow grouping runs in folders without crawling a whole disk.
DISCOVERY_MAX_DEPTH = 4
# Beyond this many tokens the heatmap's labels become unreadable; we show the last ones.
ATTENTION_MAX_SHOWN = 48


# --------------------------------------------------------------------------------------------
# Arguments and discovery


@dataclass(frozen=True)
class AppArgs:
    """What `streamlit run app/app.py -- [--model DIR]` was given."""

    model: Path | None = None


def parse_app_args(argv: Sequence[str]) -> AppArgs:
    """Parse the page's own arguments; unknown ones are ignored (they belong to whoever runs us)."""
    parser = argparse.ArgumentParser(prog="app/app.py", add_help=False)
    parser.add_argument("--model", type=Path, default=None)
    known, _unknown = parser.parse_known_args(list(argv))
    return AppArgs(model=known.model.expanduser() if known.model else None)


def default_run_roots() -> list[Path]:
    """`runs/` below the working directory and below the repository (the same folder, usually)."""
    roots: list[Path] = []
    for root in (Path.cwd() / "runs", REPO_ROOT / "runs"):
        if root.resolve() not in [r.resolve() for r in roots]:
            roots.append(root)
    return roots


def is_model_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def discover_model_folders(roots: Iterable[Path], max_depth: int = DISCOVERY_MAX_DEPTH) -> list[Path]:
    """Every model folder at most `max_depth` levels below the roots, newest weights first."""
    found: dict[Path, float] = {}
    for root in roots:
        if not root.is_dir():
            continue
        frontier = [(root, 0)]
        while frontier:
            folder, depth = frontier.pop()
            if is_model_folder(folder):
                found[folder.resolve()] = (folder / WEIGHTS_FILE).stat().st_mtime
                continue  # a model folder holds no further models
            if depth >= max_depth:
                continue
            try:
                children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
            except OSError:
                continue  # an unreadable folder is not a model; keep looking elsewhere
            frontier.extend((child, depth + 1) for child in children)
    return sorted(found, key=lambda path: (-found[path], str(path)))


def display_name(folder: Path) -> str:
    """The folder relative to the working directory when below it, else the full path."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def resolve_model_folder(text: str | os.PathLike) -> Path:
    """A typed or chosen folder as a Path, with a clear error when it cannot be a model folder."""
    raw = str(text).strip()
    if not raw:
        raise UserError("no model folder given: choose one in the sidebar or type the path of a model folder")
    folder = Path(raw).expanduser()
    if not folder.exists():
        raise UserError(
            f"the model folder {folder} does not exist: check the path, or train a model first "
            "(gpt-ds-quickstart writes one to runs/quickstart/model)"
        )
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: give the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return folder


def run_dir_of(model_folder: Path) -> Path | None:
    """The run a model folder belongs to (RUN_DIR/model beside RUN_DIR/tb), if any."""
    parent = model_folder.resolve().parent
    return parent if (parent / "tb").is_dir() else None


def files_fingerprint(*paths: Path) -> tuple:
    """(path, size, mtime) of each file below the paths: a cache key that changes when they do."""
    stamp = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            stamp.append((str(file), stat.st_size, stat.st_mtime_ns))
    return tuple(stamp)


# --------------------------------------------------------------------------------------------
# Loading


def pick_device() -> str:
    """CPU by default; the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_for(device: str) -> torch.dtype:
    # bf16 halves memory and is what GPUs are fast at; on the CPU fp32 keeps sampling exact.
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model_for_app(folder: Path, device: str) -> tuple[GPT, ModelInfo]:
    """Load a model folder for inference; any failure becomes a UserError that names the fix."""
    folder = resolve_model_folder(folder)
    try:
        model, info = load_model(folder, device=device, dtype=dtype_for(device))
    except UserError:
        raise
    except Exception as err:  # a safety net: the page must show a message, never a traceback
        raise UserError(
            f"could not load the model in {folder} ({type(err).__name__}: {err}); "
            "export it again (python -m gpt_ds.export RUN_DIR) or choose another folder"
        ) from err
    return model, info  # in eval mode: load_model leaves it so


# --------------------------------------------------------------------------------------------
# The model card


@dataclass(frozen=True)
class ModelCard:
    """What the page says about a model; None where the folder does not record it."""

    name: str
    preset: str | None
    parameters: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    tokenizer: str
    steps: int | None = None
    tokens: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    target_loss: float | None = None
    target_reached: bool | None = None
    target_step: int | None = None


def _number(value, kind):
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        return None  # metadata written by another tool may hold anything; show it as unknown


def model_card(model: GPT, info: ModelInfo) -> ModelCard:
    # Keys of the training metadata that gpt_ds.export writes into config.json (export.METADATA_KEYS).
    meta = info.metadata or {}
    cfg = info.config
    reached = meta.get("target_reached")
    return ModelCard(
        name=display_name(Path(info.folder)),
        preset=meta.get("preset"),
        parameters=model.num_params(),
        context=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        tokenizer=info.tokenizer,
        steps=_number(meta.get("step"), int),
        tokens=_number(meta.get("tokens"), int),
        train_loss=_number(meta.get("train_loss"), float),
        val_loss=_number(meta.get("val_loss"), float),
        target_loss=_number(meta.get("target_loss"), float),
        target_reached=None if reached is None else bool(reached),
        target_step=_number(meta.get("target_step"), int),
    )


def format_count(n: int | None) -> str:
    """1234567 -> '1.23M': counts as people say them."""
    if n is None:
        return "—"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def format_loss(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


# --------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class GenerationControls:
    """The sampling knobs of the page; temperature 0 means greedy, top_k 0 and top_p 1 mean off."""

    max_new_tokens: int = 120
    temperature: float = 0.8
    top_k: int = 200
    top_p: float = 1.0
    seed: int | None = 1337

    def sampling_kwargs(self) -> dict:
        """The keyword arguments of gpt_ds.generate.stream for these controls."""
        return {
            "temperature": self.temperature,  # 0 makes generate pick the most likely token
            "top_k": self.top_k or None,
            "top_p": self.top_p if self.top_p < 1.0 else None,
            "seed": self.seed,
            "stop_token": EOT_TOKEN,
        }


def encode_prompt(text: str, tokenizer: str, block_size: int | None = None) -> list[int]:
    """The prompt's token ids; UserError when it is empty or longer than `block_size` (if given)."""
    if not text or not text.strip():
        raise UserError("the prompt is empty: type some text in the Prompt box, then press Generate")
    # The document delimiter may be typed as text: it is how documents start in training.
    ids = get_encoding(tokenizer).encode(text, allowed_special={"<|endoftext|>"})
    if block_size is not None and len(ids) > block_size:
        raise UserError(
            f"the prompt is {len(ids)} tokens long but this model's context is {block_size} tokens: "
            f"shorten it by at least {len(ids) - block_size} tokens"
        )
    return ids


@dataclass(frozen=True)
class StreamUpdate:
    """The continuation so far, as text, with its speed."""

    text: str
    tokens: int
    seconds: float

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def stream_continuation(
    model: GPT, tokenizer: str, prompt_ids: list[int], controls: GenerationControls
) -> Iterator[StreamUpdate]:
    """Yield the growing continuation as its text grows (the timing includes the prompt pass)."""
    produced = 0

    def counted_tokens() -> Iterator[int]:
        nonlocal produced
        for token in stream(model, prompt_ids, controls.max_new_tokens, **controls.sampling_kwargs()):
            produced += 1
            yield token

    text, shown = "", 0
    start = time.perf_counter()
    for piece in detokenize_stream(get_encoding(tokenizer), counted_tokens()):
        text += piece
        shown = produced
        yield StreamUpdate(text, produced, time.perf_counter() - start)
    if produced != shown:  # the last tokens completed no character: still report their count
        yield StreamUpdate(text, produced, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Training curves


@dataclass
class RunCurves:
    """Scalar series of a run: tag -> [(step, value)] sorted by step."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def has(self, tag: str) -> bool:
        return bool(self.series.get(tag))


def read_run_curves(tb_dir: Path, tags: Sequence[str] = CURVE_TAGS) -> RunCurves:
    """The curves the page draws, from a run's TensorBoard folder (read by gpt_ds.metrics).

    Should a step appear twice (a resumed run whose log was not purged), the later value wins,
    so the curve shows what the run finally did.
    """
    if not Path(tb_dir).is_dir():
        raise UserError(f"there are no TensorBoard logs at {tb_dir}: the run has not logged yet")
    try:
        scalars = read_scalars(tb_dir)
    except Exception as err:  # tensorboard raises its own error types for damaged files
        raise UserError(
            f"could not read the TensorBoard logs in {tb_dir} ({type(err).__name__}: {err}); "
            "the event files may be damaged: the model itself is unaffected"
        ) from err
    return RunCurves(series={tag: sorted(dict(scalars[tag]).items()) for tag in tags if tag in scalars})


def _series_frame(curves: RunCurves, tags: dict[str, str]) -> pd.DataFrame:
    rows = [
        {"step": step, "value": value, "series": label}
        for tag, label in tags.items()
        for step, value in curves.series.get(tag, [])
        if math.isfinite(value)
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def loss_chart(curves: RunCurves, target_loss: float | None) -> alt.Chart:
    """Train and val loss against step, with the target as a dashed rule."""
    frame = _series_frame(curves, {TRAIN_LOSS_TAG: "train loss", VAL_LOSS_TAG: "val loss"})
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
    frame = _series_frame(curves, {LR_TAG: "learning rate"})
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


# --------------------------------------------------------------------------------------------
# Attention


@dataclass(frozen=True)
class AttentionMap:
    """One head's causal attention over the last shown tokens: weights[q][k] for labels[q], labels[k]."""

    labels: list[str]
    weights: list[list[float]]
    layer: int
    head: int
    first_position: int  # position in the full sequence of the first shown token
    total_tokens: int


def token_label(tokenizer: str, token: int, position: int) -> str:
    """A token made visible on an axis: spaces and newlines shown, its position making it unique."""
    text = get_encoding(tokenizer).decode_single_token_bytes(token).decode("utf-8", errors="replace")
    text = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"
    return f"{position}·{text}"


def attention_map(
    model: GPT, tokenizer: str, token_ids: list[int], layer: int, head: int, max_shown: int = ATTENTION_MAX_SHOWN
) -> AttentionMap:
    """The attention weights of `layer`/`head` for the whole sequence, cut to its last `max_shown` tokens."""
    config = model.config
    if not 0 <= layer < config.n_layer or not 0 <= head < config.n_head:
        raise UserError(f"layer {layer} / head {head} do not exist: this model has {config.n_layer} layers of {config.n_head} heads")
    if not token_ids:
        raise UserError("the prompt is empty: type some text to see what the heads attend to")
    device = next(model.parameters()).device
    idx = torch.tensor([token_ids[-config.block_size :]], dtype=torch.long, device=device)
    weights = model.attention_weights(idx)[layer, head].cpu()  # float32, computed without autograd
    first = max(0, idx.shape[1] - max_shown)
    shown = weights[first:, first:]
    offset = len(token_ids) - idx.shape[1]
    ids = idx[0, first:].tolist()
    return AttentionMap(
        labels=[token_label(tokenizer, tok, offset + first + i) for i, tok in enumerate(ids)],
        weights=shown.tolist(),
        layer=layer,
        head=head,
        first_position=offset + first,
        total_tokens=len(token_ids),
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
