"""In-loop multiple-choice evaluation (--eval-tasks): jsonl files scored at every evaluation, as
lm-evaluation-harness scores a `multiple_choice` task.

A file is in one of two schemas, told apart by its first line's keys (other keys are ignored):
- HellaSwag's `ctx`, `endings`, `label`: each ending continues the context directly, joined with nothing
  between (the endings carry their own leading space, as data_prep.make_mc writes them);
- the generic `query`, `choices`, `gold`: joined with one space, lm-eval's default target delimiter.

Scoring (lm-eval's `_encode_pair`, `hf` backend and `multiple_choice` metrics): whitespace at the end of the
context moves to the start of the continuation; the context's tokens are tokenize(context), the
continuation's are tokenize(context + continuation) past the context's length. An ending's score is the
sum of its tokens' log-probabilities given everything before them, the sequence cut on the left to the
model's context. A context of whitespace alone (e.g. indentation) would move whole into the continuation
and leave nothing to condition on: it is scored as part of each ending, after the end-of-text token (as
lm-eval scores an empty context). acc: the highest sum is the label. acc_norm: the highest sum / len(ending),
the ending's length in characters (Python's len, without the delimiter), as lm-eval divides by it. Ties go
to the first ending, as numpy's argmax.

The examples are dealt to the ranks (example i to rank i % world size), the endings of several examples
share one forward, whose head runs on the endings' positions alone (under ZeRO-3, through the engine's
forward, on every position), and the correct counts of every task meet in one all-reduce: the same figures for any
world size. Under ZeRO-3 every rank runs the same number of forwards (the extra ones score nothing).

Defines `MCExample`, `MCTask`, `load_tasks` (the files, checked and tokenized: plan_run calls it),
`encode_pair`, the scorers (`model_scorer`, `forward_scorer`), `ending_log_probs`, `local_counts` (this rank's share) and `evaluate_tasks` (the figures, per
task: acc, acc_norm, n).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from gpt_ds import distributed
from gpt_ds.errors import UserError
from gpt_ds.loss import chunked_token_losses
from gpt_ds.tokenizer import EOT_TOKEN

if TYPE_CHECKING:
    from gpt_ds.model import GPT

SCHEMAS = {  # keys of the context, the endings and the label; the delimiter between context and ending
    "hellaswag": ("ctx", "endings", "label", ""),
    "generic": ("query", "choices", "gold", " "),
}
ROWS_PER_FORWARD = 32  # endings scored in one forward (several examples' together)


@dataclass(frozen=True)
class MCExample:
    """One question, tokenized: the context, each ending's tokens, each ending's length in characters."""

    context: list[int]
    endings: list[list[int]]
    chars: list[int]
    label: int


@dataclass(frozen=True)
class MCTask:
    """A file's examples; `name` is the file's stem (its TensorBoard tags and record key)."""

    name: str
    path: Path
    examples: list[MCExample]
    schema: str  # a key of SCHEMAS


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of context + continuation into their tokens (HFLM._encode_pair)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, context_tokens = encode(context + continuation), encode(context)
    return context_tokens, whole[len(context_tokens):]


def load_tasks(paths: list[Path]) -> list[MCTask]:
    """Every file read, checked and tokenized; a bad one is a UserError naming the file and the line."""
    from gpt_ds.tokenizer import get_encoding

    encode = get_encoding().encode_ordinary
    tasks = [load_task(Path(path), encode) for path in paths]
    names = [task.name for task in tasks]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"--eval-tasks names two files with the stem {name!r} (their tags would collide); "
                            "rename one")
    return tasks


def load_task(path: Path, encode: Callable[[str], list[int]], flag: str = "--eval-tasks") -> MCTask:
    """One file read, checked and tokenized; errors name `flag` (the option that gave the file)."""
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file; give jsonl files (python -m data_prep.make_mc makes one)")
    examples, schema = [], None
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{flag} {path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            schema = schema or schema_of(row, where)
            examples.append(parse_example(row, SCHEMAS[schema], where, encode))
    if not examples:
        raise UserError(f"{flag} {path}: no examples; the file is empty")
    return MCTask(path.stem, path, examples, schema)


def schema_of(row: Any, where: str) -> str:
    for name, (ctx, endings, label, _) in SCHEMAS.items():
        if isinstance(row, dict) and {ctx, endings, label} <= row.keys():
            return name
    keys = " or ".join(f"{ctx}/{endings}/{label}" for ctx, endings, label, _ in SCHEMAS.values())
    raise UserError(f"{where}: unknown schema (keys {sorted(row) if isinstance(row, dict) else type(row).__name__}); "
                    f"a line needs the keys {keys}")


def parse_example(row: Any, schema: tuple[str, str, str, str], where: str,
                  encode: Callable[[str], list[int]]) -> MCExample:
    ctx_key, endings_key, label_key, delimiter = schema
    if not isinstance(row, dict) or not {ctx_key, endings_key, label_key} <= row.keys():
        raise UserError(f"{where}: missing one of the keys {ctx_key}, {endings_key}, {label_key} of the file's schema")
    context, endings, label = row[ctx_key], row[endings_key], row[label_key]
    if not isinstance(context, str) or not context:
        raise UserError(f"{where}: empty context ({ctx_key!r}); every example needs a context")
    if not isinstance(endings, list) or len(endings) < 2:
        raise UserError(f"{where}: {endings_key!r} needs at least 2 endings (got "
                        f"{len(endings) if isinstance(endings, list) else type(endings).__name__})")
    for i, ending in enumerate(endings):
        if not isinstance(ending, str) or not ending.strip():
            raise UserError(f"{where}: ending {i} is empty; every ending needs text")
    if isinstance(label, str) and label.strip().isdigit():  # HellaSwag's own files write the label as a string
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise UserError(f"{where}: {label_key!r} {label!r} is out of range; it must be an ending's index, "
                        f"0 to {len(endings) - 1}")
    if context.strip():
        pairs = [encode_pair(encode, context, delimiter + ending) for ending in endings]
    else:  # blank (e.g. indentation): all of it would move to the ending; score it after end-of-text instead
        pairs = [([EOT_TOKEN], encode(context + delimiter + ending)) for ending in endings]
    return MCExample(pairs[0][0], [cont for _, cont in pairs], [len(ending) for ending in endings], label)


def fit_left(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Context and continuation cut on the left to max_length + 1 tokens, as lm-eval's hf backend feeds
    them: the model sees max_length inputs and predicts the continuation's last len(continuation) tokens
    (at most max_length of them)."""
    whole = (context + continuation)[-(max_length + 1):]
    split = len(whole) - min(len(continuation), len(whole) - 1)  # a continuation of no tokens stays empty
    return whole[:split], whole[split:]


def rows_of(example: MCExample, block_size: int) -> list[tuple[list[int], int]]:
    """Each ending's input row (context + ending, cut on the left to block_size + 1 tokens: fit_left) and how
    many of its last positions predict the ending, as lm-eval's hf backend builds them."""
    rows = []
    for ending in example.endings:
        context, kept = fit_left(example.context, ending, block_size)
        rows.append((context + kept, len(kept)))
    return rows


Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y, mask) -> losses where mask


def model_scorer(model: GPT) -> Score:
    """Scores with the head on the endings' positions alone: at a small width the head is most of a
    forward's cost, and the contexts' positions need none of it."""
    def score(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return chunked_token_losses(model.hidden_states(x)[mask], model.head_weight, y[mask],
                                    vocab_size=model.config.vocab_size, softcap=model.config.logit_softcap)
    return score


def forward_scorer(forward: Callable[..., Any]) -> Score:
    """Scores through `forward(x, y, per_token=True)`: the engine's, whose hooks gather ZeRO-3's partitioned
    weights (the head then runs on every position)."""
    return lambda x, y, mask: forward(x, y, per_token=True)[1][mask]


@torch.no_grad()
def ending_log_probs(score: Score, examples: list[MCExample], block_size: int,
                     device: torch.device) -> list[list[float]]:
    """Each example's per-ending sums of log-probabilities, in one forward (rows right-padded: causal
    attention keeps the padding out of the real positions)."""
    rows = [row for example in examples for row in rows_of(example, block_size)]
    width = max(len(whole) - 1 for whole, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (whole, n) in enumerate(rows):
        x[i, :len(whole) - 1] = torch.tensor(whole[:-1])
        y[i, :len(whole) - 1] = torch.tensor(whole[1:])
        mask[i, len(whole) - 1 - n:len(whole) - 1] = True
    losses = score(x.to(device), y.to(device), mask.to(device)).double().cpu()
    sums = [-float(part.sum()) for part in losses.split([n for _, n in rows])]
    out, start = [], 0
    for example in examples:
        out.append(sums[start:start + len(example.endings)])
        start += len(example.endings)
    return out


def correct(sums: list[float], example: MCExample) -> tuple[int, int]:
    """(acc, acc_norm) of one example: 1 where the argmax (the first of equals, as numpy's) is the label."""
    normed = [s / chars for s, chars in zip(sums, example.chars)]
    return int(max(range(len(sums)), key=sums.__getitem__) == example.label), \
        int(max(range(len(normed)), key=normed.__getitem__) == example.label)


def groups(examples: list[MCExample], rank: int, world_size: int) -> list[list[MCExample]]:
    """This rank's examples (i % world_size == rank), in forwards of up to ROWS_PER_FORWARD endings."""
    out: list[list[MCExample]] = []
    rows = 0
    for example in examples[rank::world_size]:
        if not out or rows + len(example.endings) > ROWS_PER_FORWARD:
            out.append([])
            rows = 0
        out[-1].append(example)
        rows += len(example.endings)
    return out


def evaluate_tasks(score: Score, tasks: list[MCTask], block_size: int, device: torch.device,
                   rank: int, world_size: int, same_forwards: bool) -> dict[str, dict[str, float]]:
    """Every task's {acc, acc_norm, n} over all ranks: each rank scores its share (local_counts), one
    all-reduce sums the counts."""
    totals = distributed.all_reduce_sum(local_counts(score, tasks, block_size, device, rank, world_size,
                                                     same_forwards))
    return figures(tasks, totals)


def local_counts(score: Score, tasks: list[MCTask], block_size: int, device: torch.device,
                 rank: int, world_size: int, same_forwards: bool) -> torch.Tensor:
    """(2 * tasks,) float64 on `device`: each task's correct answers on this rank, by acc and by acc_norm.
    `same_forwards` (ZeRO-3): as many forwards as the busiest rank, the extra ones counting nothing
    (distributed.equal_forwards)."""
    counts = [0] * (2 * len(tasks))  # counted on the host (the sums come back there), sent to `device` once
    for t, task in enumerate(tasks):
        share = functools.partial(groups, task.examples, world_size=world_size)
        for batch, counted in distributed.equal_forwards(share, rank, world_size, same_forwards,
                                                         spare=functools.partial(list, task.examples[:1])):
            sums = ending_log_probs(score, batch, block_size, device)
            if counted:
                for example, example_sums in zip(batch, sums):
                    acc, acc_norm = correct(example_sums, example)
                    counts[2 * t] += acc
                    counts[2 * t + 1] += acc_norm
    return torch.tensor(counts, dtype=torch.float64, device=device)


def figures(tasks: list[MCTask], totals: list[float]) -> dict[str, dict[str, float]]:
    """{task: {acc, acc_norm, n}} from the summed counts."""
    return {task.name: {"acc": totals[2 * t] / len(task.examples), "acc_norm": totals[2 * t + 1] / len(task.examples),
                        "n": len(task.examples)} for t, task in enumerate(tasks)}
