"""The page's generation controls: their defaults (`DEFAULT_SAMPLING`) and the Sampling their
widget values stand for (`sampling_from_controls`: top-k 0 and top-p 1 mean off, temperature 0 greedy).
"""

from __future__ import annotations

from gpt_ds.generate import Sampling

DEFAULT_SAMPLING = Sampling(max_new_tokens=120, temperature=0.8, top_k=200, top_p=None, seed=1337)


def sampling_from_controls(max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None) -> Sampling:
    """The Sampling of the sidebar's widgets (0 for top-k and 1 for top-p are the widgets' "off")."""
    return Sampling(
        max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p if top_p < 1.0 else None,
        seed=seed,
    )
