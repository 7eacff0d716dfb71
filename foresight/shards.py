"""Run pure shard functions on all cores.

Work that grows with the data (featurize, label, embed) is a pure function of
one shard of profiles. Locally it runs here, in spawn-started worker processes
(spawn, not fork: the services run gRPC and Polars threads, and forking a
threaded process can deadlock); with a Dask scheduler address
(`FORESIGHT_DASK_SCHEDULER`) the same functions run as tasks on that cluster
(`foresight.shards_dask`): one interface, two backends.

Workers never outlive the service: each asks the kernel for a parent-death
signal and watches its parent's pid as a fallback, and a cancelled `map`
terminates them at once instead of waiting for their shards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from foresight.errors import Cancelled

if TYPE_CHECKING:
    from foresight.shards_dask import DaskShards

T = TypeVar("T")

JOB_CANCEL: ContextVar[threading.Event | None] = ContextVar("foresight_job_cancel", default=None)
"""The cancel token of the job running in this context (set by the runtime's
`progress_stream` around each long job), so every `map` inside a job stops
with it without each caller threading the token through."""

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
CANCEL_POLL_S = 0.2  # how often a running map looks at its cancel token
WATCHDOG_POLL_S = 1.0  # how often a worker checks that its parent is alive
TERMINATE_GRACE_S = 2.0  # SIGTERM → SIGKILL for a cancelled map's workers


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when the process that started it ends.

    The kernel's parent-death signal covers kill -9 of the service; the
    watchdog thread covers platforms without prctl, and the race where the
    parent died before the signal was armed (the worker is then re-parented).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _started() -> None:
    """A no-op task: submitting one per missing worker starts the pool's processes."""


def _start_all(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start all of a pool's workers from the calling thread (a submit starts one while none is idle)."""
    while len(pool._processes) < workers:
        wait([pool.submit(_started) for _ in range(workers - len(pool._processes))])


class _Spawner:
    """One long-lived thread that starts every worker process.

    The kernel ties the parent-death signal to the *thread* that created a
    process, not to the process: a worker started from a job's thread would
    be killed when that thread ends. Starting all of a pool's workers from
    this thread, which lives as long as the service, ties them to the service.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: list[tuple[Callable[[], None], threading.Event]] = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the spawner thread and wait for it."""
        done = threading.Event()
        errors: list[BaseException] = []

        def task() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="shard-spawner", daemon=True
                )
                self._thread.start()
            self._tasks.append((task, done))
            self._wake.notify()
        done.wait()
        if errors:
            raise errors[0]

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._tasks:
                    self._wake.wait()
                task, done = self._tasks.pop(0)
            task()
            done.set()


_SPAWNER = _Spawner()


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
                pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_die_with_parent,
                    initargs=(os.getpid(),),
                )
                # Start every worker now, from the spawner thread (see _Spawner).
                _SPAWNER.run(lambda: _start_all(pool, self.workers))
                self._pool = pool
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
