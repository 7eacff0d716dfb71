"""The Dask backend of the shard runner: the same pure shard functions as cluster tasks.

`FORESIGHT_DASK_SCHEDULER=tcp://host:8786` sends every shard task of a
`ShardRunner` here instead of the local process pool. The service process only
submits small task descriptions (where a shard's files are) and gathers each
shard's result; workers read their own shard's files from shared storage.

Failure is never a hang: connecting has a deadline, a scheduler that stays
unreachable (or keeps no worker) for `lost_after_s` ends the map with
`Unavailable`, and a task that keeps killing its workers ends it with
`ShardTaskFailed`. A worker that dies once is not an error: the scheduler runs
its tasks again elsewhere, and shard functions are pure, so the result is the
same.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from distributed import Client, Future
from distributed.client import FutureCancelledError

from foresight.errors import Cancelled, ForesightError, Unavailable

__all__ = ["DaskShards", "ShardTaskFailed"]

T = TypeVar("T")

# How often the waiting loop looks at the cancel token and the scheduler.
_POLL_S = 0.25


class ShardTaskFailed(ForesightError):
    """A shard task could not finish on the cluster (it kept killing its workers)."""


class DaskShards:
    """Runs shard functions on a dask.distributed cluster, results in order."""

    def __init__(
        self, address: str, connect_timeout_s: float = 10.0, lost_after_s: float = 30.0
    ) -> None:
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.lost_after_s = lost_after_s
        self._client: Client | None = None
        self._lock = threading.Lock()

    def _connect(self) -> Client:
        with self._lock:
            if self._client is not None and self._client.status == "running":
                return self._client
            if self._client is not None:
                self._close_client(self._client)
                self._client = None
            try:
                self._client = Client(
                    self.address, timeout=self.connect_timeout_s, set_as_default=False
                )
            except (OSError, TimeoutError) as exc:
                raise Unavailable(
                    f"the Dask scheduler at {self.address} cannot be reached "
                    f"(waited {self.connect_timeout_s:g} s)"
                ) from exc
            return self._client

    def workers(self) -> int:
        """Threads the cluster offers now (0 when it has no worker)."""
        return sum(self._connect().nthreads().values())

    def map(
        self,
        fn: Callable[..., T],
        arg_lists: Sequence[tuple[Any, ...]],
        on_done: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[T]:
        """fn(*args) for every args tuple as cluster tasks; on_done(done, total) after each."""
        total = len(arg_lists)
        if total == 0:
            return []
        client = self._connect()
        prefix = f"{getattr(fn, '__name__', 'shard')}-{uuid.uuid4().hex[:12]}"
        futures: list[Future] = [
            client.submit(fn, *args, key=f"{prefix}-{i}", pure=False)
            for i, args in enumerate(arg_lists)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * total
        pending = list(futures)
        done = 0
        try:
            lost_since: float | None = None
            while done < total:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                ready = {f.key for f in pending if f.done()}
                batch = [f for f in pending if f.key in ready]
                pending = [f for f in pending if f.key not in ready]
                for future in batch:
                    results[index[future.key]] = self._result(future)
                    done += 1
                    if on_done is not None:
                        on_done(done, total)
                if batch:
                    lost_since = None
                    continue
                time.sleep(_POLL_S)
                lost_since = self._check_alive(client, lost_since)
        except BaseException:
            self._cancel(client, futures)
            raise
        return results

    def _result(self, future: Future) -> Any:
        try:
            return future.result(timeout=self.lost_after_s)
        except FutureCancelledError as exc:
            raise Unavailable(
                f"the Dask scheduler at {self.address} went away (a shard task was lost); "
                "the job stopped"
            ) from exc
        except ForesightError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "KilledWorker":
                raise ShardTaskFailed(
                    "a shard task ended every Dask worker it ran on (out of memory?)"
                ) from exc
            raise

    def _check_alive(self, client: Client, lost_since: float | None) -> float | None:
        """None while the scheduler answers and has workers; raises once lost too long."""
        healthy = client.status == "running"
        if healthy:
            try:
                healthy = bool(client.nthreads())
            except (OSError, TimeoutError):
                healthy = False
        if healthy:
            return None
        now = time.monotonic()
        if lost_since is None:
            return now
        if now - lost_since >= self.lost_after_s:
            reason = "has no workers" if client.status == "running" else "went away"
            raise Unavailable(
                f"the Dask scheduler at {self.address} {reason} "
                f"(for {self.lost_after_s:g} s); the job stopped"
            )
        return lost_since

    def _cancel(self, client: Client, futures: list[Future]) -> None:
        if client.status != "running":
            return
        with contextlib.suppress(Exception):  # the original error matters more
            client.cancel(futures, force=True)

    @staticmethod
    def _close_client(client: Client) -> None:
        # Closing the client of a dead scheduler may fail; there is nothing to keep.
        with contextlib.suppress(Exception):
            client.close(timeout=2)

    def close(self) -> None:
        """Disconnect from the scheduler (the cluster itself keeps running)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            self._close_client(client)
