"""Composition root of the scorer: settings → stores → domain → gRPC server(s).

With FORESIGHT_SCORER_SERVER_PROCESSES=N the process forks N server processes
before any gRPC object exists (gRPC's multiprocessing pattern); each runs the
shared `serve` on the same port with SO_REUSEPORT, so the kernel spreads
connections and lookups scale across cores. Every worker follows the registry and loads
the snapshots itself; worker 0 also runs the scoring schedule and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from foresight.api.scorer.v1 import scorer_pb2_grpc
from foresight.runtime.logs import configure_logging
from foresight.runtime.server import ServiceRuntime, fatal_startup_errors, run_service
from foresight.settings import load_settings
from foresight.shards import prestart
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from services.scorer.explain import configure_native_threads
from services.scorer.health import Thresholds
from services.scorer.recovery import recover_interrupted
from services.scorer.service import Scorer, ScorerConfig
from services.scorer.servicer import SERVICE_NAME, ScorerServicer
from services.scorer.settings import ScorerSettings

log = logging.getLogger("foresight.scorer.main")


def build_scorer(settings: ScorerSettings, db: Database) -> Scorer:
    """The domain facade over the stores the settings name."""
    configure_native_threads()
    if settings.preload_shard_workers:  # the service, and the explain kernel's Numba
        prestart(
            settings.resolved_scoring_threads,
            settings.dask_scheduler,
            "services.scorer.servicer",
            "services.scorer.kernel_preload",
        )
    config = ScorerConfig(
        artifacts_dir=settings.artifacts_dir,
        artifacts_url=settings.artifacts_url,
        events_dir=settings.events_location,
        scoring_threads=settings.resolved_scoring_threads,
        top_factors=settings.top_factors,
        cache_dir=settings.data_dir / "cache" / "scorer",
        shards=settings.shards,
        health_sample=settings.health_sample_profiles,
        health=Thresholds(settings.health_auc_drop, settings.health_psi_threshold),
        dask_scheduler=settings.dask_scheduler,
    )
    return Scorer(db, config)


async def _every(seconds: float, what: str, work: Callable[[], object]) -> None:
    """Run `work` (a blocking callable) in a thread every `seconds`, logging failures."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.exception("%s failed", what)


def make_setup(
    settings: ScorerSettings,
    scorer: Scorer,
    *,
    worker: int = 0,
    follow: bool = True,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> Callable[[ServiceRuntime], Awaitable[Callable[[], Awaitable[None]]]]:
    """The `serve` setup: register the servicer; the ready hook loads models and snapshots.

    Once ready, every worker follows the registry; worker 0 also runs the scoring
    schedule. `extra_handlers` go on the same server (the benchmark's empty handler).
    """

    async def setup(runtime: ServiceRuntime) -> Callable[[], Awaitable[None]]:
        scorer_pb2_grpc.add_ScorerServiceServicer_to_server(ScorerServicer(scorer), runtime.server)
        runtime.on_shutdown(scorer.engine.close)  # workers or the Dask client; pending deletes
        if extra_handlers:
            runtime.server.add_generic_rpc_handlers(tuple(extra_handlers))

        async def ready() -> None:
            await asyncio.to_thread(scorer.refresh)
            if not follow:
                return
            runtime.in_background(_every(settings.poll_seconds, "registry refresh", scorer.refresh))
            if worker == 0:
                runtime.in_background(
                    _every(
                        settings.schedule_seconds,
                        "scheduled scoring",
                        lambda: scorer.run_due(datetime.now(UTC)),
                    )
                )

        return ready

    return setup


@dataclass(frozen=True)
class RunningScorer:
    """An in-process scorer (tests, the benchmark): started and SERVING."""

    runtime: ServiceRuntime
    scorer: Scorer
    port: int

    async def stop(self, grace: float | None = None) -> None:
        """Stop following, then the server (NOT_SERVING, drain within the grace)."""
        await self.runtime.stop(grace)


async def start_scorer(
    settings: ScorerSettings,
    scorer: Scorer,
    *,
    follow: bool = True,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> RunningScorer:
    """Start one in-process server the way `serve` does, without waiting for a signal."""
    runtime = ServiceRuntime(settings, [SERVICE_NAME])
    setup = make_setup(settings, scorer, follow=follow, extra_handlers=extra_handlers)
    ready = await setup(runtime)
    port = await runtime.start()
    await ready()
    await runtime.set_serving(True)
    return RunningScorer(runtime, scorer, port)


def _serve_process(settings: ScorerSettings, worker: int) -> None:
    """One server process; workers after the first keep /metrics off and write no port file."""
    if worker:
        settings = settings.model_copy(update={"metrics_port": 0, "port_file": None})
    db = Database(settings.resolved_database_url)
    try:
        run_service(
            f"scorer-{worker}" if settings.server_processes > 1 else "scorer",
            settings,
            [SERVICE_NAME],
            make_setup(settings, build_scorer(settings, db), worker=worker),
            reuse_port=settings.server_processes > 1,
        )
    finally:
        db.dispose()


def main() -> None:
    """Entry point of `foresight-scorer`."""
    settings = load_settings(ScorerSettings)
    configure_logging("scorer", settings.log_level, settings.log_json)
    with fatal_startup_errors("scorer"):
        db = Database(settings.resolved_database_url)
        db.migrate()
        # Before any worker serves: the runs a killed scorer left RUNNING become
        # FAILED "interrupted" and score files no READY run points at are removed.
        interrupted, removed = recover_interrupted(
            db, ArtifactStore(settings.artifacts_dir, settings.artifacts_url)
        )
        log.info("recovered", extra={"interrupted_runs": interrupted, "files_removed": removed})
        db.dispose()
    if settings.server_processes == 1:
        _serve_process(settings, 0)
        return
    # Fork before any gRPC server or thread exists, as gRPC requires.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_serve_process, args=(settings, i), name=f"scorer-{i}")
        for i in range(settings.server_processes)
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
