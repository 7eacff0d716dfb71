"""Composition root of the scorer: settings → stores → domain → gRPC server(s).

With FORESIGHT_SCORER_WORKERS=N the process forks N workers before any gRPC
object exists (gRPC's multiprocessing pattern); each runs its own asyncio
server on the same port with SO_REUSEPORT, so the kernel spreads connections
and lookups scale across cores. Every worker follows the registry and loads
the snapshots itself; worker 0 also runs the scoring schedule and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from foresight.api.scorer.v1 import scorer_pb2_grpc
from foresight.runtime.logs import configure_logging
from foresight.runtime.server import ServiceRuntime
from foresight.settings import load_settings
from foresight.storage.artifacts import atomic_write_bytes
from foresight.storage.db import Database
from services.scorer.explain import configure_native_threads
from services.scorer.service import Scorer, ScorerConfig
from services.scorer.servicer import SERVICE_NAME, ScorerServicer
from services.scorer.settings import ScorerSettings

log = logging.getLogger("foresight.scorer.main")


def build_scorer(settings: ScorerSettings, db: Database) -> Scorer:
    """The domain facade over the stores the settings name."""
    configure_native_threads()
    config = ScorerConfig(
        artifacts_dir=settings.artifacts_dir,
        events_dir=settings.resolved_events_dir,
        scoring_threads=settings.resolved_scoring_threads,
        top_factors=settings.top_factors,
    )
    return Scorer(db, config)


async def _every(seconds: float, what: str, work: object) -> None:
    """Run `work` (a blocking callable) in a thread every `seconds`, logging failures."""
    assert callable(work)
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.exception("%s failed", what)


@dataclass
class RunningScorer:
    """A started scorer server with its background tasks."""

    runtime: ServiceRuntime
    scorer: Scorer
    port: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float | None = None) -> None:
        """Stop background work, then the server (NOT_SERVING, drain within the grace)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.runtime.stop(grace)


async def start_scorer(
    settings: ScorerSettings,
    scorer: Scorer,
    *,
    worker: int = 0,
    follow: bool = True,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> RunningScorer:
    """Start one server; health turns SERVING once models and snapshots are loaded.

    `extra_handlers` go on the same server (the benchmark's empty baseline handler).
    """
    runtime = ServiceRuntime(settings, [SERVICE_NAME], reuse_port=settings.workers > 1)
    scorer_pb2_grpc.add_ScorerServiceServicer_to_server(ScorerServicer(scorer), runtime.server)
    if extra_handlers:
        runtime.server.add_generic_rpc_handlers(tuple(extra_handlers))
    port = await runtime.start()
    await asyncio.to_thread(scorer.refresh)  # the ready hook: models and snapshots in memory
    await runtime.set_serving(True)
    running = RunningScorer(runtime, scorer, port)
    if follow:
        running.tasks.append(
            asyncio.create_task(_every(settings.poll_seconds, "registry refresh", scorer.refresh))
        )
        if worker == 0:
            running.tasks.append(
                asyncio.create_task(
                    _every(
                        settings.schedule_seconds,
                        "scheduled scoring",
                        lambda: scorer.run_due(datetime.now(UTC)),
                    )
                )
            )
    return running


async def _serve(settings: ScorerSettings, worker: int) -> None:
    db = Database(settings.resolved_database_url)
    scorer = build_scorer(settings, db)
    if worker:
        # One /metrics endpoint per port; the other workers keep theirs off.
        settings = settings.model_copy(update={"metrics_port": 0})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_scorer(settings, scorer, worker=worker)
    if worker == 0 and settings.port_file is not None:
        atomic_write_bytes(settings.port_file, str(running.port).encode())
    log.info("serving", extra={"port": running.port, "worker": worker, "pid": os.getpid()})
    await stop.wait()
    log.info("stopping", extra={"grace_s": settings.grace_seconds, "worker": worker})
    await running.stop()
    db.dispose()


def _worker(settings: ScorerSettings, worker: int) -> None:
    configure_logging(f"scorer-{worker}", settings.log_level, settings.log_json)
    asyncio.run(_serve(settings, worker))


def main() -> None:
    """Entry point of `foresight-scorer`."""
    settings = load_settings(ScorerSettings)
    configure_logging("scorer", settings.log_level, settings.log_json)
    db = Database(settings.resolved_database_url)
    db.migrate()
    db.dispose()
    if settings.workers == 1:
        asyncio.run(_serve(settings, 0))
        return
    # Fork before any gRPC server or thread exists, as gRPC requires.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker, args=(settings, i), name=f"scorer-{i}", daemon=False)
        for i in range(settings.workers)
    ]
    for w in workers:
        w.start()

    def forward(signum: int, _frame: object) -> None:
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for w in workers:
        w.join()
    sys.exit(max((w.exitcode or 0) for w in workers))


if __name__ == "__main__":
    main()
