"""Ranks on one host without a GPU: DeepSpeed's all-reduce and all-gather through its shared-memory kernel.

On the CPU, DeepSpeed runs its collectives over gloo, which moves each tensor through the loopback
network and sums bf16 one element at a time: ZeRO-2's gradient all-reduce of 6.4M bf16 numbers (GPT-2's
embedding) took 11.8 ms on 2 ranks, its parameter all-gather of 7.3M 8.8 ms. DeepSpeed also builds a
shared-memory all-reduce for CPU inference (`torch.ops.deepspeed.inference_all_reduce_`, vectorised, every
rank on one host): 2.0 ms and 3.2 ms for the same tensors.

`use_shared_memory()` routes DeepSpeed's own blocking `all_reduce` (sum, float32 or bf16, the whole world)
and `all_gather_into_tensor` (as an all-reduce of the gathered tensor, zero outside this rank's part: adding
zeros is exact) through that kernel, when every rank is on this host and the kernel is there; anything else
goes to gloo as before. With 2 ranks the sums are gloo's to the bit (a + b, rounded once); with more, the
kernel adds in float32 and rounds once, where gloo rounded bf16 after each addition.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from gpt_ds.patching import replace

WHY = "sums on one host through DeepSpeed's shared-memory kernel, not gloo (gpt_ds.host_collectives)"


def use_shared_memory() -> bool:
    """Route DeepSpeed's CPU all-reduce and all-gather through its shared-memory kernel where it applies;
    whether it was routed. Call once the process group is up (gpt_ds.distributed.init)."""
    import deepspeed.comm.comm as ds_comm
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    backend = ds_comm.cdb
    world = dist.get_world_size()
    # DeepSpeed maps the shared memory only when the launcher's LOCAL_SIZE says every rank is on this host
    # (deepspeed/ops/csrc/cpu/comm/shm_interface.cpp); without it the kernel has no buffers to use.
    if (world < 2 or get_accelerator().device_name() != "cpu" or os.environ.get("LOCAL_SIZE") != str(world)
            or getattr(backend, "shm_comm_op", None) is None or not hasattr(torch.ops.deepspeed, "inference_all_reduce_")):
        return False
    level = getattr(backend, "shm_vector_kernel_level", 0)  # its bf16 kernel needs AVX-512BW, float32 AVX2

    def routed(tensor: torch.Tensor, group: Any, async_op: bool) -> bool:
        return (not async_op and tensor.device.type == "cpu" and tensor.is_contiguous()
                and level >= {torch.float32: 1, torch.bfloat16: 2}.get(tensor.dtype, 3)
                and (group is None or dist.get_world_size(group) == world))

    gloo_all_reduce = backend.all_reduce
    gloo_all_gather = backend.all_gather_into_tensor

    def all_reduce(tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM, group: Any = None, async_op: bool = False):
        if routed(tensor, group, async_op) and op in (dist.ReduceOp.SUM, ds_comm.ReduceOp.SUM):
            torch.ops.deepspeed.inference_all_reduce_(tensor)
            return None
        return gloo_all_reduce(tensor, op, group, async_op)

    def all_gather_into_tensor(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None,
                               async_op: bool = False):
        if (routed(output_tensor, group, async_op) and input_tensor.dtype == output_tensor.dtype
                and output_tensor.numel() == input_tensor.numel() * world):
            rank = dist.get_rank(group)
            size = input_tensor.numel()
            flat = output_tensor.view(-1)
            mine = flat[rank * size:(rank + 1) * size]
            if mine.data_ptr() != input_tensor.data_ptr():  # ZeRO's own call passes its slice of the output
                mine.copy_(input_tensor.reshape(-1))
            flat[:rank * size].zero_()
            flat[(rank + 1) * size:].zero_()
            torch.ops.deepspeed.inference_all_reduce_(output_tensor)
            return None
        return gloo_all_gather(output_tensor=output_tensor, input_tensor=input_tensor, group=group, async_op=async_op)

    replace(backend, "all_reduce", all_reduce, why=WHY)
    replace(backend, "all_gather_into_tensor", all_gather_into_tensor, why=WHY)
    return True
