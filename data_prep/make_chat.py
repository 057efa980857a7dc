"""A conversation set that every Python installation can build, offline: `python -m data_prep.make_chat`
(console script gpt-ds-make-chat).

The conversations come from the interpreter's own documentation. For the public functions, classes and methods
of `MODULES`, a user asks what one does, or for its signature, and the assistant answers with the signature
(inspect.signature, else the `name(...)` line a builtin's docstring opens with) and the docstring's first
paragraph; a follow-up asks for the signature, or for an example (the docstring's doctest examples). For the
topics of the language reference (`pydoc_data.topics`), a user asks about a statement or keyword and the
assistant answers with the topic's first paragraphs; a follow-up asks for more. Some conversations open with
`SYSTEM_PROMPT`.

Every answer is cut at a sentence or paragraph end to at most `MAX_ANSWER_TOKENS` tokens (r50k_base), and a
conversation longer than `MAX_CONVERSATION_TOKENS` rendered is left out, so that each fits a tiny model's context.
The pool is built in sorted order and shuffled by a seeded random.Random: the same seed on the same Python
version gives the same bytes. DIR/train.jsonl and DIR/val.jsonl hold one {"messages": [...]} a line.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from data_prep.settings import DEFAULT_SEED
from gpt_ds import atomic
from gpt_ds.errors import ArgumentParser, UserError, run_cli
from gpt_ds.tokenizer import DEFAULT_ENCODING, check_conversation, get_encoding, render_chat

PROG = "python -m data_prep.make_chat"
DEFAULT_N = 3000
DEFAULT_VAL_FRACTION = 0.05
SYSTEM_PROMPT = "You are a helpful Python assistant."
SYSTEM_SHARE = 0.25  # of conversations that open with SYSTEM_PROMPT
MAX_ANSWER_TOKENS = 120
MAX_TOPIC_CHARS = 600
MAX_CONVERSATION_TOKENS = 256  # the tiny preset's context
FILES = ("train.jsonl", "val.jsonl")

# (the name a user asks about, the module imported; builtins' names are asked about bare): modules in every CPython build, importable without side
# effects, whose documentation does not depend on the platform. os.path is posixpath everywhere, so that a
# Windows build gives the same set.
MODULES = (
    ("", "builtins"), ("abc", "abc"), ("array", "array"), ("base64", "base64"), ("bisect", "bisect"),
    ("calendar", "calendar"), ("cmath", "cmath"), ("collections", "collections"), ("colorsys", "colorsys"),
    ("contextlib", "contextlib"), ("copy", "copy"), ("csv", "csv"), ("dataclasses", "dataclasses"),
    ("datetime", "datetime"), ("difflib", "difflib"), ("enum", "enum"), ("fnmatch", "fnmatch"),
    ("fractions", "fractions"), ("functools", "functools"), ("glob", "glob"), ("graphlib", "graphlib"),
    ("heapq", "heapq"), ("html", "html"), ("inspect", "inspect"), ("ipaddress", "ipaddress"),
    ("itertools", "itertools"), ("json", "json"), ("keyword", "keyword"), ("math", "math"), ("numbers", "numbers"),
    ("operator", "operator"), ("os.path", "posixpath"), ("pathlib", "pathlib"), ("pprint", "pprint"),
    ("queue", "queue"), ("random", "random"), ("re", "re"), ("secrets", "secrets"), ("shlex", "shlex"),
    ("shutil", "shutil"), ("statistics", "statistics"), ("string", "string"), ("struct", "struct"),
    ("textwrap", "textwrap"), ("traceback", "traceback"), ("types", "types"), ("urllib.parse", "urllib.parse"),
    ("uuid", "uuid"), ("warnings", "warnings"), ("weakref", "weakref"),
)

WHAT = ("What does `{name}` do?", "What is `{name}` for?", "Explain `{name}`.", "Tell me about `{name}`.",
        "What is {name} in Python?", "How do I use `{name}`?")
SIGNATURE = ("What is the signature of `{name}`?", "What arguments does `{name}` take?", "How do I call `{name}`?",
             "What parameters does `{name}` accept?")
SIGNATURE_AGAIN = ("And its signature?", "What are its parameters?", "How do I call it?")
EXAMPLE_AGAIN = ("Give an example of `{name}`.", "Can you show an example?", "Show me an example.")
TOPIC = ("What does the Python reference say about {title}?", "Explain {title} in Python.", "Tell me about {title}.")
KEYWORD = ("What does the `{keyword}` keyword do in Python?", "What is `{keyword}` used for in Python?",
           "Explain the `{keyword}` keyword.")
MORE = ("Tell me more.", "Go on.", "What else?")

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'`(])")
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # a default's repr that names a memory address changes every run


@dataclass(frozen=True)
class ChatSetSettings:
    """What to build: `n` conversations (or all there are) into `out`/train.jsonl and `out`/val.jsonl."""

    out: Path
    n: int = DEFAULT_N
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = DEFAULT_SEED
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.n < 2:
            raise UserError(f"--n must be at least 2 (one conversation for train and one for val), not {self.n} "
                            f"(default {DEFAULT_N})")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be above 0 and below 1, not {self.val_fraction} "
                            f"(default {DEFAULT_VAL_FRACTION})")
        if self.seed < 0:
            raise UserError(f"--seed must be a non-negative integer, not {self.seed}")


@dataclass(frozen=True)
class ApiDoc:
    """What the set says about one function, class or method: `name(signature)`, the first paragraph of its
    docstring, and its doctest examples (each None where it has none)."""

    name: str
    signature: str | None
    paragraph: str | None
    example: str | None


def _tokens(text: str) -> int:
    return len(get_encoding(DEFAULT_ENCODING).encode_ordinary(text))


def fit(text: str, max_tokens: int = MAX_ANSWER_TOKENS, max_chars: int | None = None) -> str | None:
    """The longest start of `text` that ends at a paragraph or sentence end and holds at most `max_tokens` tokens
    (and `max_chars` characters); None where even its first sentence is longer. Paragraphs are kept apart by a
    blank line; an indented block (code, grammar) is kept whole or left out with what follows. A start that ends
    in a colon, announcing a block left out, is taken only where no other fits, and then ends in a full stop."""
    kept, best = "", None
    for p, paragraph in enumerate(text.split("\n\n")):
        pieces = [paragraph] if paragraph[:1].isspace() else SENTENCE_END.split(paragraph)
        for s, piece in enumerate(pieces):
            kept = kept + ("\n\n" if p and not s else " " if s else "") + piece if kept else piece
            if (max_chars is not None and len(kept) > max_chars) or _tokens(kept) > max_tokens:
                return _full_stop(best)
            if not kept.endswith(":") or best is None:
                best = kept
    return _full_stop(best)


def _full_stop(text: str | None) -> str | None:
    return text[:-1] + "." if text is not None and text.endswith(":") else text


def _paragraphs(text: str) -> list[str]:
    """The paragraphs of a text (a docstring after inspect.cleandoc), each prose paragraph on one line with single
    spaces; indented blocks keep their lines."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text.strip("\n")):
        lines = block.splitlines()
        out.append(block if lines[0][:1].isspace() else " ".join(block.split()))
    return out


def _signature(obj: object, attribute: object, short: str, doc_first: str) -> str | None:
    """obj's parameters as `(a, b=1)`: inspect.signature's (less `self` for a method), else those of the
    `short(...)` line a builtin's docstring opens with; None where neither is there."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        line = re.match(rf"{re.escape(short)}(\(.*?\))\s*(?:-+>.*)?$", doc_first)
        return line.group(1) if line else None
    params = list(sig.parameters.values())
    if params and params[0].name == "self" and not isinstance(attribute, (staticmethod, classmethod)):
        sig = sig.replace(parameters=params[1:])
    return ADDRESS.sub("", str(sig))


def _example(doc: str) -> str | None:
    """The docstring's doctest examples as a session (>>> lines, then the output), as many as fit."""
    sessions = []
    for example in doctest.DocTestParser().get_examples(doc):
        source = example.source.rstrip("\n").split("\n")
        lines = [f">>> {source[0]}", *(f"... {line}" for line in source[1:]), *example.want.rstrip("\n").split("\n")]
        sessions.append("\n".join(line for line in lines if line))
    text = ""
    for session in sessions:
        candidate = f"{text}\n{session}" if text else session
        if _tokens(f"For example:\n\n{candidate}") > MAX_ANSWER_TOKENS:
            break
        text = candidate
    return f"For example:\n\n{text}" if text else None


def _api_doc(name: str, short: str, obj: object, attribute: object) -> ApiDoc | None:
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not doc or not doc.strip():
        return None
    paragraphs = _paragraphs(inspect.cleandoc(doc))
    signature = _signature(obj, attribute, short, paragraphs[0])
    if paragraphs[0].startswith(f"{short}("):  # a builtin's docstring opens with its signature line
        paragraphs = paragraphs[1:]
    room = MAX_ANSWER_TOKENS - (_tokens(f"`{name}{signature}`\n\n") if signature is not None else 0)  # both answer
    paragraph = fit(paragraphs[0], room) if paragraphs else None
    if paragraph is None and signature is None:
        return None
    return ApiDoc(name, signature, paragraph, _example(doc))


def _public(names: Iterable[str], owner_module: str | None, space: object) -> list[tuple[str, object]]:
    """(name, object) of the public functions and classes among `names` of `space`; with owner_module, only
    those defined there (or in its C accelerator, _name)."""
    found = []
    for short in sorted(names):
        obj = getattr(space, short, None)
        if short.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if owner_module is not None and getattr(obj, "__module__", None) not in (owner_module, f"_{owner_module}"):
            continue
        found.append((short, obj))
    return found


def api_docs() -> list[ApiDoc]:
    """What the set says about every public function and class of MODULES (those named in a module's __all__,
    else those it defines) and their public methods, in sorted order; an object under two names once."""
    docs, seen = [], set()
    for shown, imported in MODULES:
        module = importlib.import_module(imported)
        names = getattr(module, "__all__", None)
        for short, obj in _public(names if names is not None else vars(module), None if names else imported, module):
            if getattr(obj, "__name__", short) != short or id(obj) in seen:  # an alias (array.ArrayType), or
                continue  # one module's name for another's object (secrets.SystemRandom): asked about once
            seen.add(id(obj))
            name = f"{shown}.{short}" if shown else short
            docs.append(_api_doc(name, short, obj, obj))
            if inspect.isclass(obj):
                docs += [_api_doc(f"{name}.{method}", method, member, vars(obj)[method])
                         for method, member in _public(vars(obj), None, obj)]
    return [doc for doc in docs if doc is not None]


@dataclass(frozen=True)
class TopicDoc:
    """A topic of the language reference: its title, the keywords pydoc files under it, and its answer and the
    answer to "tell me more" (None where the topic says no more)."""

    title: str
    keywords: tuple[str, ...]
    answer: str
    more: str | None


def topic_docs() -> list[TopicDoc]:
    """The topics of pydoc_data.topics in sorted order, each with the keywords pydoc's help() maps to it."""
    import pydoc
    from pydoc_data.topics import topics

    keywords: dict[str, list[str]] = {}
    for keyword, target in sorted(pydoc.Helper.keywords.items()):
        while isinstance(target, str) and target:  # a keyword may point at a topic name, which points at a key
            target = pydoc.Helper.topics.get(target, "")
        if isinstance(target, tuple):
            keywords.setdefault(target[0], []).append(keyword)
    docs = []
    for key, text in sorted(topics.items()):
        title, _, body = text.partition("\n")
        full = "\n\n".join(_paragraphs(body.split("\n", 1)[1]))  # the line under the title is its underline
        answer = fit(full, max_chars=MAX_TOPIC_CHARS)
        if answer is None:
            continue
        rest = full[len(answer):].strip()  # fit keeps a start of the text (its last character may change)
        title = re.sub(r'"([^"]+)"', r"`\1`", title.strip())
        docs.append(TopicDoc(re.sub(r"^The ", "the ", title), tuple(keywords.get(key, ())), answer,
                             fit(rest, max_chars=MAX_TOPIC_CHARS) if rest else None))
    return docs


def _conversation(rng: random.Random, *turns: str) -> list[dict]:
    """user, assistant, user, ... messages, opening with SYSTEM_PROMPT for SYSTEM_SHARE of them."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < SYSTEM_SHARE else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    return messages


def conversations(seed: int) -> list[list[dict]]:
    """Every conversation the standard library gives, in a fixed order, the phrasings drawn by `seed`; those
    longer than MAX_CONVERSATION_TOKENS rendered are left out."""
    rng = random.Random(seed)
    pool = []
    for doc in api_docs():
        call = f"`{doc.name}{doc.signature}`" if doc.signature is not None else None
        ask = {"name": doc.name}
        if doc.paragraph is not None:
            pool.append(_conversation(rng, rng.choice(WHAT).format(**ask),
                                      f"{call}\n\n{doc.paragraph}" if call else doc.paragraph))
        if call is not None:
            pool.append(_conversation(rng, rng.choice(SIGNATURE).format(**ask), call))
        if call is not None and doc.paragraph is not None:
            pool.append(_conversation(rng, rng.choice(WHAT).format(**ask), doc.paragraph,
                                      rng.choice(SIGNATURE_AGAIN), call))
        if doc.example is not None and doc.paragraph is not None:
            pool.append(_conversation(rng, rng.choice(WHAT).format(**ask), doc.paragraph,
                                      rng.choice(EXAMPLE_AGAIN).format(**ask), doc.example))
    for topic in topic_docs():
        pool.append(_conversation(rng, rng.choice(TOPIC).format(title=topic.title), topic.answer))
        if topic.more is not None:
            pool.append(_conversation(rng, rng.choice(TOPIC).format(title=topic.title), topic.answer,
                                      rng.choice(MORE), topic.more))
        pool += [_conversation(rng, rng.choice(KEYWORD).format(keyword=keyword), topic.answer)
                 for keyword in topic.keywords]
    encode = get_encoding(DEFAULT_ENCODING).encode_ordinary
    return [messages for messages in pool if len(render_chat(messages, encode)[0]) <= MAX_CONVERSATION_TOKENS]


def check_out(out: Path, force: bool) -> None:
    """UserError unless train.jsonl and val.jsonl can be written into the folder `out`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder (it is created if missing)")
    there = [name for name in FILES if (out / name).exists()]
    if there and not force:
        raise UserError(f"{out / there[0]} already exists; pass --force to replace it, or choose another --out")


@dataclass(frozen=True)
class ChatSet:
    """What make_chat wrote: the conversations of each file, and how many the standard library gave."""

    train: list[list[dict]]
    val: list[list[dict]]
    available: int


def make_chat(settings: ChatSetSettings) -> ChatSet:
    """Build the pool, shuffle it by the seed, take `n`, split off val, and write both files atomically (val
    first: train.jsonl, the file the next step reads, is there only when both are)."""
    check_out(settings.out, settings.force)
    if sys.flags.optimize >= 2:
        raise UserError("this Python runs with -OO, which strips docstrings; run it without -OO")
    pool = conversations(settings.seed)
    random.Random(settings.seed).shuffle(pool)
    chosen = pool[:settings.n]
    if len(chosen) < 2:
        raise UserError(f"the standard library gave only {len(chosen)} conversations; this Python lacks its docs")
    n_val = min(max(1, round(len(chosen) * settings.val_fraction)), len(chosen) - 1)
    made = ChatSet(train=chosen[n_val:], val=chosen[:n_val], available=len(pool))
    for conversation in chosen:
        check_conversation(conversation)
    settings.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("val.jsonl", made.val), ("train.jsonl", made.train)):
        atomic.write_text(settings.out / name,
                          "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in part))
    return made


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Write a set of short conversations about Python, built offline from this interpreter's "
        "docstrings and language reference, as DIR/train.jsonl and DIR/val.jsonl (one {\"messages\": [...]} a "
        "line). The same seed on the same Python version gives the same bytes.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the folder to write (created if missing)")
    parser.add_argument("--n", type=int, default=DEFAULT_N,
                        help=f"conversations in all, or as many as there are if fewer (default {DEFAULT_N})")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                        help=f"share of them in val.jsonl, at least one (default {DEFAULT_VAL_FRACTION})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"chooses the phrasings, the order and the split (default {DEFAULT_SEED})")
    parser.add_argument("--force", action="store_true", help="replace train.jsonl and val.jsonl if they exist")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ChatSetSettings(out=args.out, n=args.n, val_fraction=args.val_fraction, seed=args.seed,
                               force=args.force)
    made = make_chat(settings)
    if not args.quiet:
        version = ".".join(map(str, sys.version_info[:3]))
        print(f"{settings.out}: {len(made.train)} conversations in train.jsonl and {len(made.val)} in val.jsonl "
              f"(of the {made.available} that Python {version}'s standard library gives, seed {settings.seed}); "
              f"next: python -m data_prep --format chat --input {settings.out / 'train.jsonl'} "
              f"--out {settings.out / 'data'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: cli(argv), PROG)


if __name__ == "__main__":
    main()
