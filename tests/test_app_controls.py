"""Tests of app/controls.py: the sidebar's widget values as a Sampling."""

from __future__ import annotations

import app_fixtures  # noqa: F401  (puts app/ on sys.path, as streamlit does)
import pytest

from controls import DEFAULT_SAMPLING, sampling_from_controls
from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling
from gpt_ds.tokenizer import EOT_TOKEN


def test_controls_map_to_sampling():
    greedy = sampling_from_controls(120, temperature=0.0, top_k=0, top_p=1.0, seed=None)
    assert (greedy.temperature, greedy.top_k, greedy.top_p, greedy.seed) == (0.0, None, None, None)
    assert greedy.greedy and greedy.stop_token == EOT_TOKEN
    sampled = sampling_from_controls(120, temperature=0.7, top_k=40, top_p=0.9, seed=3)
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.seed) == (0.7, 40, 0.9, 3)
    with pytest.raises(UserError, match="temperature must be a finite number >= 0"):
        sampling_from_controls(120, temperature=-0.5, top_k=0, top_p=1.0, seed=None)


def test_the_pages_defaults():
    assert DEFAULT_SAMPLING == Sampling(120, temperature=0.8, top_k=200, seed=1337)
