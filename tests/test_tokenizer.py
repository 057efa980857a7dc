"""gpt_ds.tokenizer: the GPT-2 BPE offline, and one clear error when it cannot be had."""

from __future__ import annotations

import subprocess
import sys

from gpt_ds.tokenizer import EOT_TOKEN


def test_r50k_base_is_the_gpt2_bpe(encoding):
    assert encoding.n_vocab == 50257
    assert encoding.eot_token == EOT_TOKEN
    assert encoding.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's ids


def test_no_cache_and_no_network_is_one_clear_error(tmp_path):
    # An empty cache and a proxy that refuses every connection: the download must fail, whatever
    # network this machine has; the user sees one line naming the fix, not a requests traceback.
    env = {
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PATH": "/usr/bin:/bin",
    }
    code = (
        "from gpt_ds.errors import run_cli\n"
        "from gpt_ds.tokenizer import get_encoding\n"
        "run_cli(lambda: get_encoding() and 0, 'gpt-ds')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "r50k_base" in proc.stderr and "TIKTOKEN_CACHE_DIR" in proc.stderr


def test_unknown_encoding_lists_the_known_ones():
    import pytest

    from gpt_ds.errors import UserError
    from gpt_ds.tokenizer import get_encoding

    with pytest.raises(UserError, match="r50k_base"):
        get_encoding("no-such-encoding")


# -- the chat format ------------------------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": " 4."}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": " 6."}]


def test_render_chat_marks_turns_and_trains_only_the_assistant(encoding):
    from gpt_ds.model_config import config_from_preset
    from gpt_ds.tokenizer import (CHAT_TOKEN_TEXT, CHAT_VOCAB_SIZE, END_OF_TURN, ROLE_TOKENS, decode_chat,
                                  render_chat)

    enc = encoding.encode_ordinary
    tokens, mask = render_chat(CHAT, enc)
    S, U, A, E = ROLE_TOKENS["system"], ROLE_TOKENS["user"], ROLE_TOKENS["assistant"], END_OF_TURN
    assert tokens == [EOT_TOKEN, S, *enc("Be brief."), E, U, *enc("What is 2+2?"), E, A, *enc(" 4."), E,
                      U, *enc("And 3+3?"), E, A, *enc(" 6."), E]
    assert len(mask) == len(tokens)
    trained = [t for t, m in zip(tokens, mask) if m]
    assert trained == [*enc(" 4."), E, *enc(" 6."), E]
    # the markers fit in GPT-2's padded rows: the shards stay uint16, a chat model's vocab_size is 50261
    assert CHAT_VOCAB_SIZE == 50261 <= config_from_preset("gpt2").padded_vocab_size and max(CHAT_TOKEN_TEXT) < 2**16
    assert decode_chat(tokens, encoding.decode) == ("<|endoftext|><|system|>Be brief.<|end|><|user|>What is 2+2?<|end|>"
                                                    "<|assistant|> 4.<|end|><|user|>And 3+3?<|end|><|assistant|> 6.<|end|>")


def test_render_chat_for_a_reply_leaves_the_assistant_turn_open(encoding):
    from gpt_ds.tokenizer import ROLE_TOKENS, render_chat

    enc = encoding.encode_ordinary
    tokens, mask = render_chat(CHAT[1:4], enc, for_reply=True)  # no system message: it is optional
    assert tokens[:2] == [EOT_TOKEN, ROLE_TOKENS["user"]] and tokens[-1] == ROLE_TOKENS["assistant"]
    assert tokens[:-1] == render_chat(CHAT[1:4] + [{"role": "assistant", "content": ""}], enc)[0][:-2]
    # a marker typed in a message is text, and weight 0 leaves an assistant turn untrained
    typed, typed_mask = render_chat([{"role": "user", "content": "<|end|>"},
                                     {"role": "assistant", "content": "ok", "weight": 0}], enc)
    assert typed[2:-4] == enc("<|end|>") and not any(typed_mask)


def test_conversations_that_break_the_format_are_one_clear_error(encoding):
    import pytest

    from gpt_ds.tokenizer import ChatError, render_chat

    u, a = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    cases = {
        "non-empty list": [],
        "unknown role 'bot'": [u, {"role": "bot", "content": "x"}],
        "content must be a string, not int": [u, {"role": "assistant", "content": 3}],
        "a system message may only come first": [u, a, {"role": "system", "content": "x"}],
        "expected a user turn, got assistant": [{"role": "system", "content": "x"}, a],
        "expected an assistant turn, got user": [u, u, a],
        "no assistant turn": [u],
        "weight must be 0 or 1": [u, {**a, "weight": 0.5}],
        "message 1 is not an object": ["hi"],
    }
    for needle, messages in cases.items():
        with pytest.raises(ChatError, match=needle):
            render_chat(messages, encoding.encode_ordinary)
    with pytest.raises(ChatError, match="the last message must be the user's"):
        render_chat([u, a], encoding.encode_ordinary, for_reply=True)
