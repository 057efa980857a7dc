"""The tokenizer: tiktoken's GPT-2 BPE, loaded offline-friendly.

`r50k_base` is tiktoken's name for the GPT-2 BPE (50,257 tokens, `<|endoftext|>` = 50256); we
use it rather than the alias `gpt2` because it is the name under which caches are commonly
pre-seeded. tiktoken downloads the rank file on first use; without network and without a
cache (TIKTOKEN_CACHE_DIR) that fails deep inside requests, so we turn it into one clear error.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from gpt_ds.errors import UserError

DEFAULT_ENCODING = "r50k_base"
# Where a ready tiktoken cache lies when none is configured: the project's read-only `shared/` beside a
# development checkout, or a `shared/` inside the checkout (what travels to a lent GPU machine, made by
# bench/gpu_prepare.sh). Using one makes every command work offline there.
_CHECKOUT = Path(__file__).resolve().parents[1]
LOCAL_CACHES = (_CHECKOUT.parent / "shared" / "tiktoken", _CHECKOUT / "shared" / "tiktoken")
EOT_TOKEN = 50256  # <|endoftext|> in the GPT-2 BPE: the document delimiter in every shard


def tiktoken_cache_dir() -> str | None:
    """TIKTOKEN_CACHE_DIR as configured, else the first of LOCAL_CACHES that exists (None: tiktoken's own
    cache, which downloads)."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    return next((str(cache) for cache in LOCAL_CACHES if cache.is_dir()), None)


@functools.lru_cache(maxsize=None)
def get_encoding(name: str = DEFAULT_ENCODING):
    """Return the tiktoken Encoding `name`, or raise UserError explaining how to get it offline."""
    try:
        import tiktoken
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise UserError("tiktoken is not installed: pip install tiktoken") from err
    if name not in tiktoken.list_encoding_names():
        raise UserError(
            f"unknown tiktoken encoding {name!r}; known: {', '.join(sorted(tiktoken.list_encoding_names()))}"
        )
    cache = tiktoken_cache_dir()
    if cache is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    try:
        return tiktoken.get_encoding(name)
    except Exception as err:  # network errors come as many different types
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "(TIKTOKEN_CACHE_DIR not set)")
        raise UserError(
            f"could not load the tiktoken encoding {name!r}: its BPE file is not in the cache ({cache}) "
            f"and could not be downloaded ({type(err).__name__}). Without network, point "
            "TIKTOKEN_CACHE_DIR at a folder holding a tiktoken cache of it (e.g. ../shared/tiktoken)."
        ) from err
