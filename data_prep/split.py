"""The validation split: which documents go to val, decided per document and deterministic in the seed.

Document i goes to val when `val_score(seed, i) < val_fraction` (a hash, so the choice of one
document does not depend on any other and the stream never has to be held in memory). With two or
more documents each split must get at least one: until both splits have been drawn, documents
wait in an on-disk spool; if the corpus ends first, the document with the lowest score moves to
val (or the one with the highest to train). A single document always goes to train.

With masks (--format chat) each write carries the loss mask beside the tokens, and the router counts, per
split, the documents flagged truncated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from data_prep.writer import ShardWriter, Spool

SPLITS = ("train", "val")


def val_score(seed: int, index: int) -> float:
    """A number in [0, 1), uniform over documents, fixed by (seed, document index)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class DocumentRouter:
    """Sends each document's tokens to the train or val `ShardWriter`."""

    def __init__(self, writers: dict[str, ShardWriter], val_fraction: float, seed: int, spool_path: Path,
                 masks: bool = False):
        self.writers = writers
        self.val_fraction = val_fraction
        self.seed = seed
        self.documents = dict.fromkeys(SPLITS, 0)
        self.truncated = dict.fromkeys(SPLITS, 0)
        self._index = 0
        self._scores: list[float] = []  # of the spooled documents
        self._truncated: list[bool] = []  # of the spooled documents
        self._spool = Spool(spool_path, masks) if val_fraction > 0 else None
        self._target = None

    @property
    def total_documents(self) -> int:
        return self._index

    def start_document(self, truncated: bool = False) -> None:
        score = val_score(self.seed, self._index)
        self._index += 1
        if self._scores and self._split(self._scores[0]) != self._split(self._scores[-1]):
            # Both splits are drawn. Checking the last score suffices: until it, every spooled
            # document had the first one's split (else they would have been released already).
            self._release([self._split(s) for s in self._scores])
        if self._spool is not None:
            self._scores.append(score)
            self._truncated.append(truncated)
            self._spool.start_document()
            self._target = self._spool
        else:
            split = self._split(score)
            self.documents[split] += 1
            self.truncated[split] += truncated
            self._target = self.writers[split]
            self._target.start_document()

    def write(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        self._target.write(tokens, mask)

    def finish(self) -> None:
        """Settle the spooled documents, if any, and close the last shards."""
        if self._spool is not None:
            splits = [self._split(s) for s in self._scores]
            if len(splits) == 1:
                splits = ["train"]
            elif len(splits) > 1 and "val" not in splits:
                splits[int(np.argmin(self._scores))] = "val"
            elif len(splits) > 1 and "train" not in splits:
                splits[int(np.argmax(self._scores))] = "train"
            self._release(splits)
        for writer in self.writers.values():
            writer.close()

    def abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
        for writer in self.writers.values():
            writer.abort()

    def _split(self, score: float) -> str:
        return "val" if score < self.val_fraction else "train"

    def _release(self, splits: list[str]) -> None:
        """Write the spooled documents to their splits, in order, and write directly from now on."""
        for split, truncated, blocks in zip(splits, self._truncated, self._spool.documents()):
            self.documents[split] += 1
            self.truncated[split] += truncated
            self.writers[split].start_document()
            for tokens, mask in blocks:
                self.writers[split].write(tokens, mask)
        self._spool.close()
        self._spool = None
        self._scores, self._truncated = [], []
