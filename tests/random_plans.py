"""A Plan on random tokens, for tests that build gpt-ds's engine in-process or in ranks they launch: a
DeepSpeed JSON, a preset, a context of 32 tokens, a short schedule. Shared by tests/test_train_step.py and
tests/test_zero_step.py (its ranks' script too, with tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt_ds import ds_config, sampler, settings as run_settings
from gpt_ds.model import config_from_preset
from gpt_ds.plan import Plan
from gpt_ds.schedule import Schedule

BLOCK = 32


def random_token_plan(path: Path, model: str = "tiny", world_size: int = 1) -> Plan:
    """The Plan of `model` trained with the DeepSpeed JSON at `path` on 20,000 seeded random tokens."""
    settings = run_settings.RunSettings(deepspeed_config=str(path), data="(random tokens)", out="(none)",
                                        model=model, block_size=BLOCK)
    tokens = np.random.default_rng(0).integers(0, 50257, size=20_000, dtype=np.uint16)
    return Plan(settings, ds_config.resolve(ds_config.load(path), path, world_size),
                config_from_preset(model, **settings.shape_overrides), BLOCK,
                Schedule(peak=1e-3, floor=1e-4, warmup=1, decay_steps=10), sampler.TokenWindows([tokens], BLOCK),
                None, None, world_size)
