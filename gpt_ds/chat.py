"""Talking to a chat model: the prompt a reply is written in, fitted to the model's context (with the note a
front end shows when old exchanges drop), and the reply streamed as text until the model ends its turn. The
chat format itself (markers, rendering) is gpt_ds.tokenizer's; launch/sample.py --chat and the app's chat page
are thin layers over this module."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling
from gpt_ds.inference import StreamUpdate, stream_continuation
from gpt_ds.model import GPT
from gpt_ds.model_io import ModelInfo
from gpt_ds.tokenizer import CHAT_TOKEN_TEXT, END_OF_TURN, EOT_TOKEN, get_encoding, render_chat

# A reply ends at <|end|>; any other marker, or <|endoftext|>, would start what is not the reply: it ends there too.
REPLY_STOPS = frozenset({*CHAT_TOKEN_TEXT, EOT_TOKEN})


@dataclass(frozen=True)
class ChatPrompt:
    """The tokens a reply continues, and how many of the oldest exchanges were left out to fit the context."""

    tokens: list[int]
    dropped: int


def require_chat_model(info: ModelInfo, fix: str) -> None:
    """UserError unless the folder is a chat model (one fine-tuned on a chat folder)."""
    if info.chat_template is None:
        raise UserError(f"{info.folder} is a base model (no chat template in its config.json): {fix}")


def reply_budget(block_size: int, max_new_tokens: int) -> int:
    """Tokens kept free for the reply: what was asked, but never more than half the context."""
    return max(1, min(max_new_tokens, block_size // 2))


def fit_prompt(messages: list[dict], tokenizer: str, block_size: int, reserve: int) -> ChatPrompt:
    """The conversation rendered for a reply, its oldest user/assistant exchanges dropped (a system message
    stays) until `reserve` tokens are left for the reply. UserError when the last message alone is too long."""
    encode = get_encoding(tokenizer).encode_ordinary
    system = messages[:1] if messages and messages[0].get("role") == "system" else []
    turns = messages[len(system):]
    for dropped in range(0, max(len(turns), 1), 2):  # whole exchanges: the kept turns still start with a user's
        tokens, _ = render_chat(system + turns[dropped:], encode, for_reply=True)
        if len(tokens) + reserve <= block_size:
            return ChatPrompt(tokens, dropped // 2)
    raise UserError(f"the last message is {len(tokens)} tokens with the system message, and the reply needs "
                    f"{reserve} more: more than this model's context of {block_size} tokens; shorten it")


def dropped_note(dropped: int, block_size: int) -> str:
    """What a front end tells the user when fit_prompt left out `dropped` exchanges."""
    oldest = "the oldest exchange" if dropped == 1 else f"the {dropped} oldest exchanges"
    return f"{oldest} left out: the conversation outgrew the {block_size}-token context"


def stream_reply(model: GPT, info: ModelInfo, prompt: ChatPrompt, sampling: Sampling) -> Iterator[StreamUpdate]:
    """The reply as growing text, ending before <|end|> (or any other marker)."""
    return stream_continuation(model, info.tokenizer, prompt.tokens, replace(sampling, stop_token=END_OF_TURN),
                               stop_tokens=REPLY_STOPS)
