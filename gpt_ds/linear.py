"""The model's matrix products: `linear(x, weight, bias)` and the `Linear` layer that uses it.

On the CPU, in float32 and without autograd (generation, evaluation, validation), a product runs on
oneDNN's inner-product kernel; everywhere else it is `F.linear`. The values are the same up to float32
rounding (the reduction order differs). Why: torch's float32 `F.linear` on the CPU calls the BLAS (MKL),
which reads a one-token decoding step's matrices at 17-22 GB/s on the AMD EPYC this was measured on,
while oneDNN reads them at 34-37 GB/s and runs a 1,000-token prompt's products 2x faster too
(`bench/generate.py`). bfloat16 already runs on oneDNN, and training keeps `F.linear`, so nothing
changes under DeepSpeed. `aten_only()` turns oneDNN off for a block (benches, tests).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

_enabled: bool | None = None  # None: not probed yet; then whether oneDNN's kernel runs here


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear kernel and it gives F.linear's values (probed once: it is a
    private operator, so a torch without it, or one that changed it, falls back to F.linear)."""
    global _enabled
    if _enabled is None:
        try:
            # fixed values, not torch.randn: probing must not move the caller's global random stream
            x = torch.linspace(-1.0, 1.0, 24).view(3, 8)
            w, b = torch.linspace(-0.5, 0.5, 40).view(5, 8), torch.linspace(0.0, 1.0, 5)
            with torch.no_grad():
                _enabled = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                    _onednn(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5
                )
        except Exception:  # no such operator, or it refuses: F.linear it is
            _enabled = False
    return _enabled


@contextlib.contextmanager
def aten_only() -> Iterator[None]:
    """Every product F.linear's while inside (what torch alone does)."""
    global _enabled
    before = onednn_available()
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as F.linear; on oneDNN for float32 CPU tensors when no gradient is recorded."""
    if (
        weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and weight.device.type == "cpu"
        and x.dtype == torch.float32
        and x.numel() > 0
        and onednn_available()
    ):
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose product is `linear`'s: the same parameters, names and initialisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
