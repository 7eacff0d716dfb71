"""Batch scoring (RunScoring) with reason codes on a real 2-process LocalCluster.

The scorer's shards run as Dask tasks when `FORESIGHT_DASK_SCHEDULER` is set:
scores and reason codes are identical to the local backend's, a worker that
dies mid-run is replaced and the result does not change, a cancelled run ends
CANCELLED, and a scheduler that goes away ends the run FAILED with a clear
message instead of hanging.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed import LocalCluster
from sqlalchemy import select

from foresight import instance as inst
from foresight.errors import Cancelled, FailedPrecondition, Unavailable
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.shards import JOB_CANCEL
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import InstanceRow, ProfileScoreRow
from foresight.tools.generate import generate
from services.scorer import scoring
from services.scorer.batch import ShardJob, ShardScores, score_job
from services.scorer.records import Progress
from services.scorer.service import Scorer, ScorerConfig
from services.scorer.snapshot import RunScores
from services.trainer.training import ModelTrainer

pytestmark = pytest.mark.integration

DATASET = "shop"
INSTANCE = "buyers"
SHARDS = 4


@dataclass
class World:
    """Events in a 4-shard store, and a READY model of INSTANCE."""

    db: Database
    events: Path
    artifacts: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dask-scoring")
    g = generate(root / "gen", profiles=1_000, seed=7)
    db = Database(f"sqlite:///{root / 'foresight.db'}")
    db.migrate()
    store = EventStore(root / "events", shards=SHARDS)
    parts = store.write(
        DATASET, validate(pl.read_parquet(g.events_path), g.ingest_now).accepted, []
    )
    catalog.record_import(db, DATASET, [p.catalogued() for p in parts])
    config = {
        "name": INSTANCE,
        "type": "CONVERSION",
        "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
        "min_positives": 20,
        "min_negatives": 20,
    }
    with db.session() as s:
        s.add(
            InstanceRow(name=INSTANCE, dataset=DATASET, config=inst.to_dict(inst.from_dict(config)))
        )
    trainer = ModelTrainer(db, store, ArtifactStore(root / "artifacts"), workers=1)
    try:
        assert trainer.train(INSTANCE, 1).status is Status.READY
    finally:
        trainer.close()
    yield World(db, root / "events", root / "artifacts")
    db.dispose()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local


def _scorer(world: World, scheduler: str | None, threads: int = 2) -> Scorer:
    config = ScorerConfig(
        artifacts_dir=world.artifacts,
        events_dir=world.events,
        scoring_threads=threads,
        shards=SHARDS,
        dask_scheduler=scheduler,
    )
    return Scorer(world.db, config)


def _run(scorer: Scorer) -> tuple[RunScores, list[Progress]]:
    progress: list[Progress] = []
    run = scorer.run_scoring(INSTANCE, None, progress.append)
    assert run.status is Status.READY and run.profiles > 0, run.error
    return scorer.engine.run_scores(INSTANCE, run.run_id), progress


def _reasons(db: Database, run_id: str) -> list[tuple[str, str]]:
    """The stored (profile, factors JSON) rows of a run, by profile."""
    with db.session() as s:
        rows = s.execute(
            select(ProfileScoreRow.profile_id, ProfileScoreRow.factors)
            .where(ProfileScoreRow.run_id == run_id)
            .order_by(ProfileScoreRow.profile_id)
        ).all()
    return [(str(pid), str(factors)) for pid, factors in rows]


def _assert_same_scores(db: Database, a: RunScores, b: RunScores) -> None:
    assert a.ids.to_pylist() == b.ids.to_pylist()
    assert np.allclose(a.probability, b.probability, rtol=0, atol=1e-9)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.percentile, b.percentile)
    assert np.array_equal(a.factors.codes, b.factors.codes)
    assert np.allclose(a.factors.impacts, b.factors.impacts, rtol=0, atol=1e-9)
    assert np.array_equal(a.factors.values, b.factors.values, equal_nan=True)
    assert _reasons(db, a.run_id) == _reasons(db, b.run_id)


@pytest.fixture(scope="module")
def local_scores(world: World) -> RunScores:
    """The local backend's run (shards inline: the same shard function)."""
    scores, _ = _run(_scorer(world, None, threads=1))
    assert int((scores.factors.codes >= 0).sum()) > 0  # reason codes to compare
    return scores


def test_run_scoring_on_dask_gives_the_local_scores_and_reasons(
    world: World, cluster: LocalCluster, local_scores: RunScores
) -> None:
    scorer = _scorer(world, cluster.scheduler_address)
    try:
        remote, progress = _run(scorer)
    finally:
        scorer.engine.runner.close()
    _assert_same_scores(world.db, local_scores, remote)
    shards = [p.message for p in progress if p.stage == "score"]
    assert shards == [f"{i}/{SHARDS} shards scored" for i in range(1, SHARDS + 1)]


def score_or_die(marker: str, job: ShardJob, profiles: pl.DataFrame | None) -> ShardScores:
    """score_job, but the first call on the cluster kills its worker process mid-task."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return score_job(job, profiles)
    os._exit(1)  # a hard crash, as an out-of-memory kill would be


def slow_score(seconds: float, job: ShardJob, profiles: pl.DataFrame | None) -> ShardScores:
    """score_job after a pause, so a run is still going when the test acts on it."""
    time.sleep(seconds)
    return score_job(job, profiles)


def test_a_worker_killed_mid_run_is_replaced_and_the_scores_are_identical(
    world: World,
    cluster: LocalCluster,
    local_scores: RunScores,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "killed-once"
    monkeypatch.setattr(scoring, "score_job", functools.partial(score_or_die, str(marker)))
    scorer = _scorer(world, cluster.scheduler_address)
    try:
        remote, _ = _run(scorer)
    finally:
        scorer.engine.runner.close()
    assert marker.exists()  # a worker really died
    _assert_same_scores(world.db, local_scores, remote)


def _first_shard(then: Callable[[], object]) -> Callable[[Progress], None]:
    def notify(p: Progress) -> None:
        if p.stage == "score" and p.message.startswith("1/"):
            then()

    return notify


def test_a_cancelled_run_on_dask_ends_cancelled(
    world: World, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "score_job", functools.partial(slow_score, 0.5))
    scorer = _scorer(world, cluster.scheduler_address)
    cancel = threading.Event()
    token = JOB_CANCEL.set(cancel)
    try:
        with pytest.raises(Cancelled):
            scorer.run_scoring(INSTANCE, None, _first_shard(cancel.set))
    finally:
        JOB_CANCEL.reset(token)
        scorer.engine.runner.close()
    run = scorer.list_runs(INSTANCE)[0]
    assert run.status is Status.CANCELLED
    assert _reasons(world.db, run.run_id) == []  # nothing stored


def test_a_scheduler_that_goes_away_fails_the_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "score_job", functools.partial(slow_score, 0.5))
    doomed = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        dashboard_address=":0",
    )
    scorer = _scorer(world, doomed.scheduler_address)
    shards = scorer.engine.runner._cluster()
    shards.connect_timeout_s = shards.lost_after_s = 2.0
    try:
        with pytest.raises(Unavailable, match="Dask scheduler"):
            scorer.run_scoring(INSTANCE, None, _first_shard(doomed.close))
    finally:
        scorer.engine.runner.close()
        doomed.close()
    run = scorer.list_runs(INSTANCE)[0]
    assert run.status is Status.FAILED
    assert run.error.startswith(f"the Dask scheduler at {doomed.scheduler_address} ")
    assert _reasons(world.db, run.run_id) == []


def test_a_worker_without_the_model_bundle_says_so(world: World) -> None:
    job = ShardJob(
        str(world.events),
        SHARDS,
        DATASET,
        0,
        (),
        str(world.artifacts / "not-shared"),
        INSTANCE,
        99,
        datetime(2024, 10, 1, tzinfo=UTC),
        5,
    )
    with pytest.raises(FailedPrecondition, match="Dask workers must see") as raised:
        score_job(job, None)
    assert str(world.artifacts) not in raised.value.message  # no server path
