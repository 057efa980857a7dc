"""gpt_ds.mc_eval: --eval-tasks' scoring against a plain log_softmax on a real tiny GPT, acc against acc_norm,
the split over ranks, the schemas, and the record that carries the figures."""

from __future__ import annotations

import json

import pytest
import torch

from gpt_ds import mc_eval
from gpt_ds.mc_eval import (MCExample, encode_pair, ending_log_probs, forward_scorer, load_tasks, local_counts,
                            model_scorer)
from gpt_ds.model import GPT
from gpt_ds.model_config import GPTConfig
from gpt_ds.record import RunRecord

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def reference_sum(model: GPT, context: list[int], ending: list[int], block_size: int) -> float:
    """By hand: log_softmax of the full logits, the ending's targets summed; the sequence cut on the left."""
    whole = (context + ending)[-(block_size + 1):]
    logits, _ = model(torch.tensor([whole[:-1]]))
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    targets = whole[1:]
    n = min(len(ending), len(targets))
    return sum(log_probs[i, targets[i]].item() for i in range(len(targets) - n, len(targets)))


def example(context: list[int], endings: list[list[int]], label: int = 0) -> MCExample:
    return MCExample(context, endings, [len(e) * 3 for e in endings], label)


def test_ending_sums_equal_a_plain_log_softmax(model):
    examples = [example([5, 6, 7], [[8], [9, 10, 11], [12, 13]]),
                example([1] * 14, [[2, 3, 4, 5], [6]]),  # 18 tokens: cut on the left to the context (16 + 1)
                example([40], [[41, 42]], label=0)]
    cpu = torch.device("cpu")
    sums = ending_log_probs(model_scorer(model), examples, CONFIG.block_size, cpu)
    for ex, got in zip(examples, sums):
        want = [reference_sum(model, ex.context, ending, CONFIG.block_size) for ending in ex.endings]
        assert got == pytest.approx(want, abs=1e-4)
    # through the model's forward (as under ZeRO-3), and one example alone, not in a padded batch: the same
    assert [s for ex in ending_log_probs(forward_scorer(model), examples, CONFIG.block_size, cpu) for s in ex] == \
        pytest.approx([s for ex in sums for s in ex], abs=1e-4)
    assert ending_log_probs(model_scorer(model), examples[1:2], CONFIG.block_size, cpu)[0] == pytest.approx(
        sums[1], abs=1e-4)


def test_acc_and_acc_norm_differ_where_lengths_differ():
    # sums -10 (5 characters) and -12 (20 characters): the highest sum is ending 0, per character ending 1
    case = MCExample([1], [[2], [3]], chars=[5, 20], label=1)
    assert mc_eval.correct([-10.0, -12.0], case) == (0, 1)
    assert mc_eval.correct([-10.0, -12.0], MCExample([1], [[2], [3]], chars=[5, 20], label=0)) == (1, 0)
    assert mc_eval.correct([-1.0, -1.0], MCExample([1], [[2], [3]], chars=[4, 4], label=0)) == (1, 1)  # ties: first


def test_encode_pair_moves_the_contexts_trailing_space_to_the_ending(encoding):
    encode = encoding.encode_ordinary
    assert encode_pair(encode, "The cat", " sat") == (encode("The cat"), encode("The cat sat")[len(encode("The cat")):])
    assert encode_pair(encode, "The cat ", "sat") == encode_pair(encode, "The cat", " sat")


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_both_schemas_and_their_delimiters(tmp_path, encoding):
    write_jsonl(tmp_path / "hs.jsonl", [{"ctx": "The cat", "endings": [" sat", " ran"], "label": 1, "offset": 3}])
    write_jsonl(tmp_path / "gen.jsonl", [{"query": "The cat", "choices": ["sat", "ran"], "gold": 0}])
    hs, gen = load_tasks([tmp_path / "hs.jsonl", tmp_path / "gen.jsonl"])
    assert (hs.name, gen.name) == ("hs", "gen")
    # ctx + ending with nothing between; query + " " + choice: the same tokens here
    assert hs.examples[0].endings == gen.examples[0].endings == [encoding.encode_ordinary(" sat"),
                                                                  encoding.encode_ordinary(" ran")]
    assert hs.examples[0].chars == [4, 4] and gen.examples[0].chars == [3, 3]  # without the delimiter, as lm-eval
    assert (hs.examples[0].label, gen.examples[0].label) == (1, 0)
    # a context of whitespace alone: scored with each ending, after end-of-text
    write_jsonl(tmp_path / "blank.jsonl", [{"ctx": "\n    ", "endings": [" sat", " ran"], "label": 0}])
    blank = load_tasks([tmp_path / "blank.jsonl"])[0].examples[0]
    assert blank.context == [50256] and blank.endings[0] == encoding.encode_ordinary("\n     sat")


def test_the_split_over_ranks_gives_the_same_counts_and_zero3_the_same_forwards(model, tmp_path, monkeypatch):
    monkeypatch.setattr(mc_eval, "ROWS_PER_FORWARD", 4)  # one example of 4 endings per forward
    rows = [{"ctx": f"Line {i} of the file", "endings": [f" ends {j}" * (1 + j) for j in range(4)], "label": i % 4}
            for i in range(21)]
    write_jsonl(tmp_path / "task.jsonl", rows)
    tasks = load_tasks([tmp_path / "task.jsonl"])
    cpu = torch.device("cpu")
    one = local_counts(model_scorer(model), tasks, CONFIG.block_size, cpu, 0, 1, same_forwards=False)
    calls: list[int] = []

    def counting(x, y, mask):
        calls.append(x.size(0))
        return model_scorer(model)(x, y, mask)

    for world in (2, 4):  # 21 examples: 11 + 10, and 6 + 5 + 5 + 5
        for zero3 in (False, True):
            shares, forwards = [], []
            for rank in range(world):
                calls.clear()
                shares.append(local_counts(counting, tasks, CONFIG.block_size, cpu, rank, world, same_forwards=zero3))
                forwards.append(len(calls))
            assert torch.equal(sum(shares), one)
            # under ZeRO-3 every rank runs the busiest rank's forwards; otherwise each its own
            assert forwards == [-(-21 // world)] * world if zero3 else [len(range(r, 21, world)) for r in range(world)]
    figures = mc_eval.figures(tasks, one.tolist())["task"]
    assert figures["n"] == 21 and 0 <= figures["acc"] <= 1 and 0 <= figures["acc_norm"] <= 1


def test_the_record_carries_the_tasks_and_older_records_load():
    record = RunRecord(step=3, eval_tasks={"mc": {"acc": 0.5, "acc_norm": 0.25, "n": 8}})
    assert RunRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert RunRecord.from_dict({"step": 3}).eval_tasks == {}  # written before --eval-tasks existed
    assert RunRecord.from_dict({"eval_tasks": {"mc": {"acc": "x"}, "ok": {"acc": 1, "acc_norm": 0, "n": 2}}}
                               ).eval_tasks == {"ok": {"acc": 1.0, "acc_norm": 0.0, "n": 2}}
