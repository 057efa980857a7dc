"""An ordered, bounded parallel map over worker processes: results come back in submission order,
with at most `max_in_flight` batches submitted but not yet consumed, so memory stays bounded by
the batch size however large the input stream is (a reorder buffer of a few batches)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import signal
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, TypeVar

from gpt_ds.errors import UserError

Meta = TypeVar("Meta")


def _context() -> multiprocessing.context.BaseContext:
    # forkserver: workers fork from a clean single-threaded server (plain fork from a process that
    # runs threads, such as torch's or tqdm's, can deadlock), and starting it is much cheaper than spawn.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["data_prep.tokenize"])
        return context
    return multiprocessing.get_context("spawn")


def _start_forkserver() -> None:
    """Launch the forkserver, if that is the start method, so that it and its workers ignore Ctrl-C.

    A terminal sends SIGINT to the whole process group, but only the main process should handle
    it (it stops the pool and cleans up); the pool's processes would each print a traceback. An
    ignored signal stays ignored across fork and exec, and the forkserver passes its own start-up
    disposition on to every worker it forks, so SIGINT is ignored here just while the forkserver
    is launched (milliseconds: launching does not wait for it to start). Signal dispositions can
    only be changed from the main thread; a Ctrl-C does not reach other threads anyway.
    """
    if _context().get_start_method() != "forkserver" or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


class _CtrlCLatch:
    """While the pool runs, Ctrl-C only sets a flag that `check` turns into KeyboardInterrupt at a
    safe point. Raised at an arbitrary point instead, it could leave the executor's internals
    half-updated (a lock held, a worker half-started): its shutdown could then hang, or the worker
    die with a traceback after we exit. Only the main thread receives signals (and may set handlers)."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous = None

    def __enter__(self) -> "_CtrlCLatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._press)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _press(self, signum, frame) -> None:
        self.pressed = True

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


class OrderedPool:
    """`with OrderedPool(workers, func, init, init_args) as pool: for meta, result in pool.map(items)`.

    With one worker everything runs in this process (no pickling, no start-up cost); the results
    are the same either way, which is what makes the output independent of --workers. A worker
    that dies (killed for memory, say) ends the run with a UserError instead of hanging it.
    """

    def __init__(self, workers: int, func: Callable[[Any], Any], initializer: Callable[..., None], init_args: tuple):
        self.workers = workers
        self.func = func
        self.initializer = initializer
        self.init_args = init_args
        self._executor: ProcessPoolExecutor | None = None
        self._ctrl_c = _CtrlCLatch()

    def __enter__(self) -> "OrderedPool":
        if self.workers == 1:
            self.initializer(*self.init_args)
        else:
            _start_forkserver()
            self._ctrl_c.__enter__()
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=_context(), initializer=self.initializer, initargs=self.init_args
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            # On an error, drop the queued batches; the few running ones finish in a fraction of a
            # second and every worker exits normally (no half-started process left behind).
            self._executor.shutdown(wait=True, cancel_futures=exc[0] is not None)
            self._executor = None
            self._ctrl_c.__exit__()
            if exc[0] is None:
                self._ctrl_c.check()  # a Ctrl-C after the last batch still stops the run

    def map(self, items: Iterable[tuple[Any, Meta]], max_in_flight: int | None = None) -> Iterator[tuple[Meta, Any]]:
        """Yield `(meta, func(payload))` for each `(payload, meta)` of `items`, in order."""
        if self._executor is None:
            for payload, meta in items:
                yield meta, self.func(payload)
            return
        limit = max_in_flight or 2 * self.workers + 2
        in_flight: deque = deque()
        try:
            for payload, meta in items:
                self._ctrl_c.check()
                in_flight.append((meta, self._executor.submit(self.func, payload)))
                if len(in_flight) >= limit:
                    yield self._next(in_flight)
            while in_flight:
                yield self._next(in_flight)
        except BrokenProcessPool:
            raise UserError(
                "a worker process died (killed by the system, most likely for lack of memory); "
                "rerun with fewer --workers"
            ) from None

    def _next(self, in_flight: deque) -> tuple[Meta, Any]:
        meta, future = in_flight.popleft()
        result = future.result()
        self._ctrl_c.check()
        return meta, result
