"""data_prep: tokenize a text corpus into llm.c-format uint16 token shards plus a manifest.

    python -m data_prep --input CORPUS [CORPUS ...] --out DIR
    python -m data_prep --format chat --input CHATS.jsonl --out DIR   # conversations, with loss masks

Python API: `prepare(inputs, out, **options) -> manifest dict` (options: the fields of
`PrepareSettings`) and `default_corpus()`, the embedded offline corpus. The modules, in the order
data flows through them: inputs (files -> document pieces), tables (parquet and Arrow rows, with
pyarrow), tokenize (workers), parallel (ordered worker pool), split (train/val routing), writer
(shards), manifest (the output folder's state), pipeline (the run that ties them together). Beside them: make_mc (`python -m data_prep.make_mc DIR --out
FILE.jsonl`, a multiple-choice benchmark from a prepared folder's val split) and stdlib_corpus (the offline
test corpus).
"""

from data_prep.inputs import default_corpus
from data_prep.pipeline import prepare
from data_prep.settings import PrepareSettings

__all__ = ["prepare", "default_corpus", "PrepareSettings"]
