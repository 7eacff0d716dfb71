"""Model and encoder bundles and score runs mirrored to S3 (a real S3 endpoint: moto's server).

With `FORESIGHT_ARTIFACTS_URL` set, a bundle is uploaded (manifest last)
before it appears locally, tasks carry its URL, and a Dask worker copies it
into its own cache, checked against the manifest: workers need no shared
volume for the model or the encoder. A scoring run's files are uploaded
before it is READY, so a second scorer that shares only the database and the
mirror serves it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from distributed import LocalCluster
from sqlalchemy import select

from foresight import instance as inst
from foresight.errors import FailedPrecondition, Unavailable
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.settings import ServiceSettings
from foresight.storage import catalog, fs
from foresight.storage.artifacts import MANIFEST, ArtifactStore, atomic_write_bytes, materialize
from foresight.storage.bundles import MODEL_ONNX
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import InstanceRow, ProfileScoreRow, ScoringRunRow
from foresight.tools.generate import generate
from services.scorer.health import read_summary
from services.scorer.records import InstanceScore
from services.scorer.recovery import recover_interrupted
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


def _trained(tmp_path: Path, profiles: int = 600) -> tuple[Database, EventStore, Path]:
    """A database, an S3 event store and a local artifact folder with a READY mirrored model."""
    g = generate(tmp_path / "gen", profiles=profiles, seed=5)
    db = Database(f"sqlite:///{tmp_path / 'foresight.db'}")
    db.migrate()
    events = EventStore(f"s3://foresight-events/{tmp_path.name}", shards=SHARDS)
    parts = events.write(
        "shop", validate(pl.read_parquet(g.events_path), g.ingest_now).accepted, []
    )
    catalog.record_import(db, "shop", [p.catalogued() for p in parts])
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
    return db, events, artifacts


def _scorer(db: Database, events: EventStore, artifacts: Path, **config: Any) -> Scorer:
    """A scorer on `artifacts` with the mirror (unless `config` says otherwise)."""
    settings: dict[str, Any] = {"scoring_threads": 1, "artifacts_url": MIRROR, **config}
    return Scorer(
        db,
        ScorerConfig(artifacts_dir=artifacts, events_dir=events.url, shards=SHARDS, **settings),
    )


def test_dask_workers_score_from_the_mirrored_bundle_with_identical_results(
    s3: str, worker_cache: Path, tmp_path: Path
) -> None:
    db, events, artifacts = _trained(tmp_path)

    def run(scheduler: str | None, mirror: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
        scorer = _scorer(
            db, events, artifacts, scoring_threads=2, dask_scheduler=scheduler, artifacts_url=mirror
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


# -- score runs through the mirror --------------------------------------------


def _mirrored(run_id: str) -> list[str]:
    """The mirror's objects of a run (score copies and health summary), by file name."""
    names = [
        name
        for folder in ("scores", "health")
        for name, _ in fs.listing(fs.join(MIRROR, folder, INSTANCE))
    ]
    return sorted(n for n in names if n.startswith(run_id))


def _served(scorer: Scorer, profile_ids: list[str]) -> list[list[InstanceScore]]:
    return [
        [row.instance_score() for row in scorer.get_profile_scores(p, [INSTANCE]).scores]
        for p in profile_ids
    ]


def test_a_run_is_served_by_a_second_scorer_that_shares_only_the_database_and_the_mirror(
    s3: str, tmp_path: Path
) -> None:
    db, events, artifacts = _trained(tmp_path, profiles=300)
    first = _scorer(db, events, artifacts)
    try:
        older = first.run_scoring(INSTANCE, None)
        newer = first.run_scoring(INSTANCE, None)
    finally:
        first.engine.runner.close()
    assert newer.status is Status.READY and newer.profiles > 0, newer.error
    assert _mirrored(newer.run_id) == [f"{newer.run_id}.{x}" for x in ("arrow", "json", "parquet")]

    second = _scorer(db, events, tmp_path / "empty")  # a replica with its own, empty volume
    try:
        assert second.refresh_snapshots() == [INSTANCE]
        served = second.snapshots.get(INSTANCE)
        assert served is not None and served.run_id == newer.run_id
        ids = served.ids.to_pylist()
        assert ids == first.snapshots.get(INSTANCE).ids.to_pylist()  # type: ignore[union-attr]
        assert _served(second, ids) == _served(first, ids)  # scores and reasons
        # A run it does not serve (export, insights): copied from the mirror when asked.
        again = second.engine.run_scores(INSTANCE, older.run_id)
        original = first.engine.load(first.engine.get_run(older.run_id))
        assert again.ids.to_pylist() == original.ids.to_pylist()
        assert np.array_equal(again.probability, original.probability)
        assert np.array_equal(again.factors.codes, original.factors.codes)
        assert np.array_equal(again.factors.impacts, original.factors.impacts)
        # The health summary too.
        summary = read_summary(second.artifacts, INSTANCE, newer.run_id)
        assert summary is not None and summary.profiles == newer.profiles
        # The model bundle too: the replica copies it in and scores a fresh journey alike.
        assert not (tmp_path / "empty" / "models").exists()
        second.refresh()
        no_events = pl.DataFrame()
        mine, _ = second.score_profile(INSTANCE, ids[0], no_events, None)
        theirs, _ = first.score_profile(INSTANCE, ids[0], no_events, None)
        assert mine == theirs and mine.probability > 0
    finally:
        second.engine.runner.close()


def test_pruning_removes_a_run_from_the_mirror(s3: str, tmp_path: Path) -> None:
    db, events, artifacts = _trained(tmp_path, profiles=300)
    scorer = _scorer(db, events, artifacts, keep_runs=1)
    try:
        old = scorer.run_scoring(INSTANCE, None)
        assert len(_mirrored(old.run_id)) == 3
        new = scorer.run_scoring(INSTANCE, None)
    finally:
        scorer.engine.close()  # waits for the background delete of the pruned rows
    with db.session() as s:
        rows = Counter(s.scalars(select(ProfileScoreRow.run_id)))
    assert rows[old.run_id] == 0 and rows[new.run_id] == new.profiles > 0
    assert _mirrored(old.run_id) == [f"{old.run_id}.json"]  # the summary outlives the scores
    assert len(_mirrored(new.run_id)) == 3
    replica = _scorer(db, events, tmp_path / "empty")
    try:
        with pytest.raises(FailedPrecondition, match="pruned"):
            replica.engine.run_scores(INSTANCE, old.run_id)
    finally:
        replica.engine.runner.close()


def test_a_failed_upload_fails_the_run_and_the_previous_run_stays_served(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, events, artifacts = _trained(tmp_path, profiles=300)
    scorer = _scorer(db, events, artifacts)
    try:
        served = scorer.run_scoring(INSTANCE, None)
        upload = fs.upload

        def broken(source: Path, url: str) -> None:
            if url.endswith(".arrow"):  # after the Parquet copy is up: cleanup must remove it
                raise OSError(f"the object store went away while writing {source}")
            upload(source, url)

        monkeypatch.setattr(fs, "upload", broken)
        with pytest.raises(Unavailable, match="artifact mirror"):
            scorer.run_scoring(INSTANCE, None)
        failed = scorer.list_runs(INSTANCE)[0]
        snapshot = scorer.snapshots.get(INSTANCE)
    finally:
        scorer.engine.runner.close()
    assert failed.run_id != served.run_id and failed.status is Status.FAILED
    assert "artifact mirror" in failed.error and str(tmp_path) not in failed.error
    assert snapshot is not None and snapshot.run_id == served.run_id
    assert _mirrored(failed.run_id) == []
    assert sorted(p.name for p in (artifacts / "scores" / INSTANCE).iterdir()) == [
        f"{served.run_id}.arrow",
        f"{served.run_id}.parquet",
    ]
    assert [r.run_id for r in scorer.list_runs(INSTANCE) if r.status is Status.READY] == [
        served.run_id
    ]


def test_scorer_recovery_removes_an_interrupted_runs_mirror_copies(s3: str, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'foresight.db'}")
    db.migrate()
    store = ArtifactStore(tmp_path / "artifacts", MIRROR)
    names = {
        run_id: [f"scores/{INSTANCE}/{run_id}.{x}" for x in ("parquet", "arrow")]
        + [f"health/{INSTANCE}/{run_id}.json"]
        for run_id in ("killed-run", "ready-run")
    }
    for name in (n for files in names.values() for n in files):
        atomic_write_bytes(store.path(name), b"scores")
        store.mirror_file(name)
    as_of = datetime(2026, 1, 1, tzinfo=UTC)
    with db.session() as s:
        for run_id, status in (("killed-run", Status.RUNNING), ("ready-run", Status.READY)):
            s.add(
                ScoringRunRow(
                    run_id=run_id,
                    instance_name=INSTANCE,
                    model_version=1,
                    status=status.value,
                    as_of=as_of,
                    started_at=as_of,
                    scores_path=names[run_id][0] if status is Status.READY else None,
                )
            )
    assert recover_interrupted(db, store)[0] == ["killed-run"]
    assert _mirrored("killed-run") == []
    assert _mirrored("ready-run") == [f"ready-run.{x}" for x in ("arrow", "json", "parquet")]
    # A scorer on an empty volume copies a mirrored file in; one the mirror lacks is None.
    replica = ArtifactStore(tmp_path / "replica", MIRROR)
    copy = replica.local_file(names["ready-run"][1])
    assert copy is not None and copy.read_bytes() == b"scores"
    assert replica.local_file(names["killed-run"][1]) is None
    assert not (tmp_path / "replica" / "scores" / INSTANCE / "killed-run.arrow").exists()
