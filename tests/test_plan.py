"""gpt_ds.plan: a run's settings resolved into a Plan (model shape, training sequence, schedule,
data, resume), every check before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt_ds import checkpoint, ds_config
from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.data import write_shard
from gpt_ds.errors import UserError
from gpt_ds.model import PRESETS
from gpt_ds.plan import changed_settings, plan_run
from gpt_ds.settings import settings_from_args



@pytest.fixture
def shards(tmp_path) -> Path:
    """llm.c-named shards without a manifest: 5000 train tokens, 1000 val tokens."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_shard(folder / "train_000000.bin", np.arange(5000, dtype=np.uint16))
    write_shard(folder / "val_000000.bin", np.arange(1000, dtype=np.uint16))
    return folder


def plan_for(shards: Path, tmp_path: Path, *flags: str, world_size: int = 1):
    argv = ["--deepspeed_config", str(ZERO2), "--data", str(shards), "--out", str(tmp_path / "run"), *flags]
    return plan_run(settings_from_args(argv), world_size)


def test_a_shape_of_its_own_and_a_training_length_apart_from_the_context(shards, tmp_path):
    plan = plan_for(shards, tmp_path, "--model", "gpt2", "--n-layer", "2", "--n-head", "4", "--n-embd", "64",
                    "--seq-len", "32", "--max-steps", "30", "--lr", "1e-3")
    config = plan.model_config
    assert (config.n_layer, config.n_head, config.n_embd) == (2, 4, 64)
    assert config.block_size == PRESETS["gpt2"].block_size == 1024  # the learned positions stay
    assert plan.seq_len == 32 and plan.train.block_size == 32 and plan.val.block_size == 32
    assert plan.tokens_per_step == plan.ds_config["train_batch_size"] * 32
    assert (plan.schedule.peak, plan.schedule.floor, plan.schedule.warmup, plan.schedule.decay_steps) == (
        1e-3, pytest.approx(1e-4), 3, 30)
    assert not (tmp_path / "run").exists()  # planning writes nothing


def test_bad_shapes_are_refused_with_the_flag(shards, tmp_path):
    with pytest.raises(UserError, match="divisible by n_head"):
        plan_for(shards, tmp_path, "--n-embd", "100", "--n-head", "3")
    with pytest.raises(UserError, match=r"--seq-len 256 exceeds the model's context \(128"):
        plan_for(shards, tmp_path, "--seq-len", "256")
    with pytest.raises(UserError, match="lower --seq-len"):  # a window longer than the val split
        plan_for(shards, tmp_path, "--block-size", "2048")


def save_state_of_two_ranks(plan, run_dir: Path) -> Path:
    """A checkpoint's client state (no weights: planning reads none) of `plan`'s run on 2 ranks x 8 rows."""
    tag_dir = run_dir / "checkpoints" / checkpoint.tag_for(4)
    tag_dir.mkdir(parents=True)
    saved_config = {**plan.ds_config, "train_batch_size": 16, "gradient_accumulation_steps": 1}  # 2 ranks x 8
    state = {"step": 4, "model": plan.model_config.to_dict(), "world_size": 2, "ds_config": saved_config}
    (tag_dir / checkpoint.CLIENT_STATE).write_text(json.dumps(state))
    (run_dir / "checkpoints" / checkpoint.LATEST).write_text(tag_dir.name)
    return tag_dir


def test_resume_is_checked_against_the_plan(shards, tmp_path):
    tag_dir = save_state_of_two_ranks(plan_for(shards, tmp_path), tmp_path / "run")
    same = plan_for(shards, tmp_path, world_size=2)
    assert same.resume_from == tag_dir and same.reshard is None and "checkpoint" not in same.ds_config
    # another world size: the checkpoint's global batch is kept (accumulation derived) and the load reshards
    one = plan_for(shards, tmp_path)
    assert one.reshard == "2 -> 1 ranks" and "checkpoint" not in one.ds_config  # gpt_ds.reshard restores it
    assert (one.ds_config["train_batch_size"], one.ds_config["gradient_accumulation_steps"]) == (16, 2)
    assert one.stream.global_batch == 16
    with pytest.raises(UserError, match=r"global batch of 16\).*not a multiple of micro-batch 8 x 4 ranks; resume on"):
        plan_for(shards, tmp_path, world_size=4)  # 4 ranks x 8 rows are more than the step's 16 windows
    with pytest.raises(UserError, match="different model config"):
        plan_for(shards, tmp_path, "--n-layer", "3", world_size=2)
    zero3 = write_variant(tmp_path / "zero3.json", zero_optimization={"stage": 3})
    assert plan_for(shards, tmp_path, "--deepspeed_config", str(zero3), world_size=2).reshard == "ZeRO stage 2 -> 3"
    assert plan_for(shards, tmp_path, "--deepspeed_config", str(zero3)).reshard == "2 -> 1 ranks, ZeRO stage 2 -> 3"
    # another optimizer than the checkpoint's is refused: its states are not the other's
    with pytest.raises(UserError, match=r"trained with AdamW and .*zero2_muon.json has Muon: resume with the chec"):
        plan_for(shards, tmp_path, "--deepspeed_config", str(MUON), world_size=2)
    # a Muon run reshards as an AdamW run does (gpt_ds.reshard restores Muon's momentum itself)
    save_state_of_two_ranks(plan_for(shards, tmp_path / "muon", "--deepspeed_config", str(MUON)), tmp_path / "muon" / "run")
    assert plan_for(shards, tmp_path / "muon", "--deepspeed_config", str(MUON)).reshard == "2 -> 1 ranks"
    with pytest.raises(UserError, match=r"trained with Muon and .*zero2.json has AdamW"):
        plan_for(shards, tmp_path / "muon", world_size=2)


def test_the_json_is_read_and_its_keys_checked_once_even_on_a_resume_on_another_world_size(shards, tmp_path,
                                                                                           monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    config = {**json.loads(ZERO2.read_text()), "gradient_clipin": 1.0}  # a key DeepSpeed ignores: one warning
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    save_state_of_two_ranks(plan_for(shards, tmp_path, "--deepspeed_config", str(path)), tmp_path / "run")
    capsys.readouterr()
    reads = []
    load = ds_config.load
    monkeypatch.setattr(ds_config, "load", lambda source: reads.append(source) or load(source))
    plan = plan_for(shards, tmp_path, "--deepspeed_config", str(path))  # 2 -> 1 ranks: re-resolved for 16 rows
    assert plan.reshard == "2 -> 1 ranks" and (plan.micro_batch, plan.accumulation, plan.tokens_per_step) == (
        8, 2, 16 * 128)
    assert reads == [str(path)] and capsys.readouterr().err.count("warning: DeepSpeed config") == 1
    assert plan.settings.schedule is None and plan.identity()["settings"]["schedule"] == "cosine"
    assert (plan.weight_decay, plan.precision, plan.zero_stage) == (0.1, "bf16", 2)


def test_changed_settings_name_what_differs_from_the_checkpoint(shards, tmp_path):
    saved = plan_for(shards, tmp_path, "--max-steps", "100").settings.to_dict()
    now = plan_for(shards, tmp_path, "--max-steps", "200", "--seed", "2").settings
    message = changed_settings(saved, now)
    assert "seed 1337 -> 2" in message and "schedule length 100 -> 200" in message and "max_steps" not in message
    assert changed_settings(saved, plan_for(shards, tmp_path, "--max-steps", "100").settings) == ""


MUON = ZERO2.parent / "zero2_muon.json"


def test_the_modern_recipe_resolves_to_its_architecture_wsd_and_muon(shards, tmp_path):
    plan = plan_for(shards, tmp_path, "--recipe", "modern", "--deepspeed_config", str(MUON), "--max-steps", "50")
    config = plan.model_config
    assert (config.pos_embedding, config.qk_norm, config.mlp, config.zero_init_proj, config.tie_head,
            config.logit_softcap) == ("rope", True, "relu2", True, False, 30.0)
    assert (plan.schedule.kind, plan.schedule.decay_fraction, plan.schedule.decay_start) == ("wsd", 0.2, 40)
    params = plan.ds_config["optimizer"]["params"]
    assert plan.schedule.peak == params["adam_lr"] and plan.muon_lr_ratio == params["muon_lr"] / params["adam_lr"]
    assert plan.settings.to_dict()["recipe"] == "modern" and plan.settings.to_dict()["schedule"] == "wsd"
    # explicit flags override the recipe; the default recipe is today's GPT-2 with AdamW
    plan = plan_for(shards, tmp_path, "--recipe", "modern", "--deepspeed_config", str(MUON), "--schedule", "cosine",
                    "--tie-head")
    assert plan.schedule.kind == "cosine" and plan.model_config.tie_head and plan.model_config.pos_embedding == "rope"
    plan = plan_for(shards, tmp_path)
    assert plan.schedule.kind == "cosine" and plan.muon_lr_ratio is None
    assert plan.model_config == PRESETS["tiny"]


def test_modern_without_muon_and_muon_without_its_lrs_are_refused(shards, tmp_path):
    with pytest.raises(UserError, match="--recipe modern trains with Muon.*zero2_muon.json"):
        plan_for(shards, tmp_path, "--recipe", "modern")
    write_variant(tmp_path / "muon.json", MUON, lambda config: config["optimizer"]["params"].pop("adam_lr"))
    with pytest.raises(UserError, match="muon_lr >= 0 and adam_lr > 0"):
        plan_for(shards, tmp_path, "--deepspeed_config", str(tmp_path / "muon.json"))
    # ZeRO-3 with an option it cannot take: Muon with reduce-scatter, --compile
    write_variant(tmp_path / "muon3.json", MUON, zero_optimization={"stage": 3})
    with pytest.raises(UserError, match=r"Muon under ZeRO-3 cannot reduce-scatter .* \"reduce_scatter\": false"):
        plan_for(shards, tmp_path, "--deepspeed_config", str(tmp_path / "muon3.json"))
    write_variant(tmp_path / "muon3.json", MUON, zero_optimization={"stage": 3, "reduce_scatter": False})
    assert plan_for(shards, tmp_path, "--deepspeed_config", str(tmp_path / "muon3.json")).zero_stage == 3
    with pytest.raises(UserError, match="--compile does not work with ZeRO-3 .* drop --compile or use ZeRO-2"):
        plan_for(shards, tmp_path, "--deepspeed_config", str(tmp_path / "muon3.json"), "--compile")
    # Muon on its own (the gpt2 architecture) is a plan too
    assert plan_for(shards, tmp_path, "--deepspeed_config", str(MUON)).muon_lr_ratio > 1


def test_a_checkpoint_from_before_the_recipe_settings_shows_no_change(shards, tmp_path):
    saved = plan_for(shards, tmp_path).settings.to_dict()
    for key in ("recipe", "schedule", "decay_fraction", "pos_embedding", "qk_norm", "mlp", "zero_init_proj",
                "tie_head", "logit_softcap"):
        del saved[key]
    assert changed_settings(saved, plan_for(shards, tmp_path).settings) == ""
    assert "schedule 'cosine' -> 'wsd'" in changed_settings(saved, plan_for(shards, tmp_path, "--schedule", "wsd").settings)


def overwrite_token(shard: Path, position: int, value: int) -> None:
    """Overwrite one token in place (same size: what a stray write or a bad disk does)."""
    with open(shard, "r+b") as fh:
        fh.seek(1024 + 2 * position)
        fh.write(np.uint16(value).tobytes())


def test_tokens_outside_the_vocabulary_are_refused_at_the_start_sampled_or_all(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shard = write_shard(folder / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 1_000_000))
    overwrite_token(shard, 30_000, 65535)  # between the 16 sampled runs (at 0, ~66k, ~133k, ...)
    plan_for(folder, tmp_path)  # the cheap check samples: this one passes unseen
    with pytest.raises(UserError, match=r"train_000000\.bin holds token id 65535 at position 30,000, outside the "
                                        r"model's vocabulary \(50257 tokens\).*--verify"):
        plan_for(folder, tmp_path, "--verify-data")
    overwrite_token(shard, 100, 60000)  # inside the first sampled run
    with pytest.raises(UserError, match="holds token id 60000 at position 100"):
        plan_for(folder, tmp_path)


def test_verify_data_checks_every_sha256_of_a_prepared_folder(tmp_path, python_corpus):
    import data_prep

    folder = tmp_path / "prepared"
    data_prep.prepare([str(python_corpus(60_000))], folder, val_fraction=0.0, workers=1, verbose=False)
    shard = folder / "train_000000.bin"
    overwrite_token(shard, 5, 11)  # still a valid token: only the hash can tell
    plan_for(folder, tmp_path)
    with pytest.raises(UserError, match=r"train_000000\.bin.*sha256"):
        plan_for(folder, tmp_path, "--verify-data")


def test_a_floor_above_the_peak_and_a_run_inside_its_data_are_refused(shards, tmp_path):
    with pytest.raises(UserError, match=r"--min-lr 0\.01 is above the peak learning rate 0\.001"):
        plan_for(shards, tmp_path, "--lr", "1e-3", "--min-lr", "1e-2")
    for out in (shards, shards / "run"):
        argv = ["--deepspeed_config", str(ZERO2), "--data", str(shards), "--out", str(out)]
        with pytest.raises(UserError, match="overlap; give the run a folder of its own"):
            plan_run(settings_from_args(argv), 1)
    assert not (shards / "run").exists() and not (shards / "checkpoints").exists()


def test_a_manifest_whose_vocab_size_is_not_a_number_is_one_line(tmp_path, python_corpus):
    import data_prep

    folder = tmp_path / "prepared"
    data_prep.prepare([str(python_corpus(60_000))], folder, val_fraction=0.0, workers=1, verbose=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": "x"}))
    with pytest.raises(UserError, match="has vocab_size 'x', not a number"):
        plan_for(folder, tmp_path)


def test_running_out_of_device_memory_names_the_knobs(shards, tmp_path):
    """The line a CUDA OOM in the loop becomes (gpt_ds.train catches torch.cuda.OutOfMemoryError; on a GPU
    tests/test_gpu.py provokes a real one)."""
    import torch

    err = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 1.5 GiB free\nmore")
    line = str(plan_for(shards, tmp_path).out_of_memory(1, err))
    assert "\n" not in line and line.startswith("the device ran out of memory at step 1 (tiny, micro-batch 8 x 128 ")
    assert "ZeRO-2, activation checkpointing off; CUDA out of memory. Tried to allocate 2.00 GiB" in line
    assert "lower train_micro_batch_size_per_gpu" in line and "add --activation-checkpointing" in line
    assert line.endswith("or use ZeRO-3 (ds_configs/zero3.json)")
    line = str(plan_for(shards, tmp_path, "--activation-checkpointing").out_of_memory(5, err))
    assert "activation checkpointing on" in line and "add --activation-checkpointing" not in line
    # at start-up (the engine's weights and optimizer states, or a checkpoint's): the micro-batch is no knob
    line = str(plan_for(shards, tmp_path).out_of_memory(None, err))
    assert "\n" not in line and line.startswith("the device ran out of memory at start-up, before step 1, holding "
                                                "tiny's weights and optimizer states (ZeRO-2, 1 rank(s); CUDA out of")
    assert line.endswith("use ZeRO-3 (ds_configs/zero3.json), which partitions the weights too, or train on more "
                         "ranks, or pick a smaller --model") and "micro_batch" not in line


def test_on_cuda_torch_adamw_runs_fused_unless_the_json_says_otherwise():
    from gpt_ds.plan import fit_to_device

    config = json.loads(ZERO2.read_text())
    assert fit_to_device(config, cuda=True)["optimizer"]["params"]["fused"] is True
    assert "fused" not in config["optimizer"]["params"]  # a copy: the JSON's own dict is untouched
    assert fit_to_device(config, cuda=False) == config
    config["optimizer"]["params"]["fused"] = False
    assert fit_to_device(config, cuda=True)["optimizer"]["params"]["fused"] is False
    muon = json.loads(MUON.read_text())
    assert fit_to_device(muon, cuda=True) == muon


def test_the_precision_must_suit_the_device():
    from gpt_ds.plan import check_precision

    check_precision("bf16", "z.json", cuda=False, bf16_supported=True)  # the CPU: bf16 works
    check_precision("fp16", "z.json", cuda=True, bf16_supported=False)  # a V100: fp16
    check_precision("fp32", "z.json", cuda=False, bf16_supported=False)
    with pytest.raises(UserError, match="z.json trains in fp16, which needs a GPU; on the CPU use ds_configs/zero2.json"):
        check_precision("fp16", "z.json", cuda=False, bf16_supported=True)
    with pytest.raises(UserError, match="bf16, which this GPU does not support .* ds_configs/zero2_fp16.json"):
        check_precision("bf16", "z.json", cuda=True, bf16_supported=False)
