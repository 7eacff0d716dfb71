"""The event store on S3 (a real S3 endpoint: moto's server, started here), locally and on Dask."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed import LocalCluster

from foresight import instance as inst
from foresight.events.store import EventStore
from foresight.events.validation import REJECTED_SCHEMA
from foresight.features.spec_fit import fit_feature_spec
from foresight.settings import ServiceSettings
from foresight.shards import ShardRunner
from foresight.storage import fs
from foresight.tools.generate import generate
from services.trainer.shards import ShardJob, shard_features, shard_labels

pytestmark = pytest.mark.integration

SHARDS = 3
CONFIG = inst.to_dict(
    inst.from_dict(
        {
            "name": "conv",
            "type": "CONVERSION",
            "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
        }
    )
)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    generated = generate(tmp_path_factory.mktemp("s3gen"), profiles=400, seed=9)
    return pl.read_parquet(generated.events_path)


def _jobs(store: EventStore, parts: list[str]) -> list[ShardJob]:
    by_shard: dict[int, list[str]] = {}
    for part in parts:
        by_shard.setdefault(EventStore.shard_of_part(part), []).append(part)
    return [
        ShardJob(store.url, SHARDS, "shop", shard, tuple(paths))
        for shard, paths in sorted(by_shard.items())
    ]


def test_the_event_store_works_the_same_on_s3(
    s3: str, events: pl.DataFrame, tmp_path: Path
) -> None:
    local = EventStore(tmp_path / "events", SHARDS)
    remote = EventStore("s3://foresight-a/events", SHARDS)
    assert remote.remote and not local.remote
    local_parts = [p.path for p in local.write("shop", events, [])]
    written = remote.write("shop", events, [])
    remote_parts = [p.path for p in written]
    assert all(p.size_bytes > 0 for p in written)
    assert all(fs.exists(remote.part_location("shop", p)) for p in remote_parts)
    for shard in range(SHARDS):
        mine = local.read_shard("shop", shard, local_parts).sort("event_id")
        theirs = remote.read_shard("shop", shard, remote_parts).sort("event_id")
        assert mine.height > 0 and mine.equals(theirs)
    # Re-ingesting the same events adds nothing (event ids are read back from S3).
    remote.release()
    assert remote.write("shop", events, remote_parts) == []
    # Quarantine files round-trip.
    rejected = pl.DataFrame(schema=REJECTED_SCHEMA)
    path = remote.write_quarantine("shop", rejected)
    assert remote.read_quarantine(path).schema == REJECTED_SCHEMA
    # An uncatalogued part (a crash before cataloguing) is an orphan; catalogued ones stay.
    assert remote.cleanup_orphans("shop", remote_parts[1:]) == [remote_parts[0]]
    assert not fs.exists(remote.part_location("shop", remote_parts[0]))
    assert fs.exists(remote.part_location("shop", remote_parts[1]))
    remote.delete_dataset("shop")
    assert fs.listing("s3://foresight-a/events/shop") == []


def test_shard_tasks_on_dask_read_their_shards_from_s3(
    s3: str, events: pl.DataFrame, tmp_path: Path
) -> None:
    local = EventStore(tmp_path / "events", SHARDS)
    remote = EventStore("s3://foresight-b/events", SHARDS)
    local_jobs = _jobs(local, [p.path for p in local.write("shop", events, [])])
    remote_jobs = _jobs(remote, [p.path for p in remote.write("shop", events, [])])
    as_of = datetime(2024, 10, 1, tzinfo=UTC)
    spec = fit_feature_spec(events, None, inst.from_dict(CONFIG), as_of)
    inline = ShardRunner(1)
    expected_labels = [
        s.labels
        for s in inline.map(
            shard_labels, [(j, inst.from_dict(CONFIG), [as_of]) for j in local_jobs]
        )
    ]
    expected = inline.map(
        shard_features,
        [(j, spec, [as_of], f, None) for j, f in zip(local_jobs, expected_labels, strict=True)],
    )
    # Threads in this process share the AWS_* variables; the workers open S3 themselves.
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        dashboard_address=":0",
    ) as cluster:
        runner = ShardRunner(2, scheduler=cluster.scheduler_address)
        try:
            labels = [
                s.labels
                for s in runner.map(
                    shard_labels, [(j, inst.from_dict(CONFIG), [as_of]) for j in remote_jobs]
                )
            ]
            got = runner.map(
                shard_features,
                [(j, spec, [as_of], f, None) for j, f in zip(remote_jobs, labels, strict=True)],
            )
        finally:
            runner.close()
    for mine, theirs in zip(expected_labels, labels, strict=True):
        assert mine.sort("profile_id").equals(theirs.sort("profile_id"))
    for mine_f, theirs_f in zip(expected, got, strict=True):
        assert mine_f.profile_ids.tolist() == theirs_f.profile_ids.tolist()
        assert np.array_equal(mine_f.X, theirs_f.X, equal_nan=True)


def test_the_event_store_location_is_one_setting(tmp_path: Path) -> None:
    assert ServiceSettings(data_dir=tmp_path).events_location == str(tmp_path / "events")
    assert ServiceSettings(events_dir="").events_location.endswith("events")
    url = "s3://bucket/events"
    assert ServiceSettings(events_dir=url).events_location == url
