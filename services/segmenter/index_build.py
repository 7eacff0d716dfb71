"""Build a journey index from the event store: embed every shard on all cores, publish."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from foresight.encoder.model import behaviour_as_of
from foresight.encoder.registry import EncoderVersionInfo, get_encoder_version
from foresight.errors import FailedPrecondition
from foresight.events.partitions import parts_by_shard
from foresight.progress import Progress, no_progress
from foresight.shards import ShardRunner
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from services.segmenter.embedding import EmbeddedShard, embed_shard
from services.segmenter.index import JourneyIndex
from services.segmenter.index_store import IndexStore
from services.segmenter.index_types import SPACE, IndexInfo, IndexParams

__all__ = ["build_index"]

log = logging.getLogger("foresight.segmenter.index")


@dataclass(frozen=True)
class _Source:
    """What a build reads: the dataset's catalogued parts and the encoder to embed with."""

    dataset: str
    encoder: EncoderVersionInfo
    encoder_dir: str  # where a task finds the bundle (ArtifactStore.ref)
    parts: list[str]
    as_of: datetime


def _source(db: Database, artifacts: ArtifactStore, dataset: str, encoder_version: int) -> _Source:
    """Check that the dataset has events and the encoder is READY."""
    catalog.get_dataset(db, dataset)
    encoder = get_encoder_version(db, encoder_version)
    if encoder.status is not Status.READY or not encoder.artifact_path:
        raise FailedPrecondition(f"encoder v{encoder.version} is {encoder.status}, not READY")
    parts = catalog.catalogued_parts(db, dataset)
    span = catalog.time_range(db, dataset)
    if not parts or span is None:
        raise FailedPrecondition(f"dataset {dataset!r} has no events")
    return _Source(
        dataset,
        encoder,
        artifacts.ref(artifacts.path(encoder.artifact_path)),
        parts,
        behaviour_as_of(span[1]),
    )


def _embed_all(
    source: _Source,
    store_root: Path | str,
    workers: int,
    report: Progress,
    scheduler: str | None = None,
) -> list[EmbeddedShard]:
    """Embed every shard of the source, in worker processes when there are several."""
    parts_of = parts_by_shard(source.parts)
    shards = list(parts_of)
    pool = ShardRunner(workers or os.cpu_count() or 1, scheduler=scheduler)
    # Each worker runs onnxruntime single-threaded: the parallelism is across shards.
    threads = 1 if pool.workers > 1 and len(shards) > 1 else 0
    tasks = [
        (
            str(store_root),
            source.dataset,
            shard,
            parts_of[shard],
            source.as_of,
            source.encoder_dir,
            threads,
        )
        for shard in shards
    ]
    report("embed", 0.0, f"embedding {len(shards)} shards with {pool.workers} workers")
    try:
        return pool.map(
            embed_shard,
            tasks,
            lambda done, total: report(
                "embed", 0.6 * done / total, f"embedded {done} of {total} shards"
            ),
        )
    finally:
        pool.close()  # its processes, or its connection to the Dask scheduler


def build_index(
    db: Database,
    store_root: Path | str,
    artifacts: ArtifactStore,
    dataset: str,
    encoder_version: int,
    params: IndexParams,
    workers: int = 0,
    progress: Progress | None = None,
    scheduler: str | None = None,
) -> JourneyIndex:
    """Embed every profile of `dataset` shard by shard on all cores, build and publish the index."""
    report = progress or no_progress
    params = params.check()
    source = _source(db, artifacts, dataset, encoder_version)
    store = IndexStore(db, artifacts)
    version = store.allocate(dataset, source.encoder.version)
    began = time.perf_counter()
    try:
        embedded = _embed_all(source, store_root, workers, report, scheduler)
        total = sum(e.count for e in embedded)
        if total == 0:
            raise FailedPrecondition(f"dataset {dataset!r} has no profiles with recent events")
        info = IndexInfo(
            version=version,
            dataset=dataset,
            space=SPACE,
            dimensions=source.encoder.dimensions,
            m=params.m,
            ef_construction=params.ef_construction,
            ef=params.ef,
            encoder_version=source.encoder.version,
            count=total,
            checksum="",
            built_at=datetime.now(UTC),
            as_of=source.as_of,
        )
        index = JourneyIndex.create(
            info, embedded, params, lambda stage, f, msg: report(stage, 0.6 + 0.3 * f, msg)
        )
        del embedded
        report("save", 0.92, f"saving index v{version}")
        store.publish(index, version)
        seconds = round(time.perf_counter() - began, 1)
        log.info(
            "index built", extra={"version": version, "count": index.count, "seconds": seconds}
        )
        report("done", 1.0, f"index v{version}: {index.count:,} profiles")
        return index
    except BaseException as exc:
        store.lifecycle.end_with(version, exc)
        raise
