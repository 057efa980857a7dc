"""Planning a run: every check that can fail on bad input, before any rank starts or any file is
written. `plan_run(settings, world_size)` is the one resolver: it reads the DeepSpeed JSON once, checks its
keys, and resolves it, the model shape, the data, the schedule and the checkpoint to resume from into one
`Plan`; the loop then only executes it."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt_ds import checkpoint, ds_config, sampler
from gpt_ds.ds_config import DeepSpeedConfig
from gpt_ds.ds_keys import check_ds_config_keys
from gpt_ds.errors import UserError, first_line
from gpt_ds.hardware import gpu_native_bf16
from gpt_ds.init_from import Parent, child_config, read_parent
from gpt_ds.mc_eval import MCTask, load_tasks
from gpt_ds.recipes import MUON_CONFIG, RECIPES
from gpt_ds.model_config import GPTConfig, config_from_preset
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir
from gpt_ds.schedule import Schedule
from gpt_ds.settings import RunSettings


@dataclass
class Plan:
    """What `settings` resolve to for `world_size` ranks, checked before any work."""

    settings: RunSettings
    ds: DeepSpeedConfig
    model_config: GPTConfig
    seq_len: int  # training sequence length (<= model_config.block_size)
    schedule: Schedule
    train: sampler.TokenWindows | sampler.ChatWindows
    val: sampler.TokenWindows | sampler.ChatWindows | None
    resume_from: Path | None
    world_size: int
    reshard: str | None = None  # a resume on another world size or ZeRO stage: what changed ("2 -> 1 ranks")
    eval_tasks: list[MCTask] = dataclasses.field(default_factory=list)  # --eval-tasks, read and tokenized
    parent: Parent | None = None  # --init-from: the folder whose weights a fresh run starts from

    @functools.cached_property
    def stream(self) -> sampler.TrainStream:
        """The run's training stream: the global batch of each step, sliced per rank and micro-step."""
        return sampler.TrainStream(self.train, self.ds.train_batch_size, self.settings.seed, self.settings.sampling)

    @property
    def run_dir(self) -> RunDir:
        return self.settings.run_dir

    @property
    def ds_config(self) -> dict[str, Any]:
        """The resolved DeepSpeed JSON, as deepspeed.initialize gets it."""
        return self.ds.config

    @property
    def precision(self) -> str:
        return self.ds.precision

    @property
    def zero_stage(self) -> int:
        return self.ds.zero_stage

    @property
    def micro_batch(self) -> int:
        return self.ds.micro_batch

    @property
    def accumulation(self) -> int:
        return self.ds.accumulation

    @property
    def muon_lr_ratio(self) -> float | None:
        """Muon: the matrices' lr over the schedule's (muon_lr / adam_lr); else None."""
        return self.ds.muon_lr_ratio

    @property
    def weight_decay(self) -> float:
        return self.ds.weight_decay

    @property
    def tokens_per_step(self) -> int:
        return self.ds.train_batch_size * self.seq_len

    def out_of_memory(self, step: int | None, err: BaseException) -> UserError:
        """The one line for a device that ran out of memory at `step`: what this rank holds, and the knobs
        that lower it (the global batch, hence the data stream, stays the same with any of them). `step` None:
        at start-up, building the engine or loading its checkpoint, where only the weights and optimizer states
        are held, so the knobs are how they are spread."""
        s = self.settings
        reason = first_line(err, 160, empty="out of memory")
        if step is None:
            return UserError(
                f"the device ran out of memory at start-up, before step 1, holding {s.model}'s weights and optimizer "
                f"states (ZeRO-{self.zero_stage}, {self.world_size} rank(s); {reason}): "
                + ("use ZeRO-3 (ds_configs/zero3.json), which partitions the weights too, or " if self.zero_stage < 3
                   else "") + "train on more ranks, or pick a smaller --model")
        return UserError(
            f"the device ran out of memory at step {step} ({s.model}, micro-batch {self.micro_batch} x {self.seq_len} "
            f"tokens per rank, ZeRO-{self.zero_stage}, activation checkpointing "
            f"{'on' if s.activation_checkpointing else 'off'}; {reason}): lower train_micro_batch_size_per_gpu in "
            f"{s.deepspeed_config} (the global batch stays, the accumulation grows), "
            + ("" if s.activation_checkpointing else "add --activation-checkpointing, ")
            + "lower --seq-len" + (", or use ZeRO-3 (ds_configs/zero3.json)" if self.zero_stage < 3 else ""))

    def identity(self) -> dict[str, Any]:
        """What the run is, beside its RunRecord: the model config, the settings, the resolved DeepSpeed config."""
        return {"model": self.model_config.to_dict(), "settings": self.settings.to_dict(), "ds_config": self.ds_config}

    def record_fields(self) -> dict[str, Any]:
        """The RunRecord fields that this plan sets (on a resume they may differ from the checkpoint's)."""
        s = self.settings
        lineage = {} if self.parent is None or self.resume_from is not None else {"init_from": self.parent.lineage()}
        return {"target_loss": s.target_loss, "preset": s.model, "world_size": self.world_size,
                "precision": self.precision, "seed": s.seed, "data": str(s.data), "chat_template": self.chat_template,
                **lineage}

    @property
    def chat_template(self) -> str | None:
        """The chat template of a fine-tune on conversations (a chat folder), else None."""
        from gpt_ds.tokenizer import CHAT_TEMPLATE

        return CHAT_TEMPLATE if isinstance(self.train, sampler.ChatWindows) else None


def plan_run(settings: RunSettings, world_size: int, cuda: bool | None = None) -> Plan:
    """Every check that can fail on bad input, before any rank starts or any file is written. `cuda`: whether
    the ranks run on GPUs (None: this machine's answer; a Slurm submit from a CPU login node says its job's)."""
    loaded = ds_config.load(settings.deepspeed_config)  # the one read of the JSON
    check_ds_config_keys(loaded, settings.deepspeed_config, strict=settings.strict_config)
    ds = ds_config.resolve(loaded, settings.deepspeed_config, world_size)
    elsewhere = cuda is not None  # another machine's GPUs (a job's): whether they have bf16, its ranks check
    cuda = torch.cuda.is_available() if cuda is None else cuda
    check_precision(ds.precision, settings.deepspeed_config, cuda=cuda,
                    bf16_supported=elsewhere or not cuda or ds.precision != "bf16" or gpu_native_bf16())
    check_optimizer(settings, ds)
    if settings.compile and ds.zero_stage == 3:
        # measured: the compiled forward reads the tied head's partitioned weight (0 elements) ungathered
        raise UserError(f"--compile does not work with ZeRO-3 ({settings.deepspeed_config}): the compiled graph "
                        "bypasses DeepSpeed's gathering of partitioned weights; drop --compile or use ZeRO-2")
    peak, floor = ds.learning_rates(settings.lr, settings.min_lr, fine_tune=settings.init_from is not None)
    check_apart(settings)
    schedule = Schedule(peak=peak, floor=floor,
                        warmup=settings.warmup, decay_steps=settings.decay_steps, kind=settings.schedule_kind,
                        decay_fraction=settings.wsd_decay_fraction)
    parent = read_parent(settings.init_from) if settings.init_from is not None else None
    model_config = resolve_model(settings) if parent is None else child_config(parent, settings)
    manifest = read_manifest(settings.data)
    model_config = fit_vocabulary(model_config, manifest)
    seq_len = settings.seq_len or model_config.block_size
    if seq_len > model_config.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's context ({model_config.block_size} positions); "
                        f"use --seq-len <= {model_config.block_size} or a larger --block-size")
    train, val = open_data(settings.data, manifest, model_config, seq_len, verify=settings.verify_data)
    eval_tasks = load_tasks(settings.eval_task_paths) if settings.eval_task_paths else []
    resume_from = resolve_resume(settings, model_config)
    reshard = None
    if resume_from is not None:
        ds, reshard = fit_to_checkpoint(loaded, ds, checkpoint.read_client_state(resume_from), world_size)
    ds = dataclasses.replace(ds, config=fit_to_device(ds.config, cuda=cuda))  # last: on the config as resolved
    return Plan(settings, ds, model_config, seq_len, schedule, train, val, resume_from, world_size, reshard,
                eval_tasks, parent)


def fit_to_checkpoint(loaded: dict[str, Any], ds: DeepSpeedConfig, saved: dict[str, Any], world_size: int
                      ) -> tuple[DeepSpeedConfig, str | None]:
    """A resume keeps its checkpoint's global batch (the data stream is a function of it): on another
    world size the accumulation is derived anew, from the JSON as `loaded`. Another world size or ZeRO stage
    than the checkpoint's means resharding it (gpt_ds.reshard); returns the config and what changed (None: a
    direct load)."""
    saved_config = saved.get("ds_config") or {}
    global_batch = saved_config.get("train_batch_size")
    if global_batch is not None and global_batch != ds.train_batch_size:
        ds = ds_config.resolve(loaded, ds.path, world_size, global_batch=global_batch)
    changes = []
    if saved.get("world_size") != world_size:
        changes.append(f"{saved.get('world_size')} -> {world_size} ranks")
    saved_stage = (saved_config.get("zero_optimization") or {}).get("stage", ds.zero_stage)
    if saved_stage != ds.zero_stage:
        changes.append(f"ZeRO stage {saved_stage} -> {ds.zero_stage}")
    saved_optimizer = (saved_config.get("optimizer") or {}).get("type")
    if saved_optimizer is not None and (str(saved_optimizer).lower() == "muon") != ds.is_muon:
        # the optimizer states of one are not the other's (Muon's momentum, Adam's moments)
        raise UserError(f"the checkpoint was trained with {saved_optimizer} and {ds.path} has "
                        f"{ds.config['optimizer'].get('type')}: resume with the checkpoint's optimizer "
                        "(its DeepSpeed config), or start a new run with --init-from")
    return ds, ", ".join(changes) or None


def check_precision(precision: str, config_path: str, *, cuda: bool, bf16_supported: bool) -> None:
    """The JSON's precision on this device: fp16 needs a GPU; bf16 needs a CPU or a GPU that has it (Ampere and
    newer; a V100 or T4 trains in fp16 with dynamic loss scaling)."""
    if precision == "fp16" and not cuda:
        raise UserError(f"{config_path} trains in fp16, which needs a GPU; on the CPU use ds_configs/zero2.json (bf16)")
    if precision == "bf16" and not bf16_supported:
        raise UserError(f"{config_path} trains in bf16, which this GPU does not support (it came with Ampere); use "
                        "ds_configs/zero2_fp16.json (fp16 with dynamic loss scaling)")


def fit_to_device(config: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """The fastest kernels where they exist: on CUDA, torch's AdamW (`"torch_adam": true`) with its fused
    kernel (one launch for every partition instead of a loop of them), unless the JSON sets "fused" itself.
    On the CPU the config is left as it is."""
    optimizer = config.get("optimizer") or {}
    params = optimizer.get("params") or {}
    adam = str(optimizer.get("type", "")).lower() in ("adam", "adamw")  # Muon's Adam half is DeepSpeed's own
    if not cuda or not adam or not params.get("torch_adam") or "fused" in params:
        return config
    return {**config, "optimizer": {**config["optimizer"], "params": {**params, "fused": True}}}


def check_apart(settings: RunSettings) -> None:
    """RUN_DIR and the data folder are two folders, neither inside the other (checkpoints/ and tb/ in a
    prepared folder, or a prepared folder inside a run that `--resume never` may clear, invite losses)."""
    run, data = settings.run_dir.root.resolve(), Path(settings.data).resolve()
    if run == data or data in run.parents or run in data.parents:
        raise UserError(f"--out {settings.run_dir} and --data {settings.data} overlap; give the run a folder of its "
                        "own, outside the data folder")


def check_optimizer(settings: RunSettings, ds: DeepSpeedConfig) -> None:
    """The recipe's optimizer against the JSON's, and what Muon needs."""
    wanted = RECIPES[settings.recipe]["optimizer"]
    if wanted == "Muon" and not ds.is_muon:
        raise UserError(f"--recipe {settings.recipe} trains with Muon, and {settings.deepspeed_config} has "
                        f"{ds.config['optimizer'].get('type')}; pass --deepspeed_config {MUON_CONFIG}")
    if not ds.is_muon:
        return
    if ds.zero_stage == 3 and ds.config["zero_optimization"].get("reduce_scatter", True):  # DeepSpeed's own check, as a ValueError deep in init
        raise UserError(f"{settings.deepspeed_config}: DeepSpeed's Muon under ZeRO-3 cannot reduce-scatter its "
                        "gradients; set \"reduce_scatter\": false in zero_optimization")
    from deepspeed.runtime.engine import DeepSpeedEngine

    # Muon came in DeepSpeed 0.17.6 (the pyproject floor), muon_lr/adam_lr in 0.18.3; the split of each param
    # group it is given into Muon and Adam halves, keeping the group's weight decay, only after 0.19.5 (0.19.8
    # is tested): earlier releases fail on our groups or flatten them away.
    if not hasattr(DeepSpeedEngine, "_muon_param_groups"):
        import deepspeed

        raise UserError(f"{settings.deepspeed_config} uses Muon, which needs a DeepSpeed whose Muon keeps the param "
                        f"groups it is given (0.19.8 is tested; installed: {deepspeed.__version__}); "
                        "pip install -U deepspeed, or use ds_configs/zero2.json")


def resolve_model(settings: RunSettings) -> GPTConfig:
    """The preset's GPTConfig with the recipe's architecture, the architecture flags and the shape flags
    (--n-layer, --n-head, --n-embd, --block-size) replaced."""
    overrides = {**settings.architecture_overrides, **settings.shape_overrides}
    try:
        return config_from_preset(settings.model, **overrides)
    except UserError as err:
        raise UserError(f"--model {settings.model} with {overrides or 'no overrides'}: {err}") from err


def read_manifest(data_dir: str) -> dict | None:
    """The data folder's manifest, read once for every check and opening here; None for llm.c-style shards
    without one."""
    from gpt_ds import data

    return data.load_manifest(data_dir) if (Path(data_dir) / data.MANIFEST_NAME).is_file() else None


def fit_vocabulary(model_config: GPTConfig, manifest: dict | None) -> GPTConfig:
    """The model's config, its vocabulary grown to the chat markers' (gpt_ds.tokenizer.CHAT_VOCAB_SIZE) for a
    chat folder: a base model learns them in its fine-tune (--init-from starts their rows at the mean row)."""
    from gpt_ds import data
    from gpt_ds.tokenizer import CHAT_VOCAB_SIZE

    if manifest is None or model_config.vocab_size >= CHAT_VOCAB_SIZE:
        return model_config
    if manifest.get("format", data.TEXT_FORMAT) != data.CHAT_FORMAT:
        return model_config
    return dataclasses.replace(model_config, vocab_size=CHAT_VOCAB_SIZE)


def open_data(data_dir: str, manifest: dict | None, model_config: GPTConfig, seq_len: int, verify: bool = False
              ) -> tuple[sampler.TokenWindows | sampler.ChatWindows, sampler.TokenWindows | sampler.ChatWindows | None]:
    """Training windows of seq_len + 1 tokens, and validation windows where the folder has a val split.
    Every shard's size and header are checked as it opens, and its tokens against the model's vocabulary:
    a sample of them, or with `verify` all of them and (where there is a manifest) every sha256."""
    from gpt_ds import data

    if verify and manifest is not None:
        data.verify_folder(data_dir, manifest)
    train_shards = data.open_split(data_dir, "train", manifest)
    if manifest is not None:
        vocab_size = manifest.get("vocab_size", 0)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise UserError(f"{Path(data_dir) / data.MANIFEST_NAME} has vocab_size {vocab_size!r}, not a number: the "
                            "manifest is damaged; prepare the folder again with --force")
        if vocab_size > model_config.vocab_size:
            raise UserError(f"{data_dir} was tokenized with a vocabulary of {manifest['vocab_size']} tokens, "
                            f"more than the model's {model_config.vocab_size}; prepare it with r50k_base")
        has_val = bool((manifest["splits"].get("val") or {}).get("shards"))
    else:  # llm.c-style shards without a manifest: found by the very names open_split looks for
        has_val = bool(data._foreign_shards(Path(data_dir), "val"))
    val_shards = data.open_split(data_dir, "val", manifest) if has_val else []
    for shard in train_shards + val_shards:
        data.check_tokens(shard, model_config.vocab_size, full=verify)
    masks = data.open_masks(data_dir, "train", manifest)
    if masks is not None:  # a chat folder: conversations, each in a window of its own (gpt_ds.sampler)
        train = sampler.ChatWindows(train_shards, masks, seq_len, "train")
        val = sampler.ChatWindows(val_shards, data.open_masks(data_dir, "val", manifest), seq_len, "val") if has_val else None
        return train, val
    train = sampler.TokenWindows(train_shards, seq_len, "train")
    val = sampler.TokenWindows(val_shards, seq_len, "val") if has_val else None
    return train, val


def resolve_resume(settings: RunSettings, model_config: GPTConfig) -> Path | None:
    """The checkpoint to resume from, checked against this run; nothing in RUN_DIR is touched."""
    run_dir = settings.run_dir
    if run_dir.root.exists() and not run_dir.root.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder; choose another path")
    if settings.resume == "never":
        checkpoint.check_fresh_run_dir(run_dir)
    resume_from = checkpoint.resolve_resume(settings.resume, run_dir)
    if resume_from is not None:
        saved = checkpoint.read_client_state(resume_from)
        checkpoint.check_same_model(saved, model_config.to_dict(), resume_from)
        check_same_parent(saved, settings, resume_from)
    return resume_from


def check_same_parent(saved: dict[str, Any], settings: RunSettings, resume_from: Path) -> None:
    """A run resumes from its own progress: --init-from, when given, must name the folder it started from."""
    if settings.init_from is None:
        return
    started = RunRecord.from_dict(saved).init_from
    if started is None:
        raise UserError(f"--init-from {settings.init_from}: {resume_from} is a checkpoint of a run that started from "
                        "random weights; resuming never re-initialises it: drop --init-from, or use a new --out")
    if Path(started["folder"]) != Path(settings.init_from).resolve():
        raise UserError(f"--init-from {settings.init_from}: the run in {settings.run_dir} started from "
                        f"{started['folder']}; resuming never re-initialises over its progress: pass that folder "
                        "(or drop --init-from), or use a new --out")


def changed_settings(saved: dict[str, Any], now: RunSettings) -> str:
    """'; changed: x 1 -> 2' for settings that differ from the checkpoint's (a changed seed, schedule
    length or config means the run no longer matches one made in one go)."""
    routine = {"max_steps", "resume", "verify_data", "strict_config", "collective_timeout"}  # expected to change between a run and its resume
    # A setting that a checkpoint predates had its default value then
    defaults = {**RunSettings(deepspeed_config="", data="", out="").to_dict(), "schedule": "cosine"}
    changes = [f"{k} {saved.get(k, defaults[k])!r} -> {v!r}" for k, v in now.to_dict().items()
               if k not in routine and saved.get(k, defaults[k]) != v]
    saved_decay = saved.get("lr_decay_steps") or saved.get("max_steps")
    if saved_decay != now.decay_steps:
        changes.append(f"learning-rate schedule length {saved_decay} -> {now.decay_steps} "
                       f"(pass --lr-decay-steps {saved_decay} to keep the original schedule)")
    return f"; changed: {', '.join(changes)}" if changes else ""
