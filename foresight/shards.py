"""Run pure shard functions on all cores.

Work that grows with the data (featurize, label, embed) is a pure function of
one shard of profiles. Locally it runs here, in spawn-started worker processes
(spawn, not fork: the services run gRPC and Polars threads, and forking a
threaded process can deadlock); with a Dask scheduler address
(`FORESIGHT_DASK_SCHEDULER`) the same functions run as tasks on that cluster
(`foresight.shards_dask`): one interface, two backends.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from foresight.shards_dask import DaskShards

T = TypeVar("T")


class ShardRunner:
    """A lazily started process pool for shard functions.

    `keep_alive=True` keeps the workers between calls (the trainer pays their
    start-up once); otherwise the pool ends after each `map` so idle workers
    hold no memory (the segmenter builds rarely). With one worker, or one
    task, the function runs inline. With `scheduler` (a Dask address) every
    task goes to that cluster instead, whatever `workers` says.
    """

    def __init__(
        self, workers: int, keep_alive: bool = False, scheduler: str | None = None
    ) -> None:
        self.workers = workers
        self.keep_alive = keep_alive
        self.scheduler = scheduler or None
        self._pool: ProcessPoolExecutor | None = None
        self._dask: DaskShards | None = None
        self._lock = threading.Lock()

    def _cluster(self) -> DaskShards:
        with self._lock:
            if self._dask is None:
                from foresight.shards_dask import (
                    DaskShards,
                )  # only deployments with Dask pay for it

                assert self.scheduler is not None
                self._dask = DaskShards(self.scheduler)
            return self._dask

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
                )
            return self._pool

    def map(
        self,
        fn: Callable[..., T],
        arg_lists: Sequence[tuple[Any, ...]],
        on_done: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[T]:
        """fn(*args) for every args tuple, results in order; on_done(done, total) after each."""
        if self.scheduler is not None:
            return self._cluster().map(fn, arg_lists, on_done, cancel)
        results: list[Any] = [None] * len(arg_lists)
        total = len(arg_lists)
        if self.workers <= 1 or total <= 1:
            for i, args in enumerate(arg_lists):
                results[i] = fn(*args)
                if on_done is not None:
                    on_done(i + 1, total)
            return results
        pool = self._executor()
        futures: dict[Future[T], int] = {
            pool.submit(fn, *args): i for i, args in enumerate(arg_lists)
        }
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if on_done is not None:
                    on_done(done, total)
        except BrokenProcessPool:
            self.close()  # a worker died (e.g. out of memory): start afresh next time
            raise
        finally:
            for future in futures:
                future.cancel()
            if not self.keep_alive:
                self.close()
        return results

    def close(self) -> None:
        """End the worker processes (call at shutdown)."""
        with self._lock:
            pool, self._pool = self._pool, None
            dask, self._dask = self._dask, None
        if dask is not None:
            dask.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
