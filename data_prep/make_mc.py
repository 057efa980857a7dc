"""An offline multiple-choice benchmark from a prepared folder's val split: `python -m data_prep.make_mc`
(console script gpt-ds-make-mc).

Each example asks which of `choices` endings really follows a context. The context is a passage of
`ctx_tokens` tokens from the val split, the true ending the `ending_tokens` tokens after it, and the other
endings are passages of the same length from elsewhere in val. No passage crosses a document boundary
(the end-of-text token), and no context or ending is whitespace alone. The true ending's position is balanced over the choices and shuffled by seed, so
chance is 1/choices. The output is jsonl in HellaSwag's schema: `ctx`, `endings`, `label`, plus `offset`,
where the context starts in the val split's tokens. The same folder and settings give the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.settings import DEFAULT_SEED
from gpt_ds import atomic
from gpt_ds.data import MANIFEST_NAME, load_manifest, open_split
from gpt_ds.errors import ArgumentParser, UserError, run_cli
from gpt_ds.tokenizer import DEFAULT_ENCODING, EOT_TOKEN, get_encoding

PROG = "python -m data_prep.make_mc"
DEFAULT_N = 500
DEFAULT_CTX_TOKENS = 64
DEFAULT_ENDING_TOKENS = 16
DEFAULT_CHOICES = 4
DRAWS_PER_DISTRACTOR = 200  # random passages tried before a context is given up as unusable


@dataclass(frozen=True)
class MCSettings:
    """What to build: `n` examples from `data`'s val split into the jsonl file `out`."""

    data: Path
    out: Path
    n: int = DEFAULT_N
    seed: int = DEFAULT_SEED
    ctx_tokens: int = DEFAULT_CTX_TOKENS
    ending_tokens: int = DEFAULT_ENDING_TOKENS
    choices: int = DEFAULT_CHOICES
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        for flag, value, default in (("--n", self.n, DEFAULT_N), ("--ctx-tokens", self.ctx_tokens, DEFAULT_CTX_TOKENS),
                                     ("--ending-tokens", self.ending_tokens, DEFAULT_ENDING_TOKENS)):
            if value < 1:
                raise UserError(f"{flag} must be a positive integer, not {value} (default {default})")
        if self.choices < 2:
            raise UserError(f"--choices must be at least 2 (the true ending and a distractor), not {self.choices}")
        if self.seed < 0:
            raise UserError(f"--seed must be a non-negative integer, not {self.seed}")

    @property
    def window(self) -> int:
        """Tokens one example takes from val: its context and its true ending."""
        return self.ctx_tokens + self.ending_tokens


def check_out(out: Path, force: bool) -> None:
    """UserError unless `out` can be written: its folder exists, and it is new (or `force`) and not a folder."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the path of a .jsonl file")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out {out} does not exist; create {out.parent} or choose another --out")
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to replace it, or choose another --out")


class ValSplit:
    """A prepared folder's val split: its tokens (the shards end to end), where its documents start and end, and
    how to decode a passage of them."""

    def __init__(self, tokens: np.ndarray, eot: int, encoding) -> None:
        self.tokens, self.encoding = tokens, encoding
        self.eots = np.flatnonzero(tokens == eot)
        bounds = np.concatenate([[-1], self.eots, [len(tokens)]])
        self.documents = [(int(a) + 1, int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a + 1]

    @classmethod
    def open(cls, data: Path) -> ValSplit:
        """The val split of the folder `data`, decoded with its manifest's encoding (ShardError naming the fix)."""
        manifest = load_manifest(data) if (data / MANIFEST_NAME).is_file() else {}
        shards = open_split(data, "val")  # llm.c's shards (no manifest) hold GPT-2 tokens
        tokens = shards[0] if len(shards) == 1 else np.concatenate(shards)
        return cls(tokens, int(manifest.get("eot_token", EOT_TOKEN)), get_encoding(manifest.get("encoding", DEFAULT_ENCODING)))

    def starts(self, window: int) -> np.ndarray:
        """The starts of non-overlapping `window`-token passages laid end to end inside each document."""
        parts = [np.arange(a, b - window + 1, window) for a, b in self.documents if b - a >= window]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def within_a_document(self, start: int, length: int) -> bool:
        nxt = np.searchsorted(self.eots, start)  # the first end-of-text at or after start
        return nxt == len(self.eots) or self.eots[nxt] >= start + length

    def text(self, start: int, length: int) -> str | None:
        """The passage decoded, or None where it cuts a UTF-8 character at either end."""
        try:
            return self.encoding.decode_bytes(self.tokens[start:start + length].tolist()).decode("utf-8")
        except UnicodeDecodeError:
            return None


def _key(text: str) -> str:
    """Endings that read the same up to whitespace count as one."""
    return " ".join(text.split())


def build_examples(val: ValSplit, settings: MCSettings) -> list[dict]:
    """`settings.n` examples, their contexts in seeded random order, or UserError when val holds too few."""
    rng = np.random.default_rng(settings.seed)
    starts = val.starts(settings.window)
    if len(starts) < settings.n:  # few passages: say exactly how many make examples
        raise _too_small(val, settings, sum(_true_ending(val, start, settings) is not None for start in starts))
    labels = rng.permutation(np.arange(settings.n) % settings.choices)
    examples: list[dict] = []
    for start in rng.permutation(starts).tolist():
        endings = _endings(val, start, settings, rng)
        if endings is None:
            continue
        label = int(labels[len(examples)])
        endings.insert(label, endings.pop(0))
        examples.append({"ctx": val.text(start, settings.ctx_tokens), "endings": endings, "label": label,
                         "offset": start})
        if len(examples) == settings.n:
            return examples
    raise _too_small(val, settings, len(examples))


def _too_small(val: ValSplit, settings: MCSettings, fit: int) -> UserError:
    return UserError(
        f"the val split of {settings.data} holds {len(val.tokens):,} tokens in {len(val.documents)} documents: room "
        f"for {fit} examples of {settings.ctx_tokens}+{settings.ending_tokens} tokens, fewer than --n {settings.n}; "
        "prepare the folder again with a larger --val-fraction, or ask for a smaller --n, --ctx-tokens or --ending-tokens")


def _true_ending(val: ValSplit, start: int, settings: MCSettings) -> str | None:
    """The ending that follows the context at `start`; None where either is blank or cuts a character. (A blank
    context would move whole into the endings under lm-eval's scoring, which gpt_ds.mc_eval scores differently.)"""
    ctx = val.text(start, settings.ctx_tokens)
    true = val.text(start + settings.ctx_tokens, settings.ending_tokens)
    if ctx is None or not ctx.strip() or true is None or not true.strip():
        return None
    return true


def _endings(val: ValSplit, start: int, settings: MCSettings, rng: np.random.Generator) -> list[str] | None:
    """The true ending first, then choices-1 distinct distractors; None where the passage cannot make an example
    (see _true_ending; or too few distinct distractors)."""
    true = _true_ending(val, start, settings)
    if true is None:
        return None
    end, length = start + settings.ctx_tokens, settings.ending_tokens
    endings, seen = [true], {_key(true)}
    for _ in range(DRAWS_PER_DISTRACTOR * (settings.choices - 1)):
        other = int(rng.integers(0, len(val.tokens) - length + 1))
        if other + length > start and other < end + length:  # overlaps this example's passage
            continue
        if not val.within_a_document(other, length):
            continue
        text = val.text(other, length)
        if text is None or not text.strip() or _key(text) in seen:
            continue
        endings.append(text)
        seen.add(_key(text))
        if len(endings) == settings.choices:
            return endings
    return None


def make_mc(settings: MCSettings) -> list[dict]:
    """Build the examples from `settings.data`'s val split and write them to `settings.out` atomically."""
    check_out(settings.out, settings.force)
    examples = build_examples(ValSplit.open(settings.data), settings)
    lines = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)
    atomic.write_text(settings.out, lines)
    return examples


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Build a multiple-choice benchmark (HellaSwag's jsonl schema: ctx, endings, label) from the val "
        "split of a folder prepared by python -m data_prep: which ending really follows the context. Chance is "
        "1/--choices.",
    )
    parser.add_argument("data", metavar="DIR", type=Path, help="a folder prepared by python -m data_prep, with a val split")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.jsonl", help="the file to write")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"examples to make (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"chooses the passages, the distractors and the labels (default {DEFAULT_SEED})")
    parser.add_argument("--ctx-tokens", type=int, default=DEFAULT_CTX_TOKENS, metavar="N",
                        help=f"tokens of context (default {DEFAULT_CTX_TOKENS})")
    parser.add_argument("--ending-tokens", type=int, default=DEFAULT_ENDING_TOKENS, metavar="M",
                        help=f"tokens of every ending (default {DEFAULT_ENDING_TOKENS})")
    parser.add_argument("--choices", type=int, default=DEFAULT_CHOICES, metavar="K",
                        help=f"endings per example, the true one among them (default {DEFAULT_CHOICES})")
    parser.add_argument("--force", action="store_true", help="replace FILE.jsonl if it exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = MCSettings(data=args.data, out=args.out, n=args.n, seed=args.seed, ctx_tokens=args.ctx_tokens,
                          ending_tokens=args.ending_tokens, choices=args.choices, force=args.force)
    make_mc(settings)
    if not args.quiet:
        print(f"{settings.out}: {settings.n} examples of {settings.ctx_tokens} context tokens and {settings.choices} "
              f"endings of {settings.ending_tokens} tokens from the val split of {settings.data}; "
              f"chance is {1 / settings.choices:.0%}")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: cli(argv), PROG)


if __name__ == "__main__":
    main()
