"""Model and encoder bundles mirrored to S3 (a real S3 endpoint: moto's server, started here).

With `FORESIGHT_ARTIFACTS_URL` set, a bundle is uploaded (manifest last)
before it appears locally, tasks carry its URL, and a Dask worker copies it
into its own cache, checked against the manifest: workers need no shared
volume for the model or the encoder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed import LocalCluster

from foresight import instance as inst
from foresight.errors import FailedPrecondition
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.settings import ServiceSettings
from foresight.storage import catalog, fs
from foresight.storage.artifacts import MANIFEST, ArtifactStore, materialize
from foresight.storage.bundles import MODEL_ONNX
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import InstanceRow
from foresight.tools.generate import generate
from services.scorer.service import Scorer, ScorerConfig
from services.trainer.training import ModelTrainer

pytestmark = pytest.mark.integration

MIRROR = "s3://foresight-artifacts/artifacts"


def _bundle(store: ArtifactStore, relative: str, payload: bytes) -> Path:
    with store.publish(relative, owner="trainer") as folder:
        (folder / "model.onnx").write_bytes(payload)
        (folder / "nested").mkdir()
        (folder / "nested" / "spec.json").write_text('{"a": 1}')
    return store.path(relative)


def test_a_mirrored_bundle_is_copied_to_a_worker_cache_and_checked(s3: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts", MIRROR)
    folder = _bundle(store, "models/buyers/v1", b"onnx-bytes")
    ref = store.ref(folder)
    assert ref == f"{MIRROR}/models/buyers/v1"
    assert fs.exists(fs.join(ref, MANIFEST)) and fs.exists(fs.join(ref, "nested/spec.json"))

    cache = tmp_path / "cache"
    copy = materialize(ref, cache)
    assert copy.parent == cache
    assert (copy / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (copy / "nested" / "spec.json").read_text() == '{"a": 1}'
    assert (copy / MANIFEST).read_bytes() == (folder / MANIFEST).read_bytes()
    ArtifactStore(cache).verify(copy.name)
    assert materialize(ref, cache) == copy  # taken from the cache the second time

    # A local store (no mirror) hands out absolute paths, returned as they are.
    plain = ArtifactStore(tmp_path / "plain")
    local = _bundle(plain, "models/x/v1", b"x")
    assert materialize(plain.ref(local), cache) == local.resolve()

    # Deleted, then published again under the same name: fetched anew, not the stale copy.
    assert store.remove("models/buyers/v1")
    assert not fs.exists(fs.join(ref, MANIFEST))
    with pytest.raises(FailedPrecondition, match="not published at its mirror URL"):
        materialize(ref, tmp_path / "other-cache")
    _bundle(store, "models/buyers/v1", b"second")
    again = materialize(ref, cache)
    assert again != copy and (again / "model.onnx").read_bytes() == b"second"


def test_a_corrupt_or_unfinished_mirror_copy_is_refused_and_leaves_nothing(
    s3: str, tmp_path: Path
) -> None:
    store = ArtifactStore(tmp_path / "artifacts", MIRROR)
    ref = store.ref(_bundle(store, "models/corrupt/v1", b"good"))
    s3fs, path = fs.filesystem(fs.join(ref, "model.onnx"))
    s3fs.pipe_file(path, b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(FailedPrecondition, match=r"model\.onnx at the mirror URL is corrupt"):
        materialize(ref, cache)
    assert list(cache.iterdir()) == []  # no partial copy a later call could take

    # An upload killed before its manifest: the bundle does not exist for readers.
    fs.remove(fs.join(ref, MANIFEST))
    with pytest.raises(FailedPrecondition, match="not published"):
        materialize(ref, cache)


def test_a_failed_upload_publishes_nothing_locally(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path / "artifacts", MIRROR)

    def broken(source: Path, url: str) -> None:
        raise OSError("the object store went away")

    monkeypatch.setattr(fs, "upload", broken)
    with pytest.raises(OSError, match="went away"):
        _bundle(store, "models/failed/v1", b"x")
    assert not (tmp_path / "artifacts" / "models" / "failed" / "v1").exists()
    assert [p.name for p in (tmp_path / "artifacts" / "models" / "failed").iterdir()] == []


def test_the_mirror_is_one_setting() -> None:
    assert ServiceSettings(artifacts_url="").artifacts_url is None
    assert ServiceSettings(artifacts_url=MIRROR).artifacts_url == MIRROR


# -- batch scoring on Dask with the model bundle only reachable through S3 ----

INSTANCE = "buyers"
SHARDS = 3


@pytest.fixture
def worker_cache(tmp_path: Path) -> Iterator[Path]:
    """FORESIGHT_ARTIFACT_CACHE for worker processes started while it is set."""
    cache = tmp_path / "worker-cache"
    saved = os.environ.get("FORESIGHT_ARTIFACT_CACHE")
    os.environ["FORESIGHT_ARTIFACT_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if saved is None:
            os.environ.pop("FORESIGHT_ARTIFACT_CACHE", None)
        else:
            os.environ["FORESIGHT_ARTIFACT_CACHE"] = saved


def test_dask_workers_score_from_the_mirrored_bundle_with_identical_results(
    s3: str, worker_cache: Path, tmp_path: Path
) -> None:
    g = generate(tmp_path / "gen", profiles=600, seed=5)
    db = Database(f"sqlite:///{tmp_path / 'foresight.db'}")
    db.migrate()
    events = EventStore("s3://foresight-events/events", shards=SHARDS)
    parts = events.write(
        "shop", validate(pl.read_parquet(g.events_path), g.ingest_now).accepted, []
    )
    catalog.record_import(
        db,
        "shop",
        [p.catalogued() for p in parts],
    )
    config = {
        "name": INSTANCE,
        "type": "CONVERSION",
        "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
        "min_positives": 10,
        "min_negatives": 10,
    }
    with db.session() as s:
        s.add(
            InstanceRow(name=INSTANCE, dataset="shop", config=inst.to_dict(inst.from_dict(config)))
        )
    artifacts = tmp_path / "artifacts"
    trainer = ModelTrainer(db, events, ArtifactStore(artifacts, MIRROR), workers=1)
    try:
        assert trainer.train(INSTANCE, 1).status is Status.READY
    finally:
        trainer.close()

    def run(scheduler: str | None, mirror: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
        scorer = Scorer(
            db,
            ScorerConfig(
                artifacts_dir=artifacts,
                events_dir=events.url,
                scoring_threads=2,
                shards=SHARDS,
                dask_scheduler=scheduler,
                artifacts_url=mirror,
            ),
        )
        try:
            done = scorer.run_scoring(INSTANCE, None, lambda _: None)
            assert done.status is Status.READY and done.profiles > 0, done.error
            scores = scorer.engine.run_scores(INSTANCE, done.run_id)
        finally:
            scorer.engine.runner.close()
        return scores.ids.to_pylist(), scores.probability, scores.factors.codes

    local = run(None, None)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        remote = run(cluster.scheduler_address, MIRROR)
    assert local[0] == remote[0]
    assert np.array_equal(local[1], remote[1]) and np.array_equal(local[2], remote[2])
    # The workers loaded the model from their cache, copied from S3.
    copies = [p for p in worker_cache.iterdir() if (p / MANIFEST).is_file()]
    assert len(copies) == 1 and (copies[0] / MODEL_ONNX).is_file()
