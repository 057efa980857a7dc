"""The tokenizer: tiktoken's GPT-2 BPE, loaded offline-friendly.

`r50k_base` is tiktoken's name for the GPT-2 BPE (50,257 tokens, `<|endoftext|>` = 50256); we
use it rather than the alias `gpt2` because it is the name under which caches are commonly
pre-seeded. tiktoken downloads the rank file on first use; without network and without a
cache (TIKTOKEN_CACHE_DIR) that fails deep inside requests, so we turn it into one clear error.

The chat format is defined here too, once: its marker tokens, `check_conversation`, `render_chat` (tokens and
the fine-tuning mask) and `decode_chat`.
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
EOT_TEXT = "<|endoftext|>"  # its text (tiktoken's name of the special token)


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


# -- The chat format ---------------------------------------------------------------------------------------
# A conversation is a list of messages {"role": "system"|"user"|"assistant", "content": str} (OpenAI's
# fine-tuning files, Hugging Face chat datasets). Its tokens:
#     <|endoftext|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...
# The four markers take rows of the padded vocabulary that r50k_base leaves unused (50257..50260 of the 50304
# a GPT-2 model has), so token shards stay uint16 and a chat model's vocab_size is CHAT_VOCAB_SIZE. A
# message's text is encoded as ordinary text: a marker typed in a message is text, never a marker.
CHAT_TEMPLATE = "gpt-ds-chat-1"  # the name a model folder and a data manifest record
ROLE_TOKENS = {"system": 50257, "user": 50258, "assistant": 50259}
END_OF_TURN = 50260
CHAT_VOCAB_SIZE = END_OF_TURN + 1
CHAT_TOKEN_TEXT = {50257: "<|system|>", 50258: "<|user|>", 50259: "<|assistant|>", END_OF_TURN: "<|end|>"}


class ChatError(UserError):
    """A conversation that does not follow the chat format (the caller adds the file and line)."""


def check_conversation(messages: object, *, for_reply: bool = False) -> list[dict]:
    """The messages, checked: a non-empty list of {"role", "content"} with an optional system message first,
    then user and assistant turns alternating from a user's. For training (for_reply False) at least one
    assistant turn; for a reply (for_reply True) the last message is the user's."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list of {\"role\", \"content\"} objects")
    expected = "user"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatError(f"message {index + 1} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLE_TOKENS:
            raise ChatError(f"message {index + 1}: unknown role {role!r}; use system, user or assistant")
        if not isinstance(content, str):
            raise ChatError(f"message {index + 1} ({role}): content must be a string, not {type(content).__name__}")
        if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
            raise ChatError(f"message {index + 1} ({role}): weight must be 0 or 1, and only on an assistant message")
        if role == "system":
            if index:
                raise ChatError(f"message {index + 1}: a system message may only come first")
            continue
        if role != expected:
            raise ChatError(f"message {index + 1}: expected {'an' if expected == 'assistant' else 'a'} {expected} turn, got {role} "
                            "(user and assistant turns alternate, starting with the user)")
        expected = "assistant" if role == "user" else "user"
    if for_reply and expected != "assistant":
        raise ChatError("the last message must be the user's: the model replies to it")
    if not for_reply and not any(m["role"] == "assistant" for m in messages):
        raise ChatError("no assistant turn: nothing to train on")
    return messages


def render_chat(messages: list[dict], encode, *, for_reply: bool = False) -> tuple[list[int], list[int]]:
    """(tokens, mask) of a conversation: mask is 1 on what a fine-tune trains on (each assistant message's
    text and its <|end|>; not where a message has "weight": 0, as in OpenAI's files), 0 elsewhere.
    for_reply: the conversation so far, ending in an open <|assistant|> turn for the model to write.
    encode: text -> token ids (tiktoken's encode_ordinary)."""
    check_conversation(messages, for_reply=for_reply)
    tokens, mask = [EOT_TOKEN], [0]
    for message in messages:
        text = encode(message["content"])
        trained = int(message["role"] == "assistant" and message.get("weight", 1) != 0)
        tokens += [ROLE_TOKENS[message["role"]], *text, END_OF_TURN]
        mask += [0] + [trained] * (len(text) + 1)
    if for_reply:
        tokens.append(ROLE_TOKENS["assistant"])
        mask.append(0)
    return tokens, mask


def decode_chat(ids: list[int], decode) -> str:
    """Text of token ids that may hold chat markers (tiktoken's decode does not know them)."""
    out, run = [], []
    for token in ids:
        if token in CHAT_TOKEN_TEXT:
            out += [decode(run), CHAT_TOKEN_TEXT[token]]
            run = []
        else:
            run.append(token)
    return "".join(out) + decode(run)
