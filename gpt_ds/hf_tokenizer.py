"""The tokenizer of a Hugging Face export: transformers' GPT-2 tokenizer files, converted from tiktoken.

`gpt_ds.hf export` writes them beside the weights, so `AutoTokenizer.from_pretrained(HF_DIR)` works
offline and gives the ids gpt-ds trained on. Both are the same byte-level BPE written two ways:
- tiktoken keeps one rank per token's bytes and merges, in each word, the adjacent pair whose joined
  bytes have the lowest rank;
- transformers keeps a vocabulary of strings (each byte shown as one printable character, GPT-2's
  byte-to-unicode table) and an ordered list of merges (pairs of vocabulary strings).
So the vocabulary is the ranks with every token's bytes spelled in those characters, and the merges
are, for each token of more than one byte in rank order, the two tokens it is made of: the pair left
when tiktoken's own merging is run on its bytes with only lower ranks allowed. The words are split by
the same regular expression on both sides (GPT-2's).
A chat model's tokenizer also has the chat markers (gpt_ds.tokenizer.CHAT_TOKEN_TEXT) as special tokens at
their ids, `<|end|>` as its eos token, and `chat_template`: the Jinja template (transformers' format) whose
tokens are gpt_ds.tokenizer.render_chat's (`chat_jinja`).
"""

from __future__ import annotations

import json
from typing import Any

from gpt_ds.tokenizer import CHAT_TOKEN_TEXT, END_OF_TURN, EOT_TEXT, ROLE_TOKENS, get_encoding

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
HF_TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)
MERGES_HEADER = "#version: 0.2"  # GPT-2's merges.txt starts so; readers skip the line


def byte_characters() -> list[str]:
    """GPT-2's byte-to-unicode table: the character that stands for byte b is entry b. Printable
    Latin-1 bytes stand for themselves, the others (controls, space, soft hyphen) for 256, 257, ...
    in byte order, so no token string holds whitespace and a merge line splits at its one space."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def _halves(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge makes `token`: tiktoken's merging of its bytes with ranks below `rank`."""
    parts = [bytes([b]) for b in token]
    while True:
        joined = [ranks.get(parts[i] + parts[i + 1], rank) for i in range(len(parts) - 1)]
        best = min(range(len(joined)), key=joined.__getitem__)
        if joined[best] >= rank:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def chat_jinja() -> str:
    """The chat template of a chat model's export, in transformers' Jinja: render_chat's text, "<|endoftext|>",
    then each message as its role's marker, its content and "<|end|>"; with add_generation_prompt a final
    "<|assistant|>". An unknown role is an error, as in gpt-ds; the order of turns is not checked."""
    markers = {role: CHAT_TOKEN_TEXT[token] for role, token in ROLE_TOKENS.items()}
    end, eot = json.dumps(CHAT_TOKEN_TEXT[END_OF_TURN]), json.dumps(EOT_TEXT)
    return (f"{{% set markers = {json.dumps(markers)} %}}{{{{ {eot} }}}}"
            "{% for message in messages %}"
            "{% if message['role'] not in markers %}"
            "{{ raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}{% endif %}"
            f"{{{{ markers[message['role']] + message['content'] + {end} }}}}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ markers['assistant'] }}{% endif %}")


def tokenizer_files(encoding_name: str, model_max_length: int, chat: bool = False) -> dict[str, str]:
    """The text of each of HF_TOKENIZER_FILES for the tiktoken encoding `encoding_name` (UserError when
    it cannot be loaded offline). `model_max_length`: the model's context, in tokens. `chat`: a chat model's
    (the markers, eos `<|end|>`, the chat template)."""
    encoding = get_encoding(encoding_name)
    specials = {name: encoding.encode_single_token(name) for name in encoding.special_tokens_set}
    # A token's id is its rank: the ranks are the bytes of every id that is not a special token.
    ranks = {encoding.decode_single_token_bytes(i): i for i in range(encoding.n_vocab) if i not in specials.values()}
    characters = byte_characters()

    def spelled(token: bytes) -> str:
        return "".join(characters[b] for b in token)

    vocab = {spelled(token): rank for token, rank in ranks.items()}
    # The chat markers are no tiktoken special tokens: they take rows r50k_base leaves unused.
    markers = {text: token for token, text in CHAT_TOKEN_TEXT.items()} if chat else {}
    vocab.update({**specials, **markers})
    merges = [MERGES_HEADER]
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            merges.append(" ".join(map(spelled, _halves(token, rank, ranks))))
    eot = encoding.decode_single_token_bytes(encoding.eot_token).decode()
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}  # GPT-2's: all three are <|endoftext|>
    if chat:  # a reply ends at <|end|>; no pad token, as GPT-2 (see docs/hf.md#chat-models for why)
        special["eos_token"] = CHAT_TOKEN_TEXT[END_OF_TURN]
    config: dict[str, Any] = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,  # decode gives back the text exactly
        **special,
        "added_tokens_decoder": {
            str(token_id): {"content": content, "lstrip": False, "normalized": True, "rstrip": False,
                            "single_word": False, "special": True}
            for content, token_id in sorted({**specials, **markers}.items(), key=lambda item: item[1])
        },
    }
    if chat:
        config["chat_template"] = chat_jinja()
    return {
        VOCAB_FILE: json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), ensure_ascii=False),
        MERGES_FILE: "\n".join(merges) + "\n",
        TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        SPECIAL_TOKENS_FILE: json.dumps(special, indent=2) + "\n",
    }

