"""Long-running jobs behind server-streaming RPCs (train, score, build, discover).

The blocking job runs in a worker thread and reports progress through a
callback; the event loop turns each report into a stream message, so health
checks and other RPCs keep flowing while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")
M = TypeVar("M")

ProgressFn = Callable[[str, float, str], None]


async def progress_stream(
    job: Callable[[ProgressFn], T],
    on_progress: Callable[[str, float, str], M],
    on_result: Callable[[T], M],
) -> AsyncIterator[M]:
    """Run `job(progress)` in a thread; yield converted progress, then the converted result.

    Progress is throttled to changes of stage or ≥ 1 % so a chatty job cannot
    flood the stream. The job's exception propagates to the caller (and so to
    the runtime's error mapping).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, float, str]] = asyncio.Queue()
    last: list[tuple[str, float]] = [("", -1.0)]

    def report(stage: str, fraction: float, message: str) -> None:
        prev_stage, prev_fraction = last[0]
        if stage == prev_stage and fraction - prev_fraction < 0.01:
            return
        last[0] = (stage, fraction)
        loop.call_soon_threadsafe(queue.put_nowait, (stage, fraction, message))

    task = asyncio.ensure_future(asyncio.to_thread(job, report))
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
