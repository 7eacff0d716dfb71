"""Long-running jobs behind server-streaming RPCs (train, score, build, discover).

The blocking job runs in a worker thread and reports progress through a
callback; the event loop turns each report into a stream message, so health
checks and other RPCs keep flowing while it runs.

Cancellation contract (one place for all five long RPCs): when the stream
ends before the job does — the caller cancelled it, its deadline passed, or
the server is stopping — the job's cancel token is set. The job sees it at
its next progress report (which raises `Cancelled`) or inside
`ShardRunner.map` (which terminates its worker processes), ends its version
or run CANCELLED with nothing published, and the stream waits up to
STOP_GRACE_S for it to wind down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from foresight.errors import Cancelled
from foresight.progress import Progress
from foresight.shards import JOB_CANCEL

T = TypeVar("T")
M = TypeVar("M")

ProgressFn = Progress  # the job's side of the stream: foresight.progress

STOP_GRACE_S = 10.0
"""How long a cancelled stream waits for its job to end (workers stop within seconds)."""

log = logging.getLogger("foresight.jobs")


async def progress_stream(
    job: Callable[[ProgressFn], T],
    on_progress: Callable[[str, float, str], M],
    on_result: Callable[[T], M],
    context: grpc.aio.ServicerContext[Any, Any] | None = None,
) -> AsyncIterator[M]:
    """Run `job(progress)` in a thread; yield converted progress, then the converted result.

    Progress is throttled to changes of stage or ≥ 1 % so a chatty job cannot
    flood the stream. The job's exception propagates to the caller (and so to
    the runtime's error mapping). The end of the RPC (`context`, whatever
    ended it) and closing or cancelling the stream cancel the job (see the
    module docstring).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, float, str]] = asyncio.Queue()
    last: list[tuple[str, float]] = [("", -1.0)]
    cancel = threading.Event()
    if context is not None:
        # Fires when the RPC ends for any reason: cancelled, deadline, server stop.
        # (grpc-stubs declare the callback as a class; any callable is accepted.)
        context.add_done_callback(lambda _context: cancel.set())  # type: ignore[arg-type]

    def report(stage: str, fraction: float, message: str) -> None:
        if cancel.is_set():
            raise Cancelled("the job was cancelled by its caller")
        prev_stage, prev_fraction = last[0]
        if stage == prev_stage and fraction - prev_fraction < 0.01:
            return
        last[0] = (stage, fraction)
        loop.call_soon_threadsafe(queue.put_nowait, (stage, fraction, message))

    def run() -> T:
        token = JOB_CANCEL.set(cancel)
        try:
            return job(report)
        finally:
            JOB_CANCEL.reset(token)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield on_progress(*getter.result())
                continue
            getter.cancel()
            while not queue.empty():
                yield on_progress(*queue.get_nowait())
            yield on_result(task.result())
            return
    finally:
        if not task.done():
            cancel.set()
            await _wind_down(task)


async def _wind_down(task: asyncio.Future[T]) -> None:
    """Wait (bounded) for a cancelled job's thread to end; its outcome is already recorded."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    with contextlib.suppress(BaseException):
        await asyncio.wait({task}, timeout=STOP_GRACE_S)
    if not task.done():
        log.warning("a cancelled job is still winding down after %.0f s", STOP_GRACE_S)
