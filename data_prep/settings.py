"""The settings of one preparation run (`PrepareSettings`): the single source of truth for the
command-line flags of `python -m data_prep` and the keyword options of `data_prep.prepare`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt_ds.errors import UserError
from gpt_ds.tokenizer import DEFAULT_ENCODING

DEFAULT_VAL_FRACTION = 0.005
DEFAULT_SHARD_TOKENS = 100_000_000  # llm.c's shard size: 200 MB of uint16 per shard
DEFAULT_SEED = 1337
DEFAULT_TEXT_FIELD = "text"  # the jsonl field, or table column, that holds a document's text
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
    text_field: str = DEFAULT_TEXT_FIELD
    force: bool = False
    strict: bool = False
    verbose: bool = True  # print what was done (and a progress bar on a terminal)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        object.__setattr__(self, "out", Path(self.out))
        self._validate()

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
        if not self.text_field:
            raise UserError(f"--text-field must name a jsonl field or table column, e.g. {DEFAULT_TEXT_FIELD}")

    def output_settings(self) -> dict:
        """The settings the shards' bytes depend on (with the encoding and the input files)."""
        return {
            "val_fraction": self.val_fraction,
            "shard_tokens": self.shard_tokens,
            "seed": self.seed,
            "text_field": self.text_field,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["inputs"] = list(self.inputs)
        return d
