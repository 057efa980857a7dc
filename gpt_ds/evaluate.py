"""What the eval command (launch/eval.py) runs on a model folder: lm-evaluation-harness tasks through the
gpt-ds backend (gpt_ds.harness), and bits per byte of a text.

Each entry of --tasks is, in this order of checks:
- a prepared data folder: bits per byte of its val split;
- a multiple-choice jsonl file in one of mc_eval's schemas (HellaSwag's ctx/endings/label, or
  query/choices/gold): an lm-eval `multiple_choice` task over the file, configured by `mc_task_config`
  (eval_tasks/gpt_ds_mc.yaml is the same task as a YAML to copy);
- a task YAML file (.yaml/.yml): lm-eval's own loader reads it;
- any other file: a text whose bits per byte are measured;
- else an lm-eval task or group name; --include-path adds folders of task YAMLs.

Bits per byte (gpt_ds.bpb's convention: end-of-text decodes to no bytes and counts in neither sum): the
tokens, after one end-of-text token that starts the text, in windows of block_size predictions; each
window's first input is the previous window's last token. A data folder's val split is already a stream of
end-of-text-led documents.

Offline, a task whose dataset is in neither the Hugging Face datasets cache nor a local file is a UserError
naming the dataset and how to fetch it. Defines `TaskSpec`, `parse_tasks`, `mc_task_config`, `text_bpb`,
`run_lm_eval` and `evaluate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt_ds import eval_results
from gpt_ds.bpb import bits_per_byte, bpb_sums, token_byte_lengths
from gpt_ds.data import MANIFEST_NAME, open_split
from gpt_ds.errors import UserError, first_line
from gpt_ds.mc_eval import SCHEMAS, load_task
from gpt_ds.tokenizer import get_encoding

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class TaskSpec:
    """One --tasks entry: kind "bpb" (a text file or data folder), "mc" (a jsonl file), or "lm_eval"
    (a task name or YAML path, as lm-eval takes it)."""

    kind: str
    name: str
    source: str


def parse_tasks(text: str) -> list[TaskSpec]:
    """--tasks split on commas, each entry classified; UserError for an empty list or a bad file."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise UserError("--tasks is empty; give lm-eval task names (e.g. hellaswag,arc_easy), task YAML files, "
                        "multiple-choice jsonl files, text files or data folders, separated by commas")
    specs = [classify(entry) for entry in entries]
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"--tasks names {name!r} twice (its results file would be written twice); give it once")
    return specs


def classify(entry: str) -> TaskSpec:
    path = Path(entry)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise UserError(f"--tasks {entry}: a folder, but not a prepared data folder (no {MANIFEST_NAME}); "
                            "give a data folder made by python -m data_prep, or a file")
        return TaskSpec("bpb", f"bpb_{path.resolve().name}_val", entry)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise UserError(f"--tasks {entry}: no such file; python -m data_prep.make_mc makes a multiple-choice file")
        return TaskSpec("mc", path.stem, entry)
    if path.suffix in YAML_SUFFIXES:
        if not path.is_file():
            raise UserError(f"--tasks {entry}: no such task YAML file")
        return TaskSpec("lm_eval", path.stem, entry)
    if path.is_file():
        return TaskSpec("bpb", f"bpb_{path.stem}", entry)
    if "/" in entry or path.suffix:
        raise UserError(f"--tasks {entry}: no such file or folder; give an existing text file, jsonl file, task YAML "
                        "or data folder, or an lm-eval task name")
    return TaskSpec("lm_eval", entry, entry)


def mc_task_config(name: str, path: str | Path, schema: str = "hellaswag") -> dict[str, Any]:
    """The lm-eval task config of a multiple-choice jsonl file: the context, the endings and the label by
    field name, the schema's delimiter between context and ending, acc and acc_norm."""
    ctx, endings, label, delimiter = SCHEMAS[schema]
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(path).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": ctx,
        "doc_to_choice": endings,
        "doc_to_target": "{{" + label + "}}",  # a template: HellaSwag's own files write the label as a string
        "target_delimiter": delimiter,
        "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}
                        for metric in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }


# ---- bits per byte ------------------------------------------------------------------------------

def bpb_tokens(spec: TaskSpec, encode: Any, eot: int) -> np.ndarray:
    """The token stream a bpb entry measures: a folder's val split, or a file's text after end-of-text."""
    path = Path(spec.source)
    if path.is_dir():
        return np.concatenate([np.asarray(shard, dtype=np.int64) for shard in open_split(path, "val")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--tasks {path}: not UTF-8 text; give a text file, a data folder, a jsonl or YAML task file, "
                        "or an lm-eval task name") from None
    if not text:
        raise UserError(f"--tasks {path}: the file is empty; there is no text to measure")
    return np.asarray([eot, *encode(text)], dtype=np.int64)


@torch.no_grad()
def text_bpb(model: Any, tokens: np.ndarray, tokenizer: str, batch_size: int,
             limit: float | None = None) -> dict[str, float]:
    """{bpb, loss (nats per token), tokens, bytes} of predicting tokens[1:] from what precedes each, in
    windows of block_size predictions; `limit`: the first windows only (a count, or a fraction below 1)."""
    block, device = model.config.block_size, next(model.parameters()).device
    lengths = token_byte_lengths(model.config.vocab_size, tokenizer).to(device)
    starts = list(range(0, len(tokens) - 1, block))
    if limit is not None:
        starts = starts[:max(1, int(limit if limit >= 1 else limit * len(starts)))]
    # bpb's two sums, then every target's nats and their count: on the device, read once at the end
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for group in range(0, len(starts), batch_size):
        rows = [tokens[s:s + block + 1] for s in starts[group:group + batch_size]]
        width = max(len(row) - 1 for row in rows)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        y = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            x[i, :len(row) - 1] = torch.from_numpy(row[:-1])
            y[i, :len(row) - 1] = torch.from_numpy(row[1:])
        x, y = x.to(device), y.to(device)
        losses = model(x, y, per_token=True)[1]
        real = y != -100
        sums[:2] += bpb_sums(losses[real], y[real], lengths)
        sums[2] += losses[real].double().sum()
        sums[3] += real.sum()
    loss_nats, n_bytes, nats, count = sums.tolist()
    return {"bpb": bits_per_byte(loss_nats, n_bytes), "loss": nats / max(count, 1), "tokens": int(count),
            "bytes": int(n_bytes)}


# ---- lm-eval -------------------------------------------------------------------------------------

def require_lm_eval() -> None:
    """UserError naming the extra to install when lm-evaluation-harness is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("the eval command needs lm-evaluation-harness; install it with: pip install -e \".[eval]\" "
                        "(or pip install 'lm-eval>=0.4.13')") from None


OFFLINE_HINT = ("fetch it on a machine with internet (python -c \"import datasets; datasets.load_dataset('{name}')\") "
                "and copy the Hugging Face cache (~/.cache/huggingface, or HF_HOME) here, or give the task as a "
                "local YAML with dataset_path: json and data_files (eval_tasks/gpt_ds_mc.yaml is an example)")


def missing_dataset(err: BaseException, task: str) -> UserError | None:
    """The one-line error for a task whose dataset cannot be read offline; None for any other failure."""
    text = str(err)
    if isinstance(err, ConnectionError) or "Couldn't reach" in text or "offline" in text.lower():
        match = re.search(r"reach '([^']+)'", text)
        name = match.group(1) if match else task
        return UserError(f"task {task}: its dataset {name} is not in the Hugging Face datasets cache and cannot be "
                         f"downloaded here; " + OFFLINE_HINT.format(name=name))
    return None


def load_lm_eval_tasks(specs: list[TaskSpec], include_path: list[str]) -> dict[str, Any]:
    """lm-eval's task objects for the lm_eval and mc entries, each loaded on its own so that an error names it."""
    from lm_eval.tasks import TaskManager

    encode_ordinary = get_encoding().encode_ordinary
    targets: list[Any] = []
    for spec in specs:  # the files first, every line checked as --eval-tasks checks it: bad input fails at once
        if spec.kind == "mc":
            targets.append(mc_task_config(spec.name, spec.source,
                                          load_task(Path(spec.source), encode_ordinary, flag="--tasks").schema))
        else:
            targets.append(spec.source)
    manager = TaskManager(include_path=include_path or None)
    loaded: dict[str, Any] = {}
    for spec, target in zip(specs, targets):
        try:
            loaded.update(manager.load_task_or_group([target]))
        except KeyError:
            raise UserError(f"--tasks {spec.source}: lm-eval has no task, group or tag of that name; `lm_eval ls tasks` "
                            "lists them; a local task YAML goes in --include-path or --tasks as a path") from None
        except Exception as err:
            error = missing_dataset(err, spec.source)
            if error is None:
                raise UserError(f"--tasks {spec.source}: lm-eval could not load the task ({type(err).__name__}: "
                                f"{first_line(err)}); check its YAML and its data") from err
            raise error from None
    return loaded


def run_lm_eval(lm: Any, tasks: dict[str, Any], num_fewshot: int | None, limit: float | None) -> dict[str, Any]:
    """lm-eval's simple_evaluate on already-loaded tasks; its full results dict."""
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), num_fewshot=num_fewshot, limit=limit,
                                   log_samples=False, bootstrap_iters=0)


def evaluate(model_dir: str | Path, specs: list[TaskSpec], *, num_fewshot: int | None = None,
             limit: float | None = None, batch_size: int | str | None = None, device: str | None = None,
             dtype: str | None = None, include_path: list[str] | None = None) -> tuple[dict[str, Any] | None, list[Path]]:
    """Run every entry on the model folder; write MODEL_DIR/evals/<task>.json for each task. Returns
    lm-eval's results (None when only bpb entries were given) and the files written."""
    from gpt_ds.harness import GPTDSLM

    harness_specs = [spec for spec in specs if spec.kind != "bpb"]
    tasks = load_lm_eval_tasks(harness_specs, include_path or []) if harness_specs else {}
    lm = GPTDSLM(path=str(model_dir), device=device, dtype=dtype, batch_size=batch_size)
    settings = dict(backend="gpt-ds", device=str(lm.device), dtype=str(next(lm.model.parameters()).dtype),
                    batch_size=lm.batch_size, num_fewshot=num_fewshot, limit=limit)
    written = []
    for spec in specs:
        if spec.kind == "bpb":
            figures = text_bpb(lm.model, bpb_tokens(spec, lm.tok_encode, lm.eot_token_id), lm.info.tokenizer,
                               lm.batch_size, limit)
            evaluated = eval_results.evaluated_record(lm.info, **settings, source=spec.source)
            written.append(eval_results.write_result(model_dir, spec.name, figures, evaluated))
            print(f"{spec.name}: {figures['bpb']:.4f} bits per byte ({figures['loss']:.4f} nats per token over "
                  f"{figures['tokens']:,} tokens, {figures['bytes']:,} bytes)")
    results = run_lm_eval(lm, tasks, num_fewshot, limit) if tasks else None
    if results is not None:
        evaluated = eval_results.evaluated_record(lm.info, **settings)
        for task, figures in results["results"].items():
            written.append(eval_results.write_result(
                model_dir, task, figures, evaluated, config=results.get("configs", {}).get(task),
                n_shot=results.get("n-shot", {}).get(task), n_samples=results.get("n-samples", {}).get(task),
                version=results.get("versions", {}).get(task)))
    return results, written
