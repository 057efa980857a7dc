"""--init-from (gpt_ds.init_from): a run starts from a gpt-ds model folder or a transformers GPT-2 folder. Its
first step's loss is the parent's own loss on that batch (fp32), at 1 and 2 ranks, ZeRO-2 and ZeRO-3; it
resumes from its own checkpoints, never re-initialised; its lineage reaches the model folder; a flag that
contradicts the folder is one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_ds import metrics
from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.distributed import launcher_command
from gpt_ds.errors import UserError
from gpt_ds.init_from import child_config, load_parent_into, read_parent
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig
from gpt_ds.model_io import load_model, read_model_info, save_model
from gpt_ds.plan import check_same_parent
from gpt_ds.settings import RunSettings
from test_reference import ACCUMULATION, BLOCK, MICRO_BATCH, SEED, fp32_zero2_config, reference_batches

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "launch" / "train.py")
PARENT = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK)  # the GPT-2 vocabulary, padded
BF16_TOLERANCE = 5e-3  # nats: bf16 weights and activations against the parent's fp32 loss (measured 1e-4)


def settings(**flags) -> RunSettings:
    return RunSettings(deepspeed_config="x.json", data="d", out="o", **{"init_from": "parent", **flags})


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory) -> Path:
    """A gpt-ds model folder with distinct weights (random, seeded) and a training record of its own."""
    torch.manual_seed(7)
    model = GPT(PARENT)
    return save_model(tmp_path_factory.mktemp("parent") / "model", model, PARENT,
                      metadata={"step": 300, "tokens": 1_228_800, "preset": None})


# ---- the config and the weights (fast) ------------------------------------------------------------

def test_the_architecture_comes_from_the_folder(parent_dir):
    parent = read_parent(parent_dir)
    assert (parent.kind, parent.tokens, parent.steps) == ("gpt-ds", 1_228_800, 300)
    assert parent.weights_sha256 == read_model_info(parent_dir).weights_sha256
    assert child_config(parent, settings()) == dataclasses.replace(PARENT, dropout=0.0)
    assert child_config(parent, settings(block_size=32)).block_size == 32  # a shorter context
    assert child_config(parent, settings(n_layer=2)) == PARENT  # a flag that agrees


@pytest.mark.parametrize("flags, message", [
    (dict(n_layer=4), "--n-layer 4 contradicts --init-from parent (its n_layer is 2)"),
    (dict(n_embd=64), "--n-embd 64 contradicts --init-from parent (its n_embd is 32)"),
    (dict(model="gpt2"), "--model gpt2 contradicts --init-from parent (a 2-layer, 32-wide model)"),
    (dict(qk_norm=True), "--qk-norm True contradicts --init-from parent (its qk_norm is False)"),
    (dict(block_size=128), "--block-size 128 is longer than --init-from parent's 64 learned positions"),
])
def test_a_flag_that_contradicts_the_folder_is_refused(parent_dir, flags, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        child_config(read_parent(parent_dir), settings(**flags))


def test_rotary_positions_may_grow_the_context(tmp_path):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, **MODERN_RECIPE)
    folder = save_model(tmp_path / "rope", GPT(config), config)
    assert child_config(read_parent(folder), settings(block_size=128)).block_size == 128


def test_not_a_model_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--init-from .*empty is not a model folder"):
        read_parent(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        read_parent(tmp_path / "nowhere")


def test_the_weights_load_and_new_vocabulary_rows_start_at_the_mean(parent_dir):
    parent = read_parent(parent_dir)
    reference, _ = load_model(parent_dir)
    model = GPT(PARENT)
    load_parent_into(model, parent)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    grown = GPT(dataclasses.replace(PARENT, vocab_size=PARENT.vocab_size + 3, block_size=32))
    load_parent_into(grown, parent)
    wte, known = grown.transformer.wte.weight, reference.transformer.wte.weight[:PARENT.vocab_size]
    assert torch.equal(wte[:PARENT.vocab_size], known)
    assert torch.allclose(wte[PARENT.vocab_size:PARENT.vocab_size + 3], known.mean(0).expand(3, -1))
    assert not wte[PARENT.vocab_size + 3:].any()  # the padding rows: zero
    assert torch.equal(grown.transformer.wpe.weight, reference.transformer.wpe.weight[:32])


def test_a_resume_never_reinitialises(tmp_path):
    saved = {"init_from": {"folder": str((tmp_path / "a").resolve())}}
    check_same_parent(saved, settings(init_from=str(tmp_path / "a")), tmp_path)  # the same folder
    check_same_parent(saved, dataclasses.replace(settings(), init_from=None), tmp_path)  # the flag dropped
    with pytest.raises(UserError, match="started from .*a; resuming never re-initialises over its progress"):
        check_same_parent(saved, settings(init_from=str(tmp_path / "b")), tmp_path)
    with pytest.raises(UserError, match="a run that started from random weights"):
        check_same_parent({}, settings(init_from=str(tmp_path / "a")), tmp_path)


# ---- real runs (slow) ---------------------------------------------------------------------------------

def fine_tune(data: Path, parent: Path, out: Path, ds_config: Path, ranks: int, steps: int = 1,
              *extra: str) -> subprocess.CompletedProcess:
    args = ["--deepspeed_config", str(ds_config), "--data", str(data), "--out", str(out), "--init-from", str(parent),
            "--seed", str(SEED), "--max-steps", str(steps), "--log-interval", "1", "--eval-interval", "1000000",
            "--save-interval", "1", "--sample-tokens", "0", *extra]
    command = launcher_command(ranks, TRAIN, args) if ranks > 1 else [sys.executable, TRAIN, *args]
    return subprocess.run(command, cwd=out.parent, capture_output=True, text=True, timeout=600)


def parent_loss(data: Path, loss_of) -> float:
    """The mean loss over step 1's global batch (every rank's micro-batches: equal sizes, so the mean of means)."""
    losses = [loss_of(x, y) for rank in range(2) for x, y in reference_batches(data, 0, rank, world_size=2)]
    return sum(losses) / len(losses)


def ds_config_for(tmp_path: Path, stage: int, ranks: int) -> Path:
    config = fp32_zero2_config()
    config["zero_optimization"] = {**config["zero_optimization"], "stage": stage}
    config["gradient_accumulation_steps"] = ACCUMULATION * 2 // ranks  # the same global batch at 1 and 2 ranks
    return write_variant(tmp_path / f"zero{stage}_fp32.json", source=ZERO2, **config)


@pytest.mark.slow
def test_a_fine_tune_starts_at_the_parents_loss_one_rank_zero2(reference_shards, parent_dir, tmp_path):
    data_dir = reference_shards
    proc = fine_tune(data_dir, parent_dir, tmp_path / "run", ds_config_for(tmp_path, 2, 1), ranks=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (step, loss), = metrics.read_scalars(tmp_path / "run" / "tb")["train/loss"]
    model, _ = load_model(parent_dir)
    with torch.no_grad():
        expected = parent_loss(data_dir, lambda x, y: model(x, y)[1].item())
    assert step == 1 and loss == pytest.approx(expected, abs=1e-5)
    record = read_model_info(tmp_path / "run" / "model").metadata
    assert record["init_from"] == read_parent(parent_dir).lineage()
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["settings"]["init_from"] == str(parent_dir)

    # it resumes from its own checkpoint (never re-initialised), and refuses another parent
    again = fine_tune(data_dir, parent_dir, tmp_path / "run", ds_config_for(tmp_path, 2, 1), 1, 2)
    assert again.returncode == 0 and "resumed from" in again.stdout + again.stderr, again.stderr[-3000:]
    losses = metrics.read_scalars(tmp_path / "run" / "tb")["train/loss"]
    assert [s for s, _ in losses] == [1, 2]
    assert read_model_info(tmp_path / "run" / "model").metadata["init_from"] == read_parent(parent_dir).lineage()
    # in bf16 (the shipped config's precision) the first loss is the parent's fp32 one within BF16_TOLERANCE
    bf16 = write_variant(tmp_path / "zero2_bf16.json", source=ZERO2, train_micro_batch_size_per_gpu=MICRO_BATCH,
                         gradient_accumulation_steps=ACCUMULATION * 2)
    proc = fine_tune(data_dir, parent_dir, tmp_path / "bf16", bf16, ranks=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (_, bf16_loss), = metrics.read_scalars(tmp_path / "bf16" / "tb")["train/loss"]
    print(f"bf16 first loss {bf16_loss:.6f}, fp32 parent {expected:.6f}, difference {bf16_loss - expected:+.2e}")
    assert bf16_loss == pytest.approx(expected, abs=BF16_TOLERANCE)

    other = fine_tune(data_dir, tmp_path / "run" / "model", tmp_path / "run", ds_config_for(tmp_path, 2, 1), 1, 3)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "resuming never re-initialises over its progress" in other.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_fine_tune_of_a_transformers_gpt2_starts_at_its_loss_two_ranks_zero3(reference_shards, tmp_path):
    data_dir = reference_shards
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK, initializer_range=0.1,
                                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    reference = transformers.GPT2LMHeadModel(hf_config).eval()
    reference.save_pretrained(tmp_path / "gpt2-hf")
    proc = fine_tune(data_dir, tmp_path / "gpt2-hf", tmp_path / "run", ds_config_for(tmp_path, 3, 2), ranks=2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (step, loss), = metrics.read_scalars(tmp_path / "run" / "tb")["train/loss"]
    with torch.no_grad():  # transformers' own logits, their cross-entropy against the same targets
        expected = parent_loss(data_dir, lambda x, y: torch.nn.functional.cross_entropy(
            reference(x).logits.flatten(0, 1), y.flatten()).item())
    assert step == 1 and loss == pytest.approx(expected, abs=1e-5)
    assert read_model_info(tmp_path / "run" / "model").metadata["init_from"]["kind"] == "huggingface"
