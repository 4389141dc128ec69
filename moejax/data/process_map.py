"""Data stage 1c, tokens in worker processes: an ordered map over batches, memory bounded.

`ordered_map(work, items, setup=..., workers=N)` yields `(item, work(state, item))` for every
item, in the order of `items`, where `state = setup(*setup_args)` is built once per worker
process (`moejax-prepare`: the tokenizer, loaded once per worker). The workers are started
with the "spawn" context, never fork: the parent may have imported JAX, whose threads a fork
would copy half-way. At most `in_flight` items (default `2 * workers`) are out at a time, so
the parent holds a bounded number of items however long `items` is, and results that come back
early wait for their turn. The results therefore do not depend on the number of workers.
`workers=0` runs everything in this process.

`work` and `setup` must be module-level functions (they are pickled by name), and items and
results picklable. A worker's exception is raised again in the parent; a worker process that
dies (killed, out of memory) raises RuntimeError naming its exit code.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_POLL_S = 1.0  # how often the parent checks that its workers are alive while it waits
_JOIN_S = 10.0  # how long a worker may take to finish after its last item
_END = object()  # the end of the items


def ordered_map(work: Callable[[Any, Any], Any], items: Iterable, *,
                setup: Callable[..., Any], setup_args: tuple = (), workers: int = 0,
                in_flight: int | None = None) -> Iterator[tuple[Any, Any]]:
    """`(item, work(state, item))` for each item in order, computed by `workers` processes.

    Raises:
      ValueError: workers < 0 or in_flight < 1.
    """
    if workers < 0 or (in_flight is not None and in_flight < 1):
        raise ValueError(f"workers={workers}, in_flight={in_flight}; allowed: workers >= 0, "
                         "in_flight >= 1")
    if workers == 0:
        state = setup(*setup_args)
        for item in items:
            yield item, work(state, item)
        return
    pool = _Pool(work, setup, setup_args, workers)
    try:
        yield from pool.map(items, in_flight or 2 * workers)
    except BaseException:  # also the consumer closing the generator early
        pool.close(terminate=True)
        raise
    pool.close(terminate=False)


class _Pool:
    """`workers` spawned processes reading numbered items from one queue."""

    def __init__(self, work, setup, setup_args: tuple, workers: int):
        context = multiprocessing.get_context("spawn")
        self._tasks, self._results = context.Queue(), context.Queue()
        self._processes = [
            context.Process(target=_worker, name=f"moejax-worker-{i}", daemon=True,
                            args=(work, setup, setup_args, self._tasks, self._results))
            for i in range(workers)]
        for process in self._processes:
            process.start()

    def map(self, items: Iterable, in_flight: int) -> Iterator[tuple[Any, Any]]:
        """Sends up to `in_flight` items ahead; yields (item, result) in item order."""
        items, pending, early = iter(items), {}, {}
        sent = returned = 0
        while True:
            while sent - returned < in_flight:
                item = next(items, _END)
                if item is _END:
                    break
                self._tasks.put((sent, item))
                pending[sent], sent = item, sent + 1
            if returned == sent:
                return
            while returned not in early:
                number, result, error = self._next_result()
                if error is not None:
                    raise error
                early[number] = result
            yield pending.pop(returned), early.pop(returned)
            returned += 1

    def _next_result(self) -> tuple[int, Any, BaseException | None]:
        while True:
            try:
                return self._results.get(timeout=_POLL_S)
            except queue.Empty:
                for process in self._processes:
                    if not process.is_alive():
                        raise RuntimeError(f"worker process {process.name} exited with code "
                                           f"{process.exitcode} before finishing") from None

    def close(self, *, terminate: bool) -> None:
        """Stops the workers: after their last item, or at once (`terminate`)."""
        if not terminate:
            for _ in self._processes:
                self._tasks.put(None)
        for process in self._processes:
            if not terminate:
                process.join(_JOIN_S)
            if process.is_alive():
                process.terminate()
                process.join()
        for channel in (self._tasks, self._results):
            channel.cancel_join_thread()
            channel.close()



def _worker(work, setup, setup_args: tuple, tasks, results) -> None:
    """A worker process: builds its state once, then answers numbered items until None."""
    try:
        state = setup(*setup_args)
    except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it
        results.put((-1, None, _picklable(error)))
        return
    while (task := tasks.get()) is not None:
        number, item = task
        try:
            results.put((number, work(state, item), None))
        except Exception as error:  # noqa: BLE001 - as above
            results.put((number, None, _picklable(error)))


def _picklable(error: Exception) -> Exception:
    """`error` itself when it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
