"""The DeepSpeed engine around the GPT model: `build_engine(plan)`, with DeepSpeed's Muon on the
hidden matrices where the config asks for it (`initialize_with_muon`, `hidden_matrices`), and
`set_lr`, the schedule's learning rate into every parameter group (Muon's at its own ratio).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch

from gpt_ds.cache import use_compile_cache
from gpt_ds.patching import swapped
from gpt_ds.zero_step import lighten

if TYPE_CHECKING:
    from gpt_ds.plan import Plan


def build_engine(plan: Plan) -> Any:
    """The model of `plan` (same initial weights on every rank: seeded, or --init-from's) inside
    deepspeed.initialize, which partitions them under ZeRO-3."""
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    from gpt_ds.model import GPT

    use_compile_cache()  # before anything compiles: the loss, Muon's update, --compile
    ds_logger.setLevel(logging.WARNING)  # our progress bar is the console; DeepSpeed's INFO lines drown it
    # DeepSpeed calls torch.distributed APIs that torch marks deprecated, once per rank: noise to users
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    torch.manual_seed(plan.settings.seed)  # same initial weights on every rank and every fresh run
    if torch.cuda.is_available():  # TF32 tensor cores for whatever math stays in fp32 (Ampere and newer)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(plan.model_config)
    if plan.parent is not None and plan.resume_from is None:  # a fresh fine-tune: the parent's weights, every rank
        from gpt_ds.init_from import load_parent_into

        load_parent_into(model, plan.parent)
    model.set_activation_checkpointing(plan.settings.activation_checkpointing)
    groups = model.param_groups(plan.weight_decay)
    if plan.muon_lr_ratio is None:
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=plan.ds_config)
    else:
        engine = initialize_with_muon(deepspeed, model, groups, plan.ds_config)
    lighten(engine.optimizer)  # fused Adam, fewer passes over the gradients: the same numbers
    if plan.settings.compile:
        engine.compile()
    return engine


def hidden_matrices(model: torch.nn.Module) -> set[str]:
    """The parameters Muon trains: the blocks' 2-D weights (attention c_attn/c_proj, MLP c_fc/c_proj).
    Embeddings, the output head, gains and biases stay with Adam (Keller Jordan's Muon: hidden layers only)."""
    return {name for name, p in model.named_parameters() if p.ndim == 2 and name.startswith("transformer.h.")}


MUON_TAGS_WHY = ("DeepSpeed tags every >= 2-D parameter without 'embed'/'lm_head' in its name for Muon, which "
                 "would put GPT-2's wte/wpe tables on Muon: gpt-ds re-tags them by hidden_matrices right after")


def initialize_with_muon(deepspeed: Any, model: torch.nn.Module, groups: list[dict[str, Any]],
                         ds_config: dict[str, Any]) -> Any:
    """deepspeed.initialize with DeepSpeed's Muon, each parameter tagged `use_muon` by `hidden_matrices`.

    DeepSpeed tags the parameters itself inside initialize (deepspeed.set_optimizer_flags), so our tags
    are applied right after its own, before the engine builds the optimizer (MUON_TAGS_WHY). Our
    weight-decay groups pass through: DeepSpeed splits each into its Muon and Adam halves, keeping the
    group's weight_decay."""
    hidden = hidden_matrices(model)
    deepspeeds_own = deepspeed.set_optimizer_flags

    def tag(config_class: Any, module: torch.nn.Module) -> None:
        deepspeeds_own(config_class, module)
        for name, param in module.named_parameters():
            param.use_muon = name in hidden

    with swapped(deepspeed, "set_optimizer_flags", tag, why=MUON_TAGS_WHY):
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    on_muon = {name for name, p in model.named_parameters() if getattr(p, "use_muon", None) is True}
    muon_groups = [g for g in engine.optimizer.param_groups if g.get("use_muon")]
    if on_muon != hidden or not muon_groups:  # a DeepSpeed that tags elsewhere: fail loudly, not train wrongly
        raise RuntimeError(f"Muon tagging did not hold ({len(on_muon)} parameters on Muon, {len(hidden)} hidden "
                           f"matrices, {len(muon_groups)} Muon groups); this DeepSpeed tags parameters elsewhere")
    return engine


def set_lr(engine: Any, lr: float, muon_lr_ratio: float | None = None) -> float:
    """Every param group to the schedule's `lr`; Muon's matrix groups to lr x muon_lr / adam_lr (their own
    peak from the JSON). Non-Muon groups get `lr` itself, so AdamW runs are exactly as before."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * muon_lr_ratio if muon_lr_ratio is not None and group.get("use_muon") else lr
    return lr
