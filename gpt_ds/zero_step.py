"""DeepSpeed's ZeRO-1/2 optimizer step with fewer passes over the gradients: `lighten(engine.optimizer)`.

Besides the optimizer's own update, DeepSpeed's step reads every gradient several times. On the CPU each
pass over a 50,304-row embedding costs about a millisecond, and tiny's step is mostly such passes. gpt-ds
changes four things, each with the same numbers as DeepSpeed's own step:

- Adam: torch's fused kernel, one pass over each tensor (`use_fused_adam`).
- The gradient norm (CPU): DeepSpeed copies each gradient to float64 and then takes its norm, writing four
  times the gradient's bytes; `sum_of_squares` reads each gradient once. Both sum in float64, in another
  order (about 1e-15 apart), and the norm is rounded to float32, which drops that difference (all but about
  once in 1e8 norms, where it moves the last bit).
- The overflow check: with bf16 or fp16 DeepSpeed first scans every gradient for inf or nan (two
  reductions and a read to the host). The norm that follows is inf or nan whenever a gradient holds one,
  and DeepSpeed's step already treats such a norm as an overflow (it tests it after the scan too), so
  where the norm is computed the scan is skipped. An overflowing step is still skipped, and counted.
- The average over one rank: DeepSpeed divides the gradients by the world size, which is 1.

modern-tiny on 2 CPU cores (bench/recipe_step.py): about 19 ms of a 160 ms step; tiny about 13 of 136.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from gpt_ds.patching import replace

FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch (>= 2.4) has its fused Adam kernel
NORM_CHUNK = 1 << 18  # float64 elements a dot reads at once: a 2 MiB buffer, which stays in a core's cache
NORM_WHY = "the gradient norm in one float64 read of each gradient, not a float64 copy (gpt_ds.zero_step)"
OVERFLOW_WHY = "no separate inf/nan scan where the norm that follows finds the same (gpt_ds.zero_step)"


def lighten(zero_optimizer: Any) -> list[str]:
    """Apply this module's changes to DeepSpeed's optimizer, where they hold; the names of those applied
    ("fused adam", "norm", "overflow check", "average"); a second call finds the rest done. ZeRO-3's optimizer
    gets fused Adam alone."""
    applied = ["fused adam"] if use_fused_adam(zero_optimizer) else []
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not isinstance(zero_optimizer, DeepSpeedZeroOptimizer):
        return applied
    done = vars(zero_optimizer)  # what replace() set on this object itself
    if "get_grad_norm_direct" not in done and _norm_is_plain(zero_optimizer):
        replace(zero_optimizer, "get_grad_norm_direct", _grad_norm(zero_optimizer), why=NORM_WHY)
        applied.append("norm")
    if ("check_overflow" not in done and zero_optimizer.check_grad_overflow and zero_optimizer.compute_grad_norm
            and not zero_optimizer.cpu_offload):
        # step(): the norm's own test (`is_invalid_grad_norm`) then sets `overflow`, and skips the step
        replace(zero_optimizer, "check_overflow", _no_scan, why=OVERFLOW_WHY)
        applied.append("overflow check")
    if _one_rank(zero_optimizer) and zero_optimizer.gradient_average and zero_optimizer.gradient_predivide_factor == 1.0:
        # x / 1.0 is x: the division is a pass that changes nothing (a predivide factor f multiplies by 1/f and
        # f around the sum, which rounds: then DeepSpeed's averaging stays)
        zero_optimizer.gradient_average = False
        applied.append("average")
    return applied


def use_fused_adam(zero_optimizer: Any) -> list[torch.optim.Optimizer]:
    """torch's fused Adam kernel for every Adam(W) that DeepSpeed steps (the optimizer under ZeRO, and Muon's
    Adam half), where the parameters' device has one: one pass over each tensor instead of one per operation.
    Measured on 2 CPU cores, modern-tiny's two 50304 x 128 matrices: 5 ms a step instead of 45. DeepSpeed
    builds torch's AdamW (`"torch_adam": true`) with no way to ask for it. The update is the same to float32
    rounding. Returns the optimizers switched."""
    base = getattr(zero_optimizer, "optimizer", zero_optimizer)
    switched = []
    for optimizer in (base, getattr(base, "aux_optimizer", None)):
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not params or any(p.device.type not in FUSED_ADAM_DEVICES or not p.is_floating_point() for p in params):
            continue
        for settings in (optimizer.defaults, *optimizer.param_groups):
            settings.update(fused=True, foreach=False)
        switched.append(optimizer)
    return switched


def sum_of_squares(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The float64 sum of the squares of every element of `tensors` (on the CPU), reading each once: a chunk
    at a time is copied into one reused float64 buffer and dotted with itself. inf and nan come through."""
    total = buffer = None
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        if total is None:
            total = torch.zeros((), dtype=torch.float64, device=flat.device)
            buffer = torch.empty(NORM_CHUNK, dtype=torch.float64, device=flat.device)
        for start in range(0, flat.numel(), NORM_CHUNK):
            chunk = buffer[: min(NORM_CHUNK, flat.numel() - start)]
            chunk.copy_(flat[start : start + chunk.numel()])
            total += torch.dot(chunk, chunk)
    return torch.zeros((), dtype=torch.float64) if total is None else total


def _norm_is_plain(zero_optimizer: Any) -> bool:
    """Whether DeepSpeed's norm is the plain one that `_grad_norm` computes: gradients on the CPU, every
    parameter counted once (no tensor or pipeline parallelism), float64 sums (get_norm_dtype)."""
    from deepspeed.comm import pg_utils
    from deepspeed.runtime.constants import PIPE_REPLICATED
    from deepspeed.runtime.zero.utils import get_norm_dtype

    params = [p for group in zero_optimizer.bit16_groups for p in group]
    return (zero_optimizer.device == "cpu" and not zero_optimizer.cpu_offload and get_norm_dtype() == torch.float64
            and not pg_utils.is_parallel(zero_optimizer.model_parallel_group)
            and not any(getattr(p, PIPE_REPLICATED, False) and p.ds_pipe_replicated for p in params))


def _grad_norm(zero_optimizer: Any) -> Any:
    """DeepSpeed's get_grad_norm_direct for the 2-norm, summing with `sum_of_squares`: the float32 norm of
    this rank's gradients and every other's, with inf or nan shown as -1 (DeepSpeed's mark of an overflow)."""
    import deepspeed.comm as dist
    from deepspeed.runtime.utils import mask_nan_or_inf_with_val_inplace

    deepspeeds_own = zero_optimizer.get_grad_norm_direct

    def get_grad_norm_direct(gradients: list[torch.Tensor], params: list[torch.Tensor],
                             norm_type: float = 2) -> torch.Tensor:
        if float(norm_type) != 2.0:
            return deepspeeds_own(gradients, params, norm_type)
        # DeepSpeed's zero padding adds nothing to a sum of squares; its norm leaves it out all the same
        gradients = [g for g in gradients if not getattr(g, "_zero_padding", False)]
        total = sum_of_squares(gradients).float()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=zero_optimizer.dp_process_group)
        total = total.pow(1.0 / 2)  # as DeepSpeed takes the root
        mask_nan_or_inf_with_val_inplace(total, device=zero_optimizer.device)
        return total

    return get_grad_norm_direct


def _no_scan(partition_gradients: bool = True) -> None:
    """DeepSpeed's check_overflow, left out: `overflow` stays False until the step's norm is tested."""


def _one_rank(zero_optimizer: Any) -> bool:
    import deepspeed.comm as dist

    return dist.get_world_size(group=zero_optimizer.dp_process_group) == 1 and zero_optimizer.sequence_parallel_size == 1
