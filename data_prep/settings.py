"""The settings of one preparation run (`PrepareSettings`): the single source of truth for the
command-line flags of `python -m data_prep` and the keyword options of `data_prep.prepare`.

Two formats: "text" (a document is text) and "chat" (a document is a conversation, rendered by
gpt_ds.tokenizer.render_chat with its loss mask). The field read from jsonl records and tables defaults by
format (DEFAULT_FIELDS): that rule lives here alone."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt_ds.data import CHAT_FORMAT, TEXT_FORMAT
from gpt_ds.errors import UserError
from gpt_ds.model_config import PRESETS
from gpt_ds.tokenizer import DEFAULT_ENCODING

DEFAULT_VAL_FRACTION = 0.005
DEFAULT_SHARD_TOKENS = 100_000_000  # llm.c's shard size: 200 MB of uint16 per shard
DEFAULT_SEED = 1337
FORMATS = (TEXT_FORMAT, CHAT_FORMAT)
# The jsonl field, or table column, that holds a document: its text, or a conversation's list of messages.
DEFAULT_FIELDS = {TEXT_FORMAT: "text", CHAT_FORMAT: "messages"}
DEFAULT_TEXT_FIELD = DEFAULT_FIELDS[TEXT_FORMAT]
# A conversation's tokens at most (--max-tokens): GPT-2's context and one more, a training window (block_size
# inputs, each with its next token as the target). A longer one is truncated, or refused with --strict.
DEFAULT_MAX_TOKENS = PRESETS["gpt2"].block_size + 1
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores the count as an int32


def available_cores() -> int:
    """CPU cores this process may run on (honours taskset/cgroup affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class PrepareSettings:
    """What to prepare and how. Only `output_settings()` decides the bytes written."""

    inputs: tuple[str, ...]
    out: Path
    val_fraction: float = DEFAULT_VAL_FRACTION
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    workers: int = field(default_factory=available_cores)
    seed: int = DEFAULT_SEED
    encoding: str = DEFAULT_ENCODING
    text_field: str | None = None  # None: DEFAULT_FIELDS[format]
    format: str = TEXT_FORMAT
    max_tokens: int | None = None  # chat only; None: DEFAULT_MAX_TOKENS
    force: bool = False
    strict: bool = False
    verbose: bool = True  # print what was done (and a progress bar on a terminal)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        object.__setattr__(self, "out", Path(self.out))
        if self.text_field is None and self.format in DEFAULT_FIELDS:
            object.__setattr__(self, "text_field", DEFAULT_FIELDS[self.format])
        if self.max_tokens is None and self.chat:
            object.__setattr__(self, "max_tokens", DEFAULT_MAX_TOKENS)
        self._validate()

    @property
    def chat(self) -> bool:
        return self.format == CHAT_FORMAT

    def _validate(self) -> None:
        if not self.inputs:
            raise UserError("no inputs given; pass --input with files, folders or globs of text, .jsonl or .parquet")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(
                f"--val-fraction must be at least 0 and below 1, not {self.val_fraction}; "
                f"e.g. {DEFAULT_VAL_FRACTION} (0 makes no validation split)"
            )
        if not 1 <= self.shard_tokens <= MAX_SHARD_TOKENS:
            raise UserError(
                f"--shard-tokens must be between 1 and {MAX_SHARD_TOKENS} (the header's int32), "
                f"not {self.shard_tokens}; the default is {DEFAULT_SHARD_TOKENS}"
            )
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, not {self.workers}")
        if self.seed < 0:
            raise UserError(f"--seed must be a non-negative integer, not {self.seed}")
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if not self.text_field:
            raise UserError(f"--text-field must name a jsonl field or table column, e.g. {DEFAULT_FIELDS[self.format]}")
        if not self.chat and self.max_tokens is not None:
            raise UserError("--max-tokens limits a conversation's tokens: it needs --format chat (text is never truncated)")
        if self.chat and self.max_tokens < 2:
            raise UserError(f"--max-tokens must be at least 2 (a window of one input and its target), not {self.max_tokens}; "
                            f"the default is {DEFAULT_MAX_TOKENS}")
        if self.chat and self.shard_tokens < self.max_tokens:
            raise UserError(
                f"--shard-tokens {self.shard_tokens} is below --max-tokens {self.max_tokens}: with --format chat a "
                "conversation is never split across shards, so a shard must hold the longest; raise --shard-tokens"
            )

    def output_settings(self) -> dict:
        """The settings the shards' bytes depend on (with the encoding and the input files). A text
        preparation's are those it has always recorded; a chat one adds its format and --max-tokens."""
        settings = {
            "val_fraction": self.val_fraction,
            "shard_tokens": self.shard_tokens,
            "seed": self.seed,
            "text_field": self.text_field,
        }
        if self.chat:
            settings.update(format=self.format, max_tokens=self.max_tokens)
        return settings

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["inputs"] = list(self.inputs)
        return d
