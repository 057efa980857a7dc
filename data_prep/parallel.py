"""An ordered, bounded parallel map over worker processes: results come back in submission order,
with at most `max_in_flight` batches submitted but not yet consumed, so memory stays bounded by
the batch size however large the input stream is (a reorder buffer of a few batches)."""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

Meta = TypeVar("Meta")


def _context() -> multiprocessing.context.BaseContext:
    # forkserver: workers fork from a clean single-threaded server (plain fork from a process that
    # runs threads, such as torch's or tqdm's, can deadlock), and starting it is much cheaper than spawn.
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["data_prep.tokenize"])
        return context
    return multiprocessing.get_context("spawn")


def _init_pool_worker(initializer: Callable[..., None], *args) -> None:
    # Ctrl-C reaches the whole process group: only the main process handles it (it stops the pool
    # and cleans up); workers would otherwise each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*args)


class OrderedPool:
    """`with OrderedPool(workers, func, init, init_args) as pool: for meta, result in pool.map(items)`.

    With one worker everything runs in this process (no pickling, no start-up cost); the results
    are the same either way, which is what makes the output independent of --workers.
    """

    def __init__(self, workers: int, func: Callable[[Any], Any], initializer: Callable[..., None], init_args: tuple):
        self.workers = workers
        self.func = func
        self.initializer = initializer
        self.init_args = init_args
        self._pool = None

    def __enter__(self) -> "OrderedPool":
        if self.workers > 1:
            self._pool = _context().Pool(self.workers, _init_pool_worker, (self.initializer, *self.init_args))
        else:
            self.initializer(*self.init_args)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            if exc[0] is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None

    def map(self, items: Iterable[tuple[Any, Meta]], max_in_flight: int | None = None) -> Iterator[tuple[Meta, Any]]:
        """Yield `(meta, func(payload))` for each `(payload, meta)` of `items`, in order."""
        if self._pool is None:
            for payload, meta in items:
                yield meta, self.func(payload)
            return
        limit = max_in_flight or 2 * self.workers + 2
        in_flight: deque = deque()
        for payload, meta in items:
            in_flight.append((meta, self._pool.apply_async(self.func, (payload,))))
            if len(in_flight) >= limit:
                meta, result = in_flight.popleft()
                yield meta, result.get()
        while in_flight:
            meta, result = in_flight.popleft()
            yield meta, result.get()
