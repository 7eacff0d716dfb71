"""Trainer composition root: settings → storage → domain → servicer → server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.encoder.trainer import EncoderTrainer
from foresight.events.store import EventStore
from foresight.runtime import ServiceRuntime, run_service
from foresight.settings import load_settings
from foresight.shards import prestart
from foresight.storage import ArtifactStore, Database
from services.trainer.ingest import Ingestor
from services.trainer.instances import Instances
from services.trainer.servicer import TrainerServicer
from services.trainer.settings import TrainerSettings
from services.trainer.training import ModelTrainer

log = logging.getLogger("foresight.trainer")
SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def build_servicer(
    settings: TrainerSettings,
) -> tuple[TrainerServicer, Callable[[], Awaitable[None]]]:
    """Wire the domain; returns the servicer and the start-up recovery hook."""
    if settings.preload_shard_workers:
        prestart(settings.shard_processes, settings.dask_scheduler, "services.trainer.servicer")
    db = Database(settings.resolved_database_url)
    store = EventStore(settings.events_location, shards=settings.shards)
    artifacts = ArtifactStore(settings.data_dir / "artifacts", settings.artifacts_url)
    settings.resolved_import_root.mkdir(parents=True, exist_ok=True)
    ingestor = Ingestor(db, store, settings.resolved_import_root)
    models = ModelTrainer(db, store, artifacts, settings.shard_processes, settings.dask_scheduler)
    encoders = EncoderTrainer(db, settings.events_location, artifacts)
    servicer = TrainerServicer(ingestor, Instances(db), models, encoders)

    async def recover() -> None:
        # Leave the stores consistent after a kill: schema current, the trainer's
        # interrupted jobs FAILED, its own temporary folders and uncatalogued
        # parts gone (other services' temporary folders are theirs to sweep).
        await asyncio.to_thread(db.migrate)
        orphans = await asyncio.to_thread(ingestor.cleanup)
        interrupted = await asyncio.to_thread(models.recover_interrupted)
        interrupted_encoders = await asyncio.to_thread(encoders.recover_interrupted)
        log.info(
            "recovered",
            extra={
                "orphan_parts": orphans,
                "interrupted": interrupted,
                "interrupted_encoders": interrupted_encoders,
            },
        )

    return servicer, recover


def main() -> None:
    """Start the trainer (`foresight-trainer`)."""
    settings = load_settings(TrainerSettings)

    async def setup(runtime: ServiceRuntime) -> Callable[[], Awaitable[None]]:
        servicer, recover = build_servicer(settings)
        runtime.on_shutdown(servicer.models.close)
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, runtime.server)
        return recover

    run_service("trainer", settings, [SERVICE_NAME], setup)


if __name__ == "__main__":
    main()
