"""Training recipes: sets of switches a run turns on together, named once (no torch here, so the
command line can be checked before torch loads).

Each switch stays a setting of its own (recorded in the model config, settings.json and every
checkpoint), and an explicit flag overrides the recipe's value.
- gpt2: GPT-2 as published (learned positions, GELU, tied head, AdamW, warmup + cosine).
- modern: modded-nanogpt's late-2024 architecture changes on the preset's shape (rotary positions,
  QK-norm, ReLU^2, zero-initialised residual projections, an untied zero-initialised head, logits
  soft-capped at 30 as modded-nanogpt then and Gemma 2), the warmup-stable-decay schedule, and Muon for
  the hidden matrices (the DeepSpeed JSON's optimizer, ds_configs/zero2_muon.json).
"""

from __future__ import annotations

from typing import Any

# The GPTConfig fields of the modern architecture (gpt_ds.model: the `modern-*` presets).
MODERN_RECIPE: dict[str, Any] = dict(
    pos_embedding="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, tie_head=False, logit_softcap=30.0
)
ARCHITECTURE_FIELDS = tuple(MODERN_RECIPE)
RECIPES: dict[str, dict[str, Any]] = {
    "gpt2": {"schedule": "cosine", "optimizer": None, "architecture": {}},
    "modern": {"schedule": "wsd", "optimizer": "Muon", "architecture": MODERN_RECIPE},
}
MUON_CONFIG = "ds_configs/zero2_muon.json"
