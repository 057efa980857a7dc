"""gpt_ds.host_collectives on two real ranks under the deepspeed launcher: DeepSpeed's all-reduce (sum,
float32 and bf16) and all-gather go through its shared-memory kernel and give gloo's results to the bit;
what the kernel cannot do (another op or dtype, a strided or asynchronous call) still goes to gloo."""

from __future__ import annotations

import json
import subprocess

import pytest

from gpt_ds import distributed

RANKS = r'''
import json, sys
import torch
from torch.profiler import ProfilerActivity, profile

from gpt_ds import distributed, patching

env = distributed.fill_env()
distributed.init(env)
import deepspeed.comm as dist

rank, out = env.rank, {}


def routed(call):
    """Runs call; which kernel summed: "shm", "gloo" or both."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    names = {event.key for event in prof.key_averages()}
    return sorted({"shm" for n in names if "inference_all_reduce" in n} | {"gloo" for n in names if n.startswith("c10d::")})


gen = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    mine = [torch.randn(300_001, generator=gen).to(dtype) for _ in range(2)][rank]
    theirs_and_mine = mine.clone()
    reference = mine.clone()
    out[f"sum {dtype}"] = routed(lambda: dist.all_reduce(theirs_and_mine))
    torch.distributed.all_reduce(reference)  # gloo itself
    out[f"equal {dtype}"] = torch.equal(theirs_and_mine, reference)

big = torch.full((4,), float(rank + 1))
out["max"] = [routed(lambda: dist.all_reduce(big, op=dist.ReduceOp.MAX)), big.tolist()]
ints = torch.tensor([rank + 1] * 3)
out["int64"] = [routed(lambda: dist.all_reduce(ints)), ints.tolist()]
strided = torch.arange(8.0).view(2, 4).t()
out["strided"] = [routed(lambda: dist.all_reduce(strided)), strided.t().reshape(-1).tolist()]
later = torch.ones(5)
out["async"] = [routed(lambda: dist.all_reduce(later, async_op=True).wait()), later.tolist()]

flat = torch.full((6,), -1.0, dtype=torch.bfloat16)  # ZeRO's call: the input is this rank's slice of the output
flat[rank * 3:(rank + 1) * 3] = torch.tensor([rank * 10 + 1, rank * 10 + 2, rank * 10 + 3], dtype=torch.bfloat16)
out["gather own slice"] = [routed(lambda: dist.all_gather_into_tensor(flat, flat[rank * 3:(rank + 1) * 3])),
                           flat.tolist()]
gathered = torch.full((2, 2), -1.0)
out["gather copy"] = [routed(lambda: dist.all_gather_into_tensor(gathered, torch.tensor([rank, -rank - 0.5]))),
                      gathered.tolist()]
out["why"] = sorted(k for k, v in patching.SWAPS.items() if "host_collectives" in v)
if rank == 0:
    (__import__("pathlib").Path(sys.argv[-1])).write_text(json.dumps(out))
'''


@pytest.mark.slow
def test_two_ranks_on_one_host_sum_through_shared_memory_as_gloo_does(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    result = tmp_path / "result.json"
    proc = subprocess.run(distributed.launcher_command(2, str(script), [str(result)]), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and result.exists(), proc.stderr[-3000:]
    out = json.loads(result.read_text())
    for dtype in ("torch.float32", "torch.bfloat16"):
        assert out[f"sum {dtype}"] == ["shm"] and out[f"equal {dtype}"], out
    gloo = ["gloo"]
    assert out["max"] == [gloo, [2.0] * 4] and out["int64"] == [gloo, [3] * 3] and out["async"] == [gloo, [2.0] * 5]
    assert out["strided"] == [gloo, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]]
    assert out["gather own slice"] == [["shm"], [1.0, 2.0, 3.0, 11.0, 12.0, 13.0]]
    assert out["gather copy"] == [["shm"], [[0.0, -0.5], [1.0, -1.5]]]
    assert out["why"] == ["TorchBackend.all_gather_into_tensor", "TorchBackend.all_reduce"]
