"""Benchmark results kept in a model folder: MODEL_DIR/evals/<task>.json, one file per task.

A file holds what lm-evaluation-harness reported for the task (or the bits-per-byte figures) under
"results", and what was evaluated under "evaluated": the weights' sha256, the few-shot count, the limit,
the date, the backend's settings and the versions of gpt-ds, lm-eval, torch and transformers. A result
whose sha256 is not the folder's weights' belongs to other weights (the folder was re-exported since):
`read_results` leaves it out. Nothing here imports lm-eval: the app reads these files without it.

Defines `EVALS_DIR`, `Result`, `write_result`, `read_results` and `headline` (the figure a card shows).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_ds import atomic, json_object
from gpt_ds.model_io import ModelInfo

EVALS_DIR = "evals"
HEADLINE_METRICS = ("acc_norm", "acc", "exact_match", "bpb", "word_perplexity")  # what a card shows first
VERSIONED = ("gpt-ds", "lm_eval", "torch", "transformers", "deepspeed")


@dataclass(frozen=True)
class Result:
    """One task's figures ({metric: value}, lm-eval's "acc,none" keys shortened to "acc") and the file's
    "evaluated" record."""

    task: str
    metrics: dict[str, float]
    evaluated: dict[str, Any]


def versions() -> dict[str, str | None]:
    """The installed version of each package that decides a figure (None where it is not installed)."""
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def evaluated_record(info: ModelInfo, **settings: Any) -> dict[str, Any]:
    """What was evaluated: the weights (sha256 from config.json), the settings given, the date, versions."""
    return {"model": str(info.folder), "weights_sha256": info.weights_sha256, **settings,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions()}


def write_result(folder: str | Path, task: str, results: dict[str, Any], evaluated: dict[str, Any],
                 **extra: Any) -> Path:
    """Write MODEL_DIR/evals/<task>.json atomically (a crash leaves the old file or the new one)."""
    path = Path(folder) / EVALS_DIR / f"{safe_name(task)}.json"
    path.parent.mkdir(exist_ok=True)
    document = {"task": task, "results": results, **extra, "evaluated": evaluated}
    atomic.write_text(path, json.dumps(document, indent=2, default=str, allow_nan=True) + "\n")
    return path


def safe_name(task: str) -> str:
    """A task name as a file name: path separators and spaces become underscores."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in task)


def metric_values(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's {"acc,none": 0.3, "acc_stderr,none": ..., "alias": ...} as {"acc": 0.3}: the numbers
    of the default filter, without their standard errors."""
    out = {}
    for key, value in results.items():
        name, _, filter_name = key.partition(",")
        if filter_name in ("", "none") and not name.endswith("_stderr") and isinstance(value, (int, float)) \
                and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def read_results(folder: str | Path, weights_sha256: str | None) -> list[Result]:
    """The folder's results for these weights, by task name. Unreadable files and results of other
    weights are left out (a card shows what is known to be true, never an error)."""
    out = []
    for path in sorted((Path(folder) / EVALS_DIR).glob("*.json")):
        document = json_object.read_or_none(path)
        try:
            evaluated = document["evaluated"]
            if weights_sha256 is not None and evaluated.get("weights_sha256") != weights_sha256:
                continue
            out.append(Result(str(document["task"]), metric_values(document["results"]), evaluated))
        except (KeyError, TypeError, AttributeError):  # not one of these files (or none at all)
            continue
    return out


def headline(result: Result) -> tuple[str, float] | None:
    """The (metric, value) a card shows for a result: acc_norm, else acc, else the first known one."""
    for name in HEADLINE_METRICS:
        if name in result.metrics:
            return name, result.metrics[name]
    return next(iter(result.metrics.items()), None)
