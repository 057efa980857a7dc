"""What this machine's accelerator is, asked without starting anything: `gpu_native_bf16` (does the GPU
compute in bf16 natively) and `gpu_peak_flops` (its dense bf16/fp16 datasheet peak, from GPU_PEAK_FLOPS).
Both are safe on a machine without CUDA (a login node). torch only; nothing of gpt-ds's.
"""

from __future__ import annotations

import torch

# Dense (non-sparse) bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' datasheets.
GPU_PEAK_FLOPS: dict[str, float] = {
    "B200": 2250e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "A6000": 155e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "V100": 125e12,
    "T4": 65e12,
}


def gpu_peak_flops(device_name: str) -> float | None:
    """The table's peak for a device name such as 'NVIDIA H100 80GB HBM3' (longest key that matches)."""
    matches = [key for key in GPU_PEAK_FLOPS if key.lower() in device_name.lower()]
    return GPU_PEAK_FLOPS[max(matches, key=len)] if matches else None


def gpu_native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether the GPU `device` (None: the current one) computes in bf16 natively: Ampere and newer, as torch
    counts ROCm GPUs. Not torch.cuda.is_bf16_supported()'s default, which says yes where bf16 is only
    emulated (V100, T4), slowly. False without CUDA."""
    if not torch.cuda.is_available():
        return False
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)
