"""Run pure shard functions on all cores.

Work that grows with the data (featurize, label, embed) is a pure function of
one shard of profiles. Locally it runs here, in worker processes forked by a
forkserver (never forked from the service itself: it runs gRPC and Polars
threads, and forking a threaded process can deadlock); with a Dask scheduler
address (`FORESIGHT_DASK_SCHEDULER`) the same functions run as tasks on that
cluster (`foresight.shards_dask`): one interface, two backends.

A service calls `prestart` with its modules when it starts: the forkserver
imports them (Polars, ONNX Runtime, Numba, ...) once, and every pool
of every later job forks from it with those imports done, instead of paying
seconds of imports per worker and job as spawn-started workers would.

Workers never outlive the service: each watches the service's pid (a pidfd
on Linux) and ends itself when the service ends, kill -9 included; a
cancelled `map` terminates them at once instead of waiting for their shards.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextvars import ContextVar
from multiprocessing import forkserver
from typing import TYPE_CHECKING, Any, TypeVar

from foresight.errors import Cancelled

if TYPE_CHECKING:
    from foresight.shards_dask import DaskShards

T = TypeVar("T")

JOB_CANCEL: ContextVar[threading.Event | None] = ContextVar("foresight_job_cancel", default=None)
"""The cancel token of the job running in this context (set by the runtime's
`progress_stream` around each long job), so every `map` inside a job stops
with it without each caller threading the token through."""

CANCEL_POLL_S = 0.2  # how often a running map looks at its cancel token
WATCHDOG_POLL_S = 1.0  # how often a worker checks the service, where it has no pidfd
TERMINATE_GRACE_S = 2.0  # SIGTERM → SIGKILL for a cancelled map's workers

_FORKSERVER = multiprocessing.get_context("forkserver")


def prestart(workers: int, scheduler: str | None, *modules: str) -> None:
    """Start the forkserver now, with `modules` imported in it, when shards run in local
    pools (more than one worker, 0 = all cores; no Dask scheduler).

    It imports them in the background while the service goes on starting; its
    pools then start in tens of milliseconds instead of each worker importing
    for seconds. Name what the service's main module imports, not that module:
    every worker runs the main module again (multiprocessing's rule), which is
    then cheap, and one already imported would make runpy warn. The forkserver
    is one per process: a call while it runs changes nothing, and a pool used
    before any call starts it with nothing preloaded (its workers then import
    what their functions need).
    """
    if (workers or os.cpu_count() or 1) <= 1 or scheduler:
        return
    _FORKSERVER.set_forkserver_preload(list(modules))
    forkserver.ensure_running()


def wait_prestarted() -> None:
    """Block until the forkserver `prestart` started has imported its modules: a
    process forked from it then starts (and ends at once), which it only can after them."""
    process = _FORKSERVER.Process(target=os.getpid)
    process.start()
    process.join()


def _start_worker(service_pid: int, environ: dict[str, str]) -> None:
    """Pool initializer: the service's environment as it is now (the forkserver's is
    from when it started: credentials set since then count), then `_die_with_service`."""
    os.environ.clear()
    os.environ.update(environ)
    _die_with_service(service_pid)


def _die_with_service(service_pid: int) -> None:
    """End this worker when the service that asked for it ends.

    A worker's parent is the forkserver, which outlives the service while any
    worker lives, so the worker watches the service itself: its pidfd becomes
    readable the moment the service exits, kill -9 included (where there is no
    pidfd, the pid is polled). A service already gone ends the worker at once.
    """
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(service_pid)
        except OSError:  # no such process: the service is gone already
            os._exit(1)

        def wait() -> None:
            select.select([pidfd], [], [])

    else:  # pragma: no cover - not Linux

        def wait() -> None:
            while True:
                try:
                    os.kill(service_pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(WATCHDOG_POLL_S)

    def watch() -> None:
        wait()
        os._exit(1)

    threading.Thread(target=watch, name="service-watchdog", daemon=True).start()


class ShardRunner:
    """A lazily started process pool for shard functions.

    `keep_alive=True` keeps the workers between calls (the trainer pays their
    start-up once); otherwise the pool ends after each `map` so idle workers
    hold no memory (the segmenter builds rarely). With one worker, or one
    task, the function runs inline.
    """

    def __init__(
        self, workers: int, keep_alive: bool = False, scheduler: str | None = None
    ) -> None:
        self.workers = workers
        self.keep_alive = keep_alive
        self.scheduler = scheduler or None  # a Dask address: every task goes to that cluster
        self._pool: ProcessPoolExecutor | None = None
        self._dask: DaskShards | None = None
        self._lock = threading.Lock()

    def _cluster(self) -> DaskShards:
        with self._lock:
            if self._dask is None:
                from foresight.shards_dask import (
                    DaskShards,  # only deployments with Dask pay for it
                )

                assert self.scheduler is not None
                self._dask = DaskShards(self.scheduler)
            return self._dask

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=_FORKSERVER,
                    initializer=_start_worker,
                    initargs=(os.getpid(), dict(os.environ)),
                )
            return self._pool

    def map(
        self,
        fn: Callable[..., T],
        arg_lists: Sequence[tuple[Any, ...]],
        on_done: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[T]:
        """fn(*args) for every args tuple, results in order; on_done(done, total) after each.

        When `cancel` (by default the running job's token, `JOB_CANCEL`) is
        set the map raises `Cancelled`: between shards when running inline,
        and within CANCEL_POLL_S in the pool, whose workers are then
        terminated (a shard function has no cancellation points).
        """
        cancel = cancel if cancel is not None else JOB_CANCEL.get()
        _check(cancel)
        if self.scheduler is not None:
            return self._cluster().map(fn, arg_lists, on_done, cancel)
        total = len(arg_lists)
        if self.workers <= 1 or total <= 1:
            results: list[T] = []
            for args in arg_lists:
                results.append(fn(*args))
                _check(cancel)
                if on_done is not None:
                    on_done(len(results), total)
            return results
        return self._map_pool(fn, arg_lists, on_done, cancel)

    def _map_pool(
        self,
        fn: Callable[..., T],
        arg_lists: Sequence[tuple[Any, ...]],
        on_done: Callable[[int, int], None] | None,
        cancel: threading.Event | None,
    ) -> list[T]:
        results: list[Any] = [None] * len(arg_lists)
        pool = self._executor()
        futures: dict[Future[T], int] = {
            pool.submit(fn, *args): i for i, args in enumerate(arg_lists)
        }
        pending: set[Future[T]] = set(futures)
        finished = 0
        try:
            while pending:
                done, pending = wait(pending, timeout=CANCEL_POLL_S, return_when=FIRST_COMPLETED)
                _check(cancel)
                for future in done:
                    results[futures[future]] = future.result()
                    finished += 1
                    if on_done is not None:
                        on_done(finished, len(futures))
        except Cancelled:
            self.terminate()  # the job is over: its shards in flight are abandoned
            raise
        except BrokenProcessPool:
            self.close()  # a worker died (e.g. out of memory): start afresh next time
            raise
        finally:
            for future in pending:
                future.cancel()
            if not self.keep_alive:
                self.close()
        return results

    def terminate(self) -> None:
        """End the worker processes now, abandoning any shards in flight (used on cancel)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(pool._processes.values())
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """End the worker processes (call at shutdown, or when a map is over).

        Workers hold no state between shards, so they are terminated rather
        than asked to finish: a stopping service does not wait for each one
        to tear its interpreter down. A Dask client disconnects (the cluster
        keeps running).
        """
        with self._lock:
            dask, self._dask = self._dask, None
        if dask is not None:
            dask.close()
        self.terminate()


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")
