"""Segmenter composition root: settings → storage → domain → servicer → server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from foresight.api.segmenter.v1 import segmenter_pb2, segmenter_pb2_grpc
from foresight.runtime import ServiceRuntime, run_service
from foresight.settings import load_settings
from foresight.shards import prestart
from foresight.storage import ArtifactStore, Database
from services.segmenter.domain import Segmenter
from services.segmenter.servicer import SegmenterServicer
from services.segmenter.settings import SegmenterSettings

log = logging.getLogger("foresight.segmenter")
SERVICE_NAME = segmenter_pb2.DESCRIPTOR.services_by_name["SegmenterService"].full_name


def build_segmenter(settings: SegmenterSettings) -> Segmenter:
    """The domain facade over the shared stores."""
    if settings.preload_shard_workers:
        prestart(settings.shard_processes, settings.dask_scheduler, "services.segmenter.servicer")
    return Segmenter(
        Database(settings.resolved_database_url),
        ArtifactStore(settings.data_dir / "artifacts", settings.artifacts_url),
        settings.events_location,
        shards=settings.shards,
        workers=settings.shard_processes,
        scheduler=settings.dask_scheduler,
        ef=settings.hnsw_ef,
        rebuild_corrupt=settings.rebuild_corrupt_index,
    )


async def snapshot_loop(segmenter: Segmenter, interval_s: float) -> None:
    """Save upserts and removals as a new index version every `interval_s` when there are any."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(segmenter.snapshot_if_dirty)
        except Exception:  # a failed snapshot is retried next time; serving goes on
            log.exception("index snapshot failed")


def make_setup(
    settings: SegmenterSettings,
) -> Callable[[ServiceRuntime], Awaitable[Callable[[], Awaitable[None]]]]:
    """The `serve` setup: register the servicer; the ready hook migrates and loads the index."""

    async def setup(runtime: ServiceRuntime) -> Callable[[], Awaitable[None]]:
        segmenter = build_segmenter(settings)
        segmenter_pb2_grpc.add_SegmenterServiceServicer_to_server(
            SegmenterServicer(segmenter), runtime.server
        )

        def snapshot_on_shutdown() -> None:
            # After the server drained its calls: every acknowledged write is in
            # the journal already; the snapshot makes the next start quick.
            saved = segmenter.snapshot_if_dirty()
            if saved is not None:
                log.info("index saved at shutdown", extra={"version": saved.version})

        runtime.on_shutdown(snapshot_on_shutdown)

        async def ready() -> None:
            await asyncio.to_thread(segmenter.db.migrate)
            # Health stays NOT_SERVING until the index is loaded (or rebuilt).
            await asyncio.to_thread(segmenter.load)
            if settings.snapshot_interval_s > 0:
                runtime.in_background(snapshot_loop(segmenter, settings.snapshot_interval_s))

        return ready

    return setup


def main() -> None:
    """Start the segmenter (`foresight-segmenter`)."""
    settings = load_settings(SegmenterSettings)
    with contextlib.suppress(KeyboardInterrupt):
        run_service("segmenter", settings, [SERVICE_NAME], make_setup(settings))


if __name__ == "__main__":
    main()
