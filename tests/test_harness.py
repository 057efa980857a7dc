"""gpt_ds.harness, the lm-evaluation-harness backend: the same numbers as lm-eval's own `hf` backend on the
Hugging Face export of the same weights (loglikelihood and is_greedy, rolling windows, greedy generation with
stop sequences), the shared-context path against a plain full-row log_softmax for both architectures, and
the registration lm-eval's command line looks up."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from data_prep.stdlib_corpus import stdlib_text  # noqa: E402
from gpt_ds.harness import GPTDSLM, cut_at_stops, fit_left, score_continuations  # noqa: E402
from gpt_ds.hf import export_hf  # noqa: E402
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig  # noqa: E402
from gpt_ds.model_io import save_model  # noqa: E402
from test_hf import gpt2_vocabulary_model  # noqa: E402

BLOCK = 64  # gpt2_vocabulary_model's context: long requests are cut on the left


@pytest.fixture(scope="module")
def backends(tmp_path_factory, encoding):
    """(gpt-ds backend on a model folder, lm-eval's hf backend on its export), both fp32 on the CPU."""
    from lm_eval.models.huggingface import HFLM

    work = tmp_path_factory.mktemp("harness")
    _, model_dir = gpt2_vocabulary_model(work / "model")
    export_hf(model_dir, work / "hf")
    ours = GPTDSLM(path=str(model_dir), device="cpu", dtype="float32", batch_size=8)
    theirs = HFLM(pretrained=str(work / "hf"), device="cpu", dtype="float32", batch_size=8)
    return ours, theirs


@pytest.fixture(scope="module")
def text() -> str:
    return stdlib_text().decode("utf-8")[:40_000]


def word_start(text: str, at: int) -> int:
    return text.index(" ", at)


def loglikelihood_requests(text: str) -> list[Instance]:
    """Contexts of a few words to several hundred characters (cut on the left at 64 tokens), each with its
    true continuation and two from elsewhere, of 1 to 80 characters; plus an empty context."""
    rng = random.Random(0)
    pairs = []
    for _ in range(12):
        start = word_start(text, rng.randrange(0, 30_000))
        end = word_start(text, start + rng.choice([5, 40, 300]))
        length = rng.choice([2, 20, 80])
        others = [word_start(text, rng.randrange(0, 30_000)) for _ in range(2)]
        pairs += [(text[start:end], text[b:b + length]) for b in (end, *others)]
    pairs.append(("", " def __init__(self):"))
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def test_loglikelihood_equals_the_hf_backend_on_the_export(backends, text):
    ours, theirs = backends
    requests = loglikelihood_requests(text)
    # continuations the model itself writes (short contexts that end a word): greedy, is_greedy True
    for context in [text[:word_start(text, 60)], text[5000:word_start(text, 5040)], "import"]:
        greedy = ours.generate_until([Instance("generate_until", {}, (context, {"max_gen_toks": 3}), 0)])[0]
        requests.append(Instance("loglikelihood", {}, (context, greedy), len(requests)))
    got, want = ours.loglikelihood(requests, disable_tqdm=True), theirs.loglikelihood(requests, disable_tqdm=True)
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=2e-4)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert any(g[1] for g in got) and not all(g[1] for g in got)  # is_greedy is tested both ways


def test_rolling_loglikelihood_equals_the_hf_backend(backends, text):
    ours, theirs = backends
    # 3 to ~700 tokens: one window, and several (64 tokens each)
    requests = [Instance("loglikelihood_rolling", {}, (text[i * 3000:i * 3000 + n],), i)
                for i, n in enumerate([10, 400, 2500])]
    got, want = ours.loglikelihood_rolling(requests), theirs.loglikelihood_rolling(requests, disable_tqdm=True)
    assert got == pytest.approx(want, rel=1e-5)


def test_greedy_generation_with_stop_sequences_equals_the_hf_backend(backends, text):
    ours, theirs = backends
    contexts = [text[i * 900:i * 900 + 200] for i in range(3)]
    free = ours.generate_until([Instance("generate_until", {}, (c, {"max_gen_toks": 24}), i)
                                for i, c in enumerate(contexts)])
    # stop at a word each continuation writes halfway, at one it never writes, at two where one comes first
    stops = [[free[0].split()[3]], ["zzz-never"], ["zzz-never", free[2].split()[2]]]
    requests = [Instance("generate_until", {}, (c, {"until": until, "max_gen_toks": 24, "do_sample": False}), i)
                for i, (c, until) in enumerate(zip(contexts, stops))]
    got = ours.generate_until(requests)
    assert got == theirs.generate_until(requests, disable_tqdm=True)
    assert got[1] == free[1]
    for i in (0, 2):
        assert free[i].startswith(got[i]) and len(got[i]) < len(free[i]) and stops[i][-1] not in got[i]


@pytest.mark.parametrize("recipe", [{}, MODERN_RECIPE], ids=["gpt2", "modern"])
def test_shared_contexts_score_as_full_rows(recipe):
    """One context run into the KV cache and copied to each continuation's row gives each continuation's
    plain log_softmax sum over the full row (cut on the left), for learned and rotary positions."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97, **recipe)).eval()
    pairs = [([5, 6, 7], [8]), ([5, 6, 7], [9, 10, 11]), ([5, 6, 7], [12, 13]),  # one context, three endings
             ([1, 2, 3], [4, 4]),  # the same length: one batch
             ([1] * 14, [2, 3, 4, 5]), ([40], list(range(16))), ([7], list(range(20, 40))),  # cut on the left
             ([3, 4], [])]  # no tokens of its own (text merged into the context's last token): 0, greedy
    got = score_continuations(model, pairs, batch_size=4)
    for (ctx, cont), (logprob, greedy) in zip(pairs, got):
        context, continuation = fit_left(ctx, cont, 16)
        whole = context + continuation
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0][0].double(), dim=-1)
        rows = range(len(context) - 1, len(whole) - 1)
        assert logprob == pytest.approx(sum(log_probs[i, whole[i + 1]].item() for i in rows), abs=1e-4)
        assert greedy == all(int(log_probs[i].argmax()) == whole[i + 1] for i in rows)


def test_fit_left_and_stops():
    assert fit_left([1, 2, 3], [4, 5], 8) == ([1, 2, 3], [4, 5])
    assert fit_left([1, 2, 3], [4, 5], 3) == ([2, 3], [4, 5])  # 4 tokens: 3 inputs
    assert fit_left([1], list(range(10, 20)), 4) == ([15], [16, 17, 18, 19])  # the continuation's last 4
    assert fit_left([1, 2, 3], [], 8) == ([1, 2, 3], [])  # no tokens to score: none taken from the context
    assert cut_at_stops("a b. c\n\nd", ["\n\n", "."]) == "a b"
    assert cut_at_stops("abc", []) == "abc"


def test_lm_eval_finds_the_backend_by_name(tmp_path):
    assert get_model("gpt-ds") is GPTDSLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own backends stay reachable beside it
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group="lm_eval.models")}
    assert declared.get("gpt-ds") == "gpt_ds.harness:GPTDSLM"


def test_a_modern_model_folder_loads(tmp_path, encoding):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, **MODERN_RECIPE)
    torch.manual_seed(0)
    folder = save_model(tmp_path / "m", GPT(config), config)
    lm = GPTDSLM(path=str(folder), device="cpu", batch_size="auto")
    assert lm.max_length == 32 and lm.batch_size == 16 and lm.eot_token_id == encoding.eot_token
    (logprob, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("def f(x):", " return x"), 0)],
                                     disable_tqdm=True)
    assert logprob < 0
