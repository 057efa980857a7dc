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
# A development checkout sits beside the project's read-only `shared/` folder, which holds a
# ready tiktoken cache; using it when no cache is configured makes every command work offline there.
_SIBLING_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken"
EOT_TOKEN = 50256  # <|endoftext|> in the GPT-2 BPE: the document delimiter in every shard


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
    if "TIKTOKEN_CACHE_DIR" not in os.environ and _SIBLING_CACHE.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(_SIBLING_CACHE)
    try:
        return tiktoken.get_encoding(name)
    except Exception as err:  # network errors come as many different types
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "(TIKTOKEN_CACHE_DIR not set)")
        raise UserError(
            f"could not load the tiktoken encoding {name!r}: its BPE file is not in the cache ({cache}) "
            f"and could not be downloaded ({type(err).__name__}). Without network, point "
            "TIKTOKEN_CACHE_DIR at a folder holding a tiktoken cache of it (e.g. ../shared/tiktoken)."
        ) from err
