"""The Dask backend of the shard runner on a real 2-process LocalCluster.

The same shard functions give the same labels, features and embeddings as the
local backend; a worker that dies mid-run is replaced and the result does not
change; a scheduler that goes away fails the job with a clear message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from distributed import LocalCluster
from pydantic import ValidationError

from foresight import instance as inst
from foresight.encoder.model import behaviour_as_of
from foresight.encoder.trainer import EncoderTrainer
from foresight.errors import Cancelled, Unavailable
from foresight.events.store import EventStore
from foresight.features.spec_fit import fit_feature_spec
from foresight.settings import ServiceSettings
from foresight.shards import ShardRunner
from foresight.shards_dask import DaskShards
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status as VersionStatus
from foresight.storage.models import InstanceRow
from foresight.tools.generate import generate
from services.segmenter.embedding import EmbeddedShard, embed_shard
from services.trainer.shards import ShardFeatures, ShardJob, shard_features, shard_labels
from services.trainer.training import ModelTrainer

pytestmark = pytest.mark.integration

DATASET = "shop"
SHARDS = 4
CUTOFFS = [datetime(2024, 9, 1, tzinfo=UTC), datetime(2024, 10, 15, tzinfo=UTC)]
CONFIG = inst.to_dict(
    inst.from_dict(
        {
            "name": "conv",
            "type": "CONVERSION",
            "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
            "min_positives": 20,
            "min_negatives": 20,
        }
    )
)


@dataclass
class World:
    """A small generated dataset in an event store, with its catalog and a trained encoder."""

    root: Path
    db: Database
    store: EventStore
    artifacts: ArtifactStore
    jobs: list[ShardJob]
    encoder_dir: str
    as_of: datetime


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dask")
    generated = generate(root / "gen", profiles=1_200, seed=5)
    db = Database(f"sqlite:///{root / 'foresight.db'}")
    db.migrate()
    store = EventStore(root / "events", shards=SHARDS)
    parts = store.write(DATASET, pl.read_parquet(generated.events_path), [])
    catalog.record_import(db, DATASET, [p.catalogued() for p in parts])
    by_shard: dict[int, list[str]] = {}
    for part in catalog.catalogued_parts(db, DATASET):
        by_shard.setdefault(EventStore.shard_of_part(part), []).append(part)
    jobs = [
        ShardJob(str(store.root), SHARDS, DATASET, shard, tuple(paths))
        for shard, paths in sorted(by_shard.items())
    ]
    artifacts = ArtifactStore(root / "artifacts")
    encoder = EncoderTrainer(db, root / "events", artifacts).train(DATASET, 8, "pca", 1_200)
    assert encoder.status == "READY" and encoder.artifact_path, encoder.error
    span = catalog.time_range(db, DATASET)
    assert span is not None
    yield World(
        root,
        db,
        store,
        artifacts,
        jobs,
        str(artifacts.path(encoder.artifact_path)),
        behaviour_as_of(span[1]),
    )
    db.dispose()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local


@pytest.fixture
def on_dask(cluster: LocalCluster) -> Iterator[ShardRunner]:
    runner = ShardRunner(2, scheduler=cluster.scheduler_address)
    yield runner
    runner.close()


def _label_args(world: World) -> list[tuple[Any, ...]]:
    return [(job, inst.from_dict(CONFIG), CUTOFFS) for job in world.jobs]


def _feature_args(world: World, labels: list[pl.DataFrame]) -> list[tuple[Any, ...]]:
    sample = pl.concat([job.read() for job in world.jobs])
    spec = fit_feature_spec(sample, None, inst.from_dict(CONFIG), CUTOFFS[-1])
    return [
        (job, spec, CUTOFFS, frame, None) for job, frame in zip(world.jobs, labels, strict=True)
    ]


def _assert_same_features(a: list[ShardFeatures], b: list[ShardFeatures]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.profile_ids.tolist() == y.profile_ids.tolist()
        assert np.array_equal(x.cutoff, y.cutoff) and np.array_equal(x.y, y.y)
        assert np.array_equal(x.X, y.X, equal_nan=True)
        assert x.audited == y.audited


def test_labels_and_features_are_identical_on_dask(world: World, on_dask: ShardRunner) -> None:
    local = ShardRunner(1)
    labels = [s.labels for s in local.map(shard_labels, _label_args(world))]
    progress: list[tuple[int, int]] = []
    remote_labels = [
        s.labels
        for s in on_dask.map(
            shard_labels, _label_args(world), lambda done, total: progress.append((done, total))
        )
    ]
    assert progress == [(i, len(world.jobs)) for i in range(1, len(world.jobs) + 1)]
    for mine, theirs in zip(labels, remote_labels, strict=True):
        assert mine.height > 0
        assert mine.equals(theirs)

    args = _feature_args(world, labels)
    features = local.map(shard_features, args)
    assert sum(len(f.y) for f in features) == sum(frame.height for frame in labels)
    _assert_same_features(features, on_dask.map(shard_features, args))


def test_embeddings_are_identical_on_dask(world: World, on_dask: ShardRunner) -> None:
    tasks = [
        (str(world.store.root), DATASET, job.shard, job.parts, world.as_of, world.encoder_dir, 1)
        for job in world.jobs
    ]
    local: list[EmbeddedShard] = ShardRunner(1).map(embed_shard, tasks)
    remote: list[EmbeddedShard] = on_dask.map(embed_shard, tasks)
    assert sum(e.count for e in local) > 0
    for mine, theirs in zip(local, remote, strict=True):
        assert mine.profile_ids.tolist() == theirs.profile_ids.tolist()
        assert np.allclose(mine.embeddings, theirs.embeddings, rtol=0, atol=1e-9)
        assert np.array_equal(mine.trait_bits, theirs.trait_bits)
        assert np.array_equal(mine.trait_values, theirs.trait_values, equal_nan=True)


def labels_or_die(
    marker: str, job: ShardJob, config: inst.InstanceConfig, cutoffs: Any
) -> pl.DataFrame:
    """shard_labels, but the first call on the cluster kills its worker process mid-task."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return shard_labels(job, config, cutoffs).labels
    os._exit(1)  # a hard crash, as an out-of-memory kill would be


def test_a_worker_killed_mid_run_is_replaced_and_the_result_is_identical(
    world: World, on_dask: ShardRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-once"
    expected = [s.labels for s in ShardRunner(1).map(shard_labels, _label_args(world))]
    got = on_dask.map(labels_or_die, [(str(marker), *args) for args in _label_args(world)])
    assert marker.exists()  # a worker really died
    for mine, theirs in zip(expected, got, strict=True):
        assert mine.equals(theirs)


def test_cancel_stops_the_tasks_on_the_cluster(on_dask: ShardRunner) -> None:
    cancel = threading.Event()
    done: list[int] = []

    def first_then_cancel(finished: int, _total: int) -> None:
        done.append(finished)
        cancel.set()

    with pytest.raises(Cancelled):
        on_dask.map(time.sleep, [(0.3,)] * 12, first_then_cancel, cancel)
    assert 1 <= len(done) < 12


def test_an_unreachable_scheduler_is_unavailable_not_a_hang() -> None:
    shards = DaskShards("tcp://127.0.0.1:9", connect_timeout_s=1.0)
    with pytest.raises(Unavailable, match=r"Dask scheduler at tcp://127\.0\.0\.1:9 cannot be"):
        shards.map(abs, [(-1,), (-2,)])


def test_a_scheduler_that_goes_away_fails_the_training_job(world: World) -> None:
    with world.db.session() as s:
        s.add(InstanceRow(name="conv", dataset=DATASET, config=CONFIG))
    doomed = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        dashboard_address=":0",
    )
    trainer = ModelTrainer(
        world.db, world.store, world.artifacts, workers=2, scheduler=doomed.scheduler_address
    )
    trainer.runner._cluster().connect_timeout_s = 2.0

    def close_after_labels(stage: str, _fraction: float, _message: str) -> None:
        if stage == "features" and doomed.status.name == "running":
            doomed.close()

    try:
        with pytest.raises(Unavailable, match="Dask scheduler"):
            trainer.train("conv", 1, close_after_labels)
    finally:
        trainer.close()
        doomed.close()
    version = trainer.get_version("conv", 1)
    assert version.status is VersionStatus.FAILED
    assert version.error is not None
    assert version.error.startswith(f"the Dask scheduler at {doomed.scheduler_address} ")


def test_the_scheduler_setting_is_checked_at_start() -> None:
    assert ServiceSettings(dask_scheduler="tcp://dask:8786").dask_scheduler == "tcp://dask:8786"
    assert ServiceSettings().dask_scheduler is None
    assert ServiceSettings(dask_scheduler="").dask_scheduler is None  # compose passes "" for unset
    with pytest.raises(ValidationError, match="dask_scheduler"):
        ServiceSettings(dask_scheduler="dask:8786")


def test_training_featurizes_only_a_bounded_sample(world: World) -> None:
    with world.db.session() as s:
        s.add(
            InstanceRow(
                name="conv_sampled", dataset=DATASET, config={**CONFIG, "name": "conv_sampled"}
            )
        )
    trainer = ModelTrainer(world.db, world.store, world.artifacts, workers=1, sample_rows=500)
    try:
        info = trainer.train("conv_sampled", 1)
    finally:
        trainer.close()
    assert info.status is VersionStatus.READY, info.error
    rows = trainer.get_evaluation("conv_sampled").training
    assert rows.train_rows_before_sample > 500
    # The sample covers every cutoff before the validation one; the validation
    # model trains on those whose windows end before it (a subset).
    assert 0 < rows.train_rows <= 500  # at most one row short per stratum
