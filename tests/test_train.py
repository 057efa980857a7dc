"""gpt_ds.train: real DeepSpeed engines on 2 CPU ranks (ZeRO-2, bf16, gloo) through the deepspeed
launcher, plus the bad-input checks that must fail before any work.

The multi-rank runs are few and each checks several things:
- a run to a --target-loss: it stops there, logs TensorBoard (tags, falling loss, samples), keeps
  half of the fp32 optimizer state per rank, and exports weights equal to the engine's own;
- exact resume: a kill -9 at a random step, auto-resume to N, then a resume to 2N: bit-identical
  to 2N steps straight;
- preemption (one process): SIGUSR1 -> checkpoint at a step boundary -> exit code 75;
- divergence (one process): a non-finite loss for 3 steps -> exit 3, the last good checkpoint kept.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt_ds import checkpoint, metrics, reshard, tags
from gpt_ds.config_variant import SHIPPED, ZERO2, write_variant, zero_stage
from gpt_ds.distributed import launcher_command
from gpt_ds.errors import UserError
from gpt_ds.schedule import Schedule
from gpt_ds.train import PREEMPTED_EXIT_CODE, parse_args

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "launch" / "train.py")
RUN_TIMEOUT = 240


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def corpus_data(tmp_path_factory, stdlib_corpus, encoding) -> Path:
    """The stdlib corpus (8 files of 48 KB) prepared by data_prep: 6 files (~130k tokens) train, 2 val."""
    import data_prep

    out = tmp_path_factory.mktemp("data") / "stdlib"
    data_prep.prepare([str(stdlib_corpus)], out, val_fraction=0.25, workers=1, verbose=False)
    return out


def ds_config_variant(folder: Path, micro_batch: int, accumulation: int) -> Path:
    """zero2.json with a smaller micro-batch (quick CPU steps) and the given gradient accumulation."""
    return write_variant(folder / f"zero2_mb{micro_batch}_ga{accumulation}.json",
                         train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accumulation)


@pytest.fixture(scope="module")
def mc_file(corpus_data, tmp_path_factory) -> Path:
    """33 multiple-choice examples from corpus_data's val split (data_prep.make_mc): 17 + 16 over 2 ranks,
    3 forwards against 2 (gpt_ds.mc_eval), so that ZeRO-3's extra forward is exercised."""
    from data_prep.make_mc import MCSettings, make_mc

    out = tmp_path_factory.mktemp("mc") / "stdlib_mc.jsonl"
    make_mc(MCSettings(corpus_data, out, n=33, ctx_tokens=24, ending_tokens=8))
    return out


def assert_eval_tasks(run_dir: Path, info: dict, output: str) -> None:
    """--eval-tasks' figures at every evaluation in TensorBoard, in [0, 1], the last in the record and the summary."""
    scalars = metrics.read_scalars(run_dir / "tb")
    for tag in (tags.eval_acc("stdlib_mc"), tags.eval_acc_norm("stdlib_mc")):
        assert [s for s, _ in scalars[tag]] == [s for s, _ in scalars["val/loss"]], tag
        assert all(0 <= v <= 1 for _, v in scalars[tag]), tag
    task = info["eval_tasks"]["stdlib_mc"]
    assert task["n"] == 33 and task["acc"] == pytest.approx(scalars[tags.eval_acc("stdlib_mc")][-1][1])
    assert task["acc_norm"] == pytest.approx(scalars[tags.eval_acc_norm("stdlib_mc")][-1][1])
    assert f"stdlib_mc acc {task['acc']:.4f} acc_norm {task['acc_norm']:.4f}" in output


@pytest.fixture(scope="module")
def small_ds_config(tmp_path_factory) -> Path:
    return ds_config_variant(tmp_path_factory.mktemp("ds"), micro_batch=4, accumulation=1)


@pytest.fixture(scope="module")
def accumulating_ds_config(tmp_path_factory) -> Path:
    """Two micro-batches of 2 per step: the same tokens per step, through DeepSpeed's accumulation."""
    return ds_config_variant(tmp_path_factory.mktemp("ds"), micro_batch=2, accumulation=2)


TRAIN_FLAGS = dict(block_size=32, warmup_steps=2, lr=1e-2, eval_tokens=1024, log_interval=1)


def train_args(data: Path, out: Path, ds_config: Path, **flags) -> list[str]:
    """launch/train.py's arguments: TRAIN_FLAGS, with `flags` added or replacing them."""
    args = ["--deepspeed_config", str(ds_config), "--data", str(data), "--out", str(out)]
    for name, value in {**TRAIN_FLAGS, **flags}.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def deepspeed_command(args: list[str], ranks: int = 2) -> list[str]:
    return launcher_command(ranks, TRAIN, args)


def run_ok(command: list[str], cwd: Path) -> str:
    """Run to the end with exit 0, in `cwd` (a tmp_path: nothing may land in the repository)."""
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different}"


# ---------------------------------------------------------------------------------------------
# multi-rank runs


@pytest.mark.slow
def test_two_ranks_reach_target_loss(corpus_data, small_ds_config, mc_file, tmp_path):
    run_dir = tmp_path / "run"
    # On the stdlib corpus at this lr the val loss falls steadily: ~7.8 at step 5, ~4.3 at step 15, ~3.8 at
    # step 30 (the target), ~3.5 at 60; the ETA is fitted on the evaluations above the target.
    target = 4.0
    output = run_ok(deepspeed_command(train_args(corpus_data, run_dir, small_ds_config, max_steps=80, lr=3e-3,
                                                 eval_interval=5, save_interval=1000, target_loss=target,
                                                 sample_tokens=12, eval_tasks=mc_file)), tmp_path)
    # It stopped at the target, well before --max-steps, and says so.
    assert "target reached at step" in output
    info = json.loads((run_dir / "model" / "config.json").read_text())["metadata"]
    assert info["target_reached"] is True and info["val_loss"] <= target
    assert info["step"] == info["target_step"] < 80 and info["world_size"] == 2 and info["precision"] == "bf16"
    assert info["tokens"] == info["step"] * 2 * 4 * 32  # ranks x micro-batch x block

    # TensorBoard, read back: the tags are there, the loss falls, samples are logged.
    scalars = metrics.read_scalars(run_dir / "tb")
    for tag in ("train/loss", "val/loss", "val/bpb", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/mfu",
                "train/step_time", "train/memory_gib", "eta/steps_to_target"):
        assert tag in scalars, tag
    # bits per byte at every evaluation, the last one in the record and the summary line; Python source holds
    # ~3.5 bytes a token, so a bpb is well below its loss in nats
    assert [s for s, _ in scalars["val/bpb"]] == [s for s, _ in scalars["val/loss"]]
    assert all(0 < bpb < loss for (_, bpb), (_, loss) in zip(scalars["val/bpb"], scalars["val/loss"]))
    assert info["val_bpb"] == pytest.approx(scalars["val/bpb"][-1][1]) and f"val bpb {info['val_bpb']:.4f}" in output
    train_loss = [v for _, v in scalars["train/loss"]]
    assert train_loss[0] > 10 and sum(train_loss[-5:]) / 5 < train_loss[0] - 2
    assert scalars["val/loss"][-1][1] <= target < scalars["val/loss"][0][1]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, info["step"] + 1))
    assert len(metrics.read_texts(run_dir / "tb", "sample")) == len(scalars["val/loss"])

    # ZeRO-2: each rank holds half of the fp32 master weights (and of Adam's moments).
    tag_dir = checkpoint.latest_tag_dir(run_dir / "checkpoints")
    weights = load_weights(run_dir / "model")
    engine_state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    total = sum(t.numel() for t in engine_state["module"].values())
    partitions = []
    for rank in range(2):
        optim = torch.load(tag_dir / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", map_location="cpu",
                           weights_only=False)["optimizer_state_dict"]
        fp32 = optim["single_partition_of_fp32_groups"]
        partitions.append(sum(t.numel() for t in fp32))
        assert all(t.dtype == torch.float32 for t in fp32)
        moments = optim["base_optimizer_state"]["state"]
        assert sum(s["exp_avg"].numel() for s in moments.values()) == partitions[-1]
    assert sum(partitions) >= total and all(abs(p - total / 2) <= 0.01 * total for p in partitions), (partitions, total)

    # `python -m gpt_ds.export` of the same tag in bf16 gives the engine's bf16 weights themselves.
    exported = subprocess.run([sys.executable, "-m", "gpt_ds.export", str(run_dir), "--tag", tag_dir.name,
                               "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0 and "exported" in exported.stdout, exported.stderr[-2000:]
    bf16_weights = load_weights(tmp_path / "bf16")

    # The consolidated fp32 weights are the engine's own (its bf16 module is their rounding).
    module = {k.removeprefix("module."): v for k, v in engine_state["module"].items()}
    vocab = json.loads((run_dir / "model" / "config.json").read_text())["model"]["vocab_size"]
    module["transformer.wte.weight"] = module["transformer.wte.weight"][:vocab]
    assert module.keys() == weights.keys()
    for name, tensor in weights.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor.to(torch.bfloat16), module[name]), name
        assert torch.equal(bf16_weights[name], module[name]), name

    # --eval-tasks, scored on the 2 ranks at every evaluation; one process scoring the engine's bf16 weights
    # (the bf16 export) in the same batches gives the same counts, and in one rank's batches the same acc
    assert_eval_tasks(run_dir, info, output)
    from gpt_ds.inference import load_for_inference
    from gpt_ds.mc_eval import figures, load_tasks, local_counts, model_scorer

    model, _ = load_for_inference(tmp_path / "bf16")
    model = model.to(torch.bfloat16).eval()
    task = load_tasks([mc_file])
    cpu, block = torch.device("cpu"), model.config.block_size
    two = sum(local_counts(model_scorer(model), task, block, cpu, rank, 2, same_forwards=False) for rank in range(2))
    assert figures(task, two.tolist())["stdlib_mc"] == info["eval_tasks"]["stdlib_mc"]
    one = figures(task, local_counts(model_scorer(model), task, block, cpu, 0, 1, same_forwards=False).tolist())["stdlib_mc"]
    assert one == info["eval_tasks"]["stdlib_mc"]


GATHER_SCRIPT = """
import sys, torch
sys.path.insert(0, REPO_PATH)
from gpt_ds import settings, train
from gpt_ds.validate import Validator
out, *argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds --local_rank=N
with train.start(settings.settings_from_args(argv)) as started:  # RUN_DIR locked for the block
    copy = Validator(started.plan, started.dist_env.rank).whole_model(started.engine.module)  # every rank gathers
if copy is not None:  # rank 0 holds the copy
    torch.save({name: p.detach() for name, p in copy.named_parameters()}, out)
""".replace("REPO_PATH", repr(str(REPO)))


@pytest.mark.slow
def test_zero3_on_two_ranks_reaches_a_target_and_exports_the_gathered_weights(corpus_data, mc_file, tmp_path):
    """ZeRO-3 (ds_configs/zero3.json: bf16, every weight partitioned over the 2 ranks) trains to the target
    that ZeRO-2 reaches, with its evaluations and text samples (collectives under ZeRO-3); the model folder
    (zero_to_fp32 of stage 3's partitions) rounds to the engine's weights gathered from the ranks after
    resuming its last checkpoint (the evaluation-time gather, gpt_ds.validate)."""
    config = write_variant(tmp_path / "zero3_mb4.json", SHIPPED / "zero3.json", train_micro_batch_size_per_gpu=4)
    run_dir = tmp_path / "run"
    args = train_args(corpus_data, run_dir, config, max_steps=80, lr=3e-3, eval_interval=5, save_interval=1000,
                      target_loss=4.0, sample_tokens=12, eval_tasks=mc_file)
    output = run_ok(deepspeed_command(args), tmp_path)
    assert "target reached at step" in output
    info = json.loads((run_dir / "model" / "config.json").read_text())["metadata"]
    assert info["target_reached"] is True and info["val_loss"] <= 4.0 and info["world_size"] == 2
    assert 0 < info["val_bpb"] < info["val_loss"]  # the validation's bits per byte, under ZeRO-3 too
    assert_eval_tasks(run_dir, info, output)  # rank 0 scores 17 examples in 3 forwards, rank 1 16 in 2 (+ 1)
    texts = metrics.read_texts(run_dir / "tb", "sample")
    assert len(texts) == len(metrics.read_scalars(run_dir / "tb")["val/loss"]) and all(t for _, t in texts)
    tag_dir = checkpoint.latest_tag_dir(run_dir / "checkpoints")
    assert sorted(p.name for p in tag_dir.glob("*model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]

    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    gathered_file = tmp_path / "gathered.pt"
    run_ok(launcher_command(2, str(script), [str(gathered_file), *args]), tmp_path)
    gathered = torch.load(gathered_file, weights_only=True)
    weights = load_weights(run_dir / "model")
    gathered["transformer.wte.weight"] = gathered["transformer.wte.weight"][:weights["transformer.wte.weight"].shape[0]]
    assert gathered.keys() == weights.keys()
    for name, tensor in weights.items():
        # the plain copy is fp32 holding the engine's bf16 values: the export's fp32 weights round to them
        assert tensor.dtype == torch.float32 and torch.equal(gathered[name].to(torch.bfloat16).float(), gathered[name])
        assert torch.equal(tensor.to(torch.bfloat16).float(), gathered[name]), name


def kill9_after_a_checkpoint(command: list[str], run_dir: Path, cwd: Path, within_s: float) -> int:
    """Start `command`, kill -9 its launcher and ranks (a crashed node) at a random moment within `within_s`
    after its first checkpoint; the step of the checkpoint it left."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + RUN_TIMEOUT
        while not (run_dir / "checkpoints" / "latest").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, within_s))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return checkpoint.read_client_state(checkpoint.latest_tag_dir(run_dir / "checkpoints"))["step"]


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["random", "epoch"])
def test_exact_resume_and_kill9(corpus_data, accumulating_ds_config, tmp_path, sampling):
    """2N steps straight == kill -9 at a random step, auto-resume to N, resume to 2N: bit for bit
    (with gradient accumulation, so micro-steps are part of what must line up); with --sampling epoch
    the resumes fall mid-epoch (16 steps x 8 windows of the ~4,000 in an epoch)."""
    n = 8
    common = dict(max_steps=2 * n, lr_decay_steps=2 * n, eval_interval=4, save_interval=2, sample_tokens=0,
                  sampling=sampling)
    straight = tmp_path / "straight"
    run_ok(deepspeed_command(train_args(corpus_data, straight, accumulating_ds_config, **common)), tmp_path)

    # kill -9 of the launcher and its ranks (a crashed node) at a random step after the first checkpoint
    run_dir = tmp_path / "resumed"
    killed_at = kill9_after_a_checkpoint(deepspeed_command(train_args(corpus_data, run_dir, accumulating_ds_config,
                                                                      **common)), run_dir, tmp_path, within_s=0.8)
    assert killed_at < n and not (run_dir / "model").exists(), "the kill came too late; the test needs more steps"

    # auto-resume, stopping at N (same --lr-decay-steps), then a resumed run from N to 2N
    first_half = {**common, "max_steps": n}
    run_ok(deepspeed_command(train_args(corpus_data, run_dir, accumulating_ds_config, **first_half)), tmp_path)
    assert checkpoint.latest_tag_dir(run_dir / "checkpoints").name == checkpoint.tag_for(n)
    output = run_ok(deepspeed_command(train_args(corpus_data, run_dir, accumulating_ds_config, **common)), tmp_path)
    assert f"done: step {2 * n}" in output
    assert_same_weights(load_weights(straight / "model"), load_weights(run_dir / "model"))

    # TensorBoard continues from each resumed step: every step once, in order (purge_step).
    steps = [s for s, _ in metrics.read_scalars(run_dir / "tb")["train/loss"]]
    assert steps == list(range(1, 2 * n + 1)), (killed_at, steps)
    # keep-last-K (default 2), and no part-written tag left behind
    tags = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert tags == [checkpoint.tag_for(2 * n - 2), checkpoint.tag_for(2 * n)]
    position = checkpoint.read_client_state(run_dir / "checkpoints" / tags[-1])["data_position"]
    assert position["windows_seen"] == 2 * n * 8 and ("epoch" in position) == (sampling == "epoch")
    if sampling == "epoch":
        assert 0 < position["epoch"] < 1  # mid-epoch


def fp32_config(folder: Path, stage: int, accumulation: int = 1, source: Path = ZERO2) -> Path:
    """`source` (zero2.json) in fp32 (bf16 off) at ZeRO `stage`, micro-batch 4; a Muon config's Newton-Schulz in
    float32 too (DeepSpeed's "gram" on the CPU): the shipped bf16 iteration turns the last-bit differences of
    another world size's gradient sums into 1e-2 weight differences within 8 steps (measured), so an fp32 run
    resumes exactly only with a float32 iteration (docs/resume.md)."""
    def edit(config: dict) -> None:
        zero_stage(stage)(config)
        if config["optimizer"]["type"] == "Muon":
            config["optimizer"]["params"]["ns_method"] = "gram"

    return write_variant(folder / f"fp32_{source.stem}_zero{stage}_ga{accumulation}.json", source, edit=edit,
                         train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=accumulation,
                         bf16={"enabled": False})


def resume_chain(data: Path, run_dir: Path, chain: list[tuple[int, Path, int]], common: dict, cwd: Path) -> None:
    """Train `run_dir` in legs of (ranks, DeepSpeed config, to step), each resuming the last's checkpoint;
    a leg on another world size or ZeRO stage than its checkpoint reshards it, leaving the original
    untouched and the universal copy beside it; a leg on the same ones loads directly."""
    for (ranks, config, steps), before in zip(chain, [None, *chain]):
        args = train_args(data, run_dir, config, **{**common, "max_steps": steps})
        if before is None:
            run_ok(deepspeed_command(args, ranks) if ranks > 1 else [sys.executable, TRAIN, *args], cwd)
            continue
        original = run_dir / "checkpoints" / checkpoint.tag_for(before[2])
        files = checkpoint.read_client_state(original)[checkpoint.FILES]
        output = run_ok(deepspeed_command(args, ranks) if ranks > 1 else [sys.executable, TRAIN, *args], cwd)
        resharded = json.loads(config.read_text())["zero_optimization"] != json.loads(
            before[1].read_text())["zero_optimization"] or ranks != before[0]
        assert (f"resharding {original.name} (" in output) == resharded, output[-3000:]
        assert checkpoint.file_records(original) == files and reshard.universal_dir(original).is_dir() == resharded


def assert_close_run(run_dir: Path, straight: Path, loss_tolerance: float, weight_tolerance: float) -> None:
    """Every step logged once, each loss within `loss_tolerance` of the straight run's, and the exported
    weights within `weight_tolerance`."""
    reference = dict(metrics.read_scalars(straight / "tb")["train/loss"])
    logged = metrics.read_scalars(run_dir / "tb")["train/loss"]
    assert [step for step, _ in logged] == sorted(reference)  # each step once, in order
    losses = dict(logged)
    worst_loss = max(abs(losses[step] - loss) for step, loss in reference.items())
    a, b = load_weights(straight / "model"), load_weights(run_dir / "model")
    worst_weight = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst_loss < loss_tolerance and worst_weight < weight_tolerance, (run_dir.name, worst_loss, worst_weight)


@pytest.mark.slow
def test_a_run_resumes_on_another_number_of_ranks_and_zero_stage(corpus_data, tmp_path):
    """fp32: 2N steps resumed at N on another number of ranks or ZeRO stage, through gpt_ds.reshard, give
    the per-step losses and final weights of 2N steps straight on 2 ranks at ZeRO-2 to 1e-4 (the reduction
    order is the only difference; measured: losses 1e-6, weights 6e-5): 2 -> 1 ranks (accumulation 2,
    derived from the kept global batch of 8), 1 rank at ZeRO-2 -> 2 at ZeRO-1, ZeRO-2 -> ZeRO-3, and ZeRO-3
    resumed directly and then on 1 rank at ZeRO-2. The model is 33 wide (3 heads): ZeRO-3 pads the parameters
    the 2 ranks do not divide (the LayerNorms' 33 gains), and the restore must slice them as it does."""
    n = 4
    zero2, zero1, zero3 = fp32_config(tmp_path, 2), fp32_config(tmp_path, 1), fp32_config(tmp_path, 3)
    zero2_alone = fp32_config(tmp_path, 2, accumulation=2)  # one rank, the same global batch of 8
    # an evaluation and a text sample at the last step: under ZeRO-3 both are collectives
    common = dict(lr_decay_steps=2 * n, eval_interval=2 * n, save_interval=n, sample_tokens=4, n_embd=33, n_head=3)
    straight = tmp_path / "straight"
    run_ok(deepspeed_command(train_args(corpus_data, straight, zero2, **common, max_steps=2 * n)), tmp_path)
    chains = {"2to1": [(2, zero2, n), (1, zero2, 2 * n)], "1to2_zero1": [(1, zero2_alone, n), (2, zero1, 2 * n)],
              "zero2to3": [(2, zero2, n), (2, zero3, 2 * n)],
              "zero3_direct_then_1_zero2": [(2, zero3, n), (2, zero3, n + n // 2), (1, zero2, 2 * n)]}
    for name, chain in chains.items():
        resume_chain(corpus_data, tmp_path / name, chain, common, tmp_path)
        assert_close_run(tmp_path / name, straight, 1e-4, 1e-4)


@pytest.mark.slow
def test_a_bf16_run_resharded_stays_within_its_tolerance(corpus_data, tmp_path):
    """bf16 (the default configs): resumed at N on 1 rank at ZeRO-3, 2N steps stay within 1e-3 of the
    straight run's per-step losses and 0.02 of its weights (measured for 2 -> 1 ranks and for ZeRO-2 -> 3
    apart: 5e-4 and 0.009; bf16 rounds the
    forward differently for another reduction order, and each Adam step can then move a weight by up to
    lr = 0.01 otherwise)."""
    n = 4
    bf16_zero2 = ds_config_variant(tmp_path, 4, 1)
    bf16_zero3 = write_variant(tmp_path / "bf16_zero3.json", bf16_zero2,
                               zero_optimization=json.loads((SHIPPED / "zero3.json").read_text())["zero_optimization"])
    common = dict(lr_decay_steps=2 * n, eval_interval=2 * n, save_interval=n, sample_tokens=4)
    straight = tmp_path / "straight"
    run_ok(deepspeed_command(train_args(corpus_data, straight, bf16_zero2, **common, max_steps=2 * n)), tmp_path)
    resume_chain(corpus_data, tmp_path / "2to1_zero3", [(2, bf16_zero2, n), (1, bf16_zero3, 2 * n)], common, tmp_path)
    assert_close_run(tmp_path / "2to1_zero3", straight, 1e-3, 0.02)


@pytest.mark.slow
def test_a_muon_run_resumes_on_another_number_of_ranks_and_zero_stage(corpus_data, tmp_path):
    """--recipe modern (DeepSpeed's Muon on the hidden matrices, its Adam half on the rest), fp32: 2N steps
    resumed at N on 1 rank (accumulation 2, from the kept global batch) or at ZeRO-1 give the per-step losses
    and final weights of 2N steps straight on 2 ranks at ZeRO-2 to 1e-4, as AdamW runs do: gpt_ds.reshard
    restores Muon's momentum, which DeepSpeed's universal checkpoint does not hold (measured: losses 1e-6,
    weights 2e-6 for 2 -> 1 ranks; ZeRO-2 -> 1 exact). So does ZeRO-3 both ways: 2 ranks at ZeRO-2, at
    ZeRO-3 (the momentum sliced as the weights), then 1 rank at ZeRO-2 (a ZeRO-3 checkpoint's momentum).
    The model is 30 wide in 3 heads (rotary positions need an even head size); on 2 ranks one matrix
    straddles the ranks' ZeRO-2 partitions."""
    n = 4
    muon = SHIPPED / "zero2_muon.json"
    zero2, zero1 = fp32_config(tmp_path, 2, source=muon), fp32_config(tmp_path, 1, source=muon)
    zero2_alone = fp32_config(tmp_path, 2, accumulation=2, source=muon)  # one rank, the same global batch of 8
    # Muon under ZeRO-3 cannot reduce-scatter (gpt_ds.plan.check_optimizer)
    zero3 = write_variant(tmp_path / "fp32_muon_zero3.json", zero2,
                          edit=lambda config: config["zero_optimization"].update(stage=3, reduce_scatter=False))
    common = dict(recipe="modern", lr_decay_steps=2 * n, eval_interval=2 * n, save_interval=n, sample_tokens=0,
                  n_embd=30, n_head=3)
    straight = tmp_path / "straight"
    run_ok(deepspeed_command(train_args(corpus_data, straight, zero2, **common, max_steps=2 * n)), tmp_path)
    chains = {"2to1": [(2, zero2, n), (1, zero2_alone, 2 * n)], "zero2to1": [(2, zero2, n), (2, zero1, 2 * n)],
              "zero2to3_then_1": [(2, zero2, n), (2, zero3, n + n // 2), (1, zero2_alone, 2 * n)]}
    for name, chain in chains.items():
        resume_chain(corpus_data, tmp_path / name, chain, common, tmp_path)
        assert_close_run(tmp_path / name, straight, 1e-4, 1e-4)


@pytest.mark.slow
def test_preemption_signal_saves_and_exits_75(corpus_data, small_ds_config, tmp_path):
    """One process (python launch/train.py, the same code path): SIGUSR1 mid-run -> checkpoint -> exit 75."""
    run_dir = tmp_path / "run"
    command = [sys.executable, TRAIN,
               *train_args(corpus_data, run_dir, small_ds_config, max_steps=10_000, eval_interval=10_000,
                           save_interval=10_000, sample_tokens=0)]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + RUN_TIMEOUT
    while not (run_dir / "tb").exists():  # the loop has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    assert "preempted: checkpoint" in output
    state = checkpoint.read_client_state(checkpoint.latest_tag_dir(run_dir / "checkpoints"))
    assert 0 < state["step"] < 10_000
    assert not (run_dir / "model").exists()


@pytest.mark.slow
def test_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(corpus_data,
                                                                                  small_ds_config, tmp_path):
    """An absurd learning rate: the loss goes non-finite after step 1 and stays so -> exit 3, checkpoint 1 kept."""
    run_dir = tmp_path / "run"
    args = train_args(corpus_data, run_dir, small_ds_config, max_steps=20, save_interval=1, eval_interval=1000,
                      sample_tokens=0, lr=1e30, warmup_steps=0)
    proc = subprocess.run([sys.executable, TRAIN, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 3, proc.stderr[-3000:]
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("launch/train.py: error: the loss was not finite for 3 steps"), last_line
    assert checkpoint.tag_for(1) in last_line and "--lr" in last_line
    assert checkpoint.latest_tag_dir(run_dir / "checkpoints").name == checkpoint.tag_for(1)
    assert not (run_dir / "model").exists()


# ---------------------------------------------------------------------------------------------
# bad input: refused before any work (no DeepSpeed engine, no file written)


def test_lr_schedule_is_warmup_then_cosine_to_floor():
    schedule = Schedule(1.0, 0.1, warmup=10, decay_steps=110)
    lrs = [schedule.lr(step) for step in range(200)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) and lrs[199] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A hand-written prepared folder (train + val shards and manifest) for the fast checks."""
    import numpy as np

    from gpt_ds.data import write_shard

    folder = tmp_path / "data"
    folder.mkdir()
    splits = {}
    for split, size in (("train", 5000), ("val", 1000)):
        name = f"{split}_000000.bin"
        write_shard(folder / name, np.arange(size, dtype=np.uint16) % 50257)
        splits[split] = {"shards": [{"name": name, "tokens": size, "sha256": ""}], "tokens": size, "documents": 1}
    manifest = {"encoding": "r50k_base", "vocab_size": 50257, "eot_token": 50256, "dtype": "uint16", "splits": splits}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def check_refused(argv: list[str], *words: str, world_size: int = 1) -> None:
    with pytest.raises(UserError) as err:
        parse_args(argv, world_size=world_size)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_inputs_are_refused_before_any_work(tiny_data, tmp_path):
    out = tmp_path / "run"
    base = ["--deepspeed_config", str(ZERO2), "--data", str(tiny_data), "--out", str(out)]
    assert parse_args(base).model == "tiny"  # the good case passes

    check_refused(["--deepspeed_config", str(ZERO2), "--data", str(tmp_path / "nope"), "--out", str(out)],
                  "does not exist", "data_prep")
    empty = tmp_path / "empty"
    empty.mkdir()
    check_refused(["--deepspeed_config", str(ZERO2), "--data", str(empty), "--out", str(out)], "manifest.json")
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    del manifest["splits"]["train"]
    no_train = tmp_path / "no_train"
    no_train.mkdir()
    (no_train / "manifest.json").write_text(json.dumps(manifest))
    check_refused(["--deepspeed_config", str(ZERO2), "--data", str(no_train), "--out", str(out)], "'train'")
    (tiny_data / "train_000000.bin").write_bytes(b"not a shard" * 200)
    check_refused(base, "train_000000.bin")


def test_bad_eval_tasks_are_refused_with_the_file_and_line(tiny_data, tmp_path):
    base = ["--deepspeed_config", str(ZERO2), "--data", str(tiny_data), "--out", str(tmp_path / "run")]
    good = {"ctx": "The cat", "endings": [" sat", " ran"], "label": 0}
    cases = {
        "malformed.jsonl": ("{not json", "line 2", "not valid JSON"),
        "label.jsonl": ({**good, "label": 2}, "line 2", "out of range"),
        "one_ending.jsonl": ({**good, "endings": [" sat"]}, "line 2", "at least 2 endings"),
        "no_context.jsonl": ({**good, "ctx": ""}, "line 2", "empty context"),
        "empty_ending.jsonl": ({**good, "endings": [" sat", ""]}, "line 2", "ending 1 is empty"),
        "schema.jsonl": ({"text": "The cat", "options": ["a", "b"]}, "line 1", "unknown schema", "query/choices/gold"),
    }
    for name, (bad, line, *words) in cases.items():
        lines = [json.dumps(good), bad if isinstance(bad, str) else json.dumps(bad)]
        (tmp_path / name).write_text("\n".join(lines[1:] if line == "line 1" else lines) + "\n")
        check_refused([*base, "--eval-tasks", str(tmp_path / name)], name, line, *words)
    check_refused([*base, "--eval-tasks", str(tmp_path / "missing.jsonl")], "missing.jsonl", "no such file")
    (tmp_path / "good.jsonl").write_text(json.dumps(good) + "\n")
    check_refused([*base, "--eval-tasks", f"{tmp_path / 'good.jsonl'},{tmp_path / 'label.jsonl'}"], "label.jsonl")
    check_refused([*base, "--eval-tasks", ","], "names no file")
    parse_args([*base, "--eval-tasks", str(tmp_path / "good.jsonl")])  # the good case passes
    assert not (tmp_path / "run").exists()


def test_bad_model_and_ds_config_are_refused(tiny_data, tmp_path):
    out = tmp_path / "run"
    base = ["--data", str(tiny_data), "--out", str(out)]
    check_refused(["--deepspeed_config", str(ZERO2), *base, "--model", "gpt5"], "gpt5", "tiny")
    check_refused(["--deepspeed_config", str(ZERO2), *base, "--block-size", "100000"], "--block-size", "context")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")
    check_refused(["--deepspeed_config", str(bad_json), *base], "not valid JSON")
    check_refused(["--deepspeed_config", str(tmp_path / "missing.json"), *base], "not found")
    # train_batch_size that no whole number of accumulation steps fits for 3 ranks
    inconsistent = write_variant(tmp_path / "ds.json", train_batch_size=16)
    check_refused(["--deepspeed_config", str(inconsistent), *base], "train_batch_size 16", "3 ranks", world_size=3)
    parse_args(["--deepspeed_config", str(inconsistent), *base], world_size=2)  # 16 = 8 x 1 x 2: fine
    write_variant(tmp_path / "zero3.json", edit=zero_stage(3))
    parse_args(["--deepspeed_config", str(tmp_path / "zero3.json"), *base])  # ZeRO-3 is supported
    # stage 0: nothing for the export to consolidate
    write_variant(tmp_path / "zero0.json", edit=lambda config: config.pop("zero_optimization"))
    check_refused(["--deepspeed_config", str(tmp_path / "zero0.json"), *base], "stage must be 1, 2 or 3 (got 0)")
    scheduler = write_variant(tmp_path / "ds.json", scheduler={"type": "WarmupLR"})
    check_refused(["--deepspeed_config", str(scheduler), *base], "scheduler", "--lr-decay-steps")
    fp16 = REPO / "ds_configs" / "zero2_fp16.json"
    if not torch.cuda.is_available():
        check_refused(["--deepspeed_config", str(fp16), *base], "fp16", "GPU")
    assert not out.exists()


def test_checkpoint_of_another_model_is_refused_and_kept(tiny_data, tmp_path):
    out = tmp_path / "run"
    tag_dir = out / "checkpoints" / checkpoint.tag_for(5)
    tag_dir.mkdir(parents=True)
    other = {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, "vocab_size": 50257, "dropout": 0.0, "bias": True}
    (tag_dir / checkpoint.CLIENT_STATE).write_text(json.dumps({"step": 5, "model": other, "world_size": 1}))
    (out / "checkpoints" / "latest").write_text(tag_dir.name)
    before = sorted(p.name for p in tag_dir.iterdir())
    base = ["--deepspeed_config", str(ZERO2), "--data", str(tiny_data), "--out", str(out)]
    check_refused(base, "different model config", "n_embd")
    check_refused([*base, "--resume", "never"], "already holds checkpoints")
    assert sorted(p.name for p in tag_dir.iterdir()) == before


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN, "--deepspeed_config", str(ZERO2), "--data",
                           str(tmp_path / "nope"), "--out", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("launch/train.py: error: data folder") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_muon_exact_resume_and_kill9(corpus_data, tmp_path):
    """Muon (ds_configs/zero2_muon.json, with accumulation) and the wsd schedule: 2N steps straight ==
    kill -9, auto-resume to N, resume to 2N, bit for bit; the checkpoint holds Muon's momentum."""
    muon_config = write_variant(tmp_path / "zero2_muon_mb2_ga2.json", SHIPPED / "zero2_muon.json",
                                train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=2)
    config = json.loads(muon_config.read_text())
    n = 6
    common = dict(max_steps=2 * n, lr_decay_steps=2 * n, eval_interval=6, save_interval=2, sample_tokens=0,
                  lr=config["optimizer"]["params"]["adam_lr"], schedule="wsd", decay_fraction=0.5)
    straight = tmp_path / "straight"
    run_ok(deepspeed_command(train_args(corpus_data, straight, muon_config, **common)), tmp_path)

    run_dir = tmp_path / "resumed"
    killed_at = kill9_after_a_checkpoint(deepspeed_command(train_args(corpus_data, run_dir, muon_config, **common)),
                                         run_dir, tmp_path, within_s=0.5)
    assert killed_at < n and not (run_dir / "model").exists(), "the kill came too late; the test needs more steps"
    run_ok(deepspeed_command(train_args(corpus_data, run_dir, muon_config, **{**common, "max_steps": n})), tmp_path)
    output = run_ok(deepspeed_command(train_args(corpus_data, run_dir, muon_config, **common)), tmp_path)
    assert f"done: step {2 * n}" in output
    assert_same_weights(load_weights(straight / "model"), load_weights(run_dir / "model"))

    # Each rank's checkpoint: the hidden matrices on Muon (with their momentum buffer, at muon_lr / adam_lr
    # times the schedule's lr), the rest (embeddings, gains, biases) on Adam.
    tag_dir = checkpoint.latest_tag_dir(run_dir / "checkpoints")
    params = config["optimizer"]["params"]
    for rank in range(2):
        optim = torch.load(tag_dir / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", map_location="cpu",
                           weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]
        groups = optim["param_groups"]
        assert [g["use_muon"] for g in groups] == [True, False, False], [g.get("name") for g in groups]
        assert groups[0]["lr"] == pytest.approx(groups[1]["lr"] * params["muon_lr"] / params["adam_lr"])
        assert set(optim["state"][0]) == {"momentum_buffer"} and optim["state"][0]["momentum_buffer"].abs().sum() > 0
        assert {"exp_avg", "exp_avg_sq"} <= set(optim["state"][1])
    settings = json.loads((run_dir / "settings.json").read_text())["settings"]
    assert settings["schedule"] == "wsd" and settings["recipe"] == "gpt2"


def test_muon_trains_the_hidden_matrices_and_adam_the_rest():
    from gpt_ds.model import GPT, PRESETS
    from gpt_ds.engine import hidden_matrices

    hidden = hidden_matrices(GPT(PRESETS["tiny"]))
    layers = PRESETS["tiny"].n_layer
    assert hidden == {f"transformer.h.{i}.{name}.weight" for i in range(layers)
                      for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_a_second_run_into_the_same_folder_is_refused_and_kill9_leaves_no_lock(corpus_data, small_ds_config,
                                                                              tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(corpus_data, run_dir, small_ds_config, max_steps=10_000, eval_interval=10_000,
                      save_interval=10_000, sample_tokens=0)
    first = subprocess.Popen([sys.executable, TRAIN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (run_dir / "settings.json").exists():  # written once the run holds the folder
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run([sys.executable, TRAIN, *args], cwd=tmp_path, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT)
        assert second.returncode == 2 and second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert f"is in use by another training run (pid {first.pid} on " in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    third = subprocess.run([sys.executable, TRAIN, *train_args(corpus_data, run_dir, small_ds_config, max_steps=3,
                                                                 sample_tokens=0)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert third.returncode == 0, third.stderr[-2000:]  # kill -9 left no lock behind


@pytest.mark.slow
def test_compile_trains_and_exports(corpus_data, small_ds_config, tmp_path):
    """--compile: the engine's torch.compile (inductor on the CPU) trains, checkpoints and exports like eager."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, TRAIN, *train_args(corpus_data, run_dir, small_ds_config, max_steps=3,
                                                                sample_tokens=0), "--compile"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalars = metrics.read_scalars(run_dir / "tb")
    losses = [loss for _, loss in scalars["train/loss"]]
    assert len(losses) == 3 and all(loss == loss and loss < 20 for loss in losses)
    assert [s for s, _ in scalars["val/bpb"]] == [3]  # the last step's validation, per-token losses compiled too
    assert (run_dir / "model" / "model.safetensors").is_file()


OOM_AT_START_SCRIPT = """
import sys, torch
sys.path.insert(0, REPO_PATH)
from gpt_ds import train
from gpt_ds.errors import run_cli

def build_engine(plan):  # what a model too large for the device does to DeepSpeed's initialize on a GPU
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB. GPU 0 has 3.2 GiB free")

train.build_engine = build_engine
run_cli(lambda: train.main(sys.argv[1:]), "launch/train.py")
""".replace("REPO_PATH", repr(str(REPO)))


def test_running_out_of_device_memory_at_start_up_is_one_line(corpus_data, tmp_path):
    """An OOM while building the engine (weights and optimizer states; no CUDA here, so the engine's build
    raises what a GPU would) is the start-up line with its knobs, exit 2, no traceback; nothing is written
    but RUN_DIR's lock folder."""
    proc = subprocess.run([sys.executable, "-c", OOM_AT_START_SCRIPT, *train_args(corpus_data, tmp_path / "run", ZERO2)],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("launch/train.py: error: the device ran out of memory at start-up"), errors
    assert "CUDA out of memory. Tried to allocate 18.00 GiB" in errors[0] and "use ZeRO-3" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "settings.json").exists()
