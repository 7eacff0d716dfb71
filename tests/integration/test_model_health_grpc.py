"""GetModelHealth over gRPC on the generated test world, scored at several as-of times.

The world is the scorer tests' one (generated events, a tiny LightGBM model
exported to ONNX with evaluation AUC 0.8) on SQLite, scored four times: as of
100, 70 and 35 days before the end of the data (outcome windows closed; the
oldest run's scores are pruned by the fourth run) and as of the end (open).
Each test starts its own in-process server over that world.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest

from foresight import instance as instance_config
from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from foresight.events.store import EventStore
from foresight.features.labels import goal_labels
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow
from foresight.tools.generate import generate
from services.scorer.health import read_summary
from services.scorer.main import build_scorer, start_scorer
from services.scorer.recovery import SCORES_FOLDER, recover_interrupted
from services.scorer.settings import ScorerSettings
from tests.fixtures.scorer_world import (
    DATASET,
    INSTANCES,
    database,
    dataset_parts,
    load_events,
    publish_model,
    scorer_settings,
)

pytestmark = pytest.mark.integration

INSTANCE = "purchase"
DAYS_BEFORE_END = (100, 70, 35)  # closed outcome windows (30 days); then one as of the end


@dataclass
class HealthWorld:
    data_dir: Path
    db: Database
    end: datetime  # exclusive end of the event data
    run_ids: list[str]  # oldest as-of first


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthWorld]:
    root = tmp_path_factory.mktemp("model-health")
    data_dir = root / "var"
    data_dir.mkdir()
    with database("sqlite", data_dir) as db:
        generate(root / "gen", profiles=500, seed=11)
        end = load_events(data_dir, db, root / "gen" / "events.parquet")
        events = EventStore(data_dir / "events", 4).scan(DATASET, dataset_parts(db)).collect()
        cutoff = (end - timedelta(days=140)).replace(hour=0, minute=0, second=0, microsecond=0)
        with db.session() as s:
            s.add(InstanceRow(name=INSTANCE, dataset=DATASET, config=INSTANCES[INSTANCE]))
        publish_model(data_dir, db, INSTANCE, 1, events, cutoff)
        scorer = build_scorer(scorer_settings(data_dir), db)
        scorer.refresh()
        as_ofs = [end - timedelta(days=d) for d in DAYS_BEFORE_END] + [None]
        run_ids = [scorer.run_scoring(INSTANCE, a).run_id for a in as_ofs]
        yield HealthWorld(data_dir, db, end, run_ids)


async def _health(
    world: HealthWorld, request: scorer_pb2.GetModelHealthRequest, **settings: float
) -> scorer_pb2.ModelHealth:
    """Start a server over the world (with settings overrides), call GetModelHealth."""
    config: ScorerSettings = scorer_settings(world.data_dir).model_copy(update=settings)
    running = await start_scorer(config, build_scorer(config, world.db))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            response: scorer_pb2.ModelHealth = await stub.GetModelHealth(request)
            return response
    finally:
        await running.stop(0)


async def _error(world: HealthWorld, request: scorer_pb2.GetModelHealthRequest) -> grpc.RpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _health(world, request)
    return info.value


def _realized_labels(world: HealthWorld, as_of: datetime, ids: list[str]) -> np.ndarray:
    """The outcomes, labelled independently with training's `goal_labels` on every event."""
    events = (
        EventStore(world.data_dir / "events", 4).scan(DATASET, dataset_parts(world.db)).collect()
    )
    goal = instance_config.from_dict(INSTANCES[INSTANCE]).goal
    labels = goal_labels(events, goal, as_of, pl.Series(ids))
    return labels.get_column("label").to_numpy()


async def test_realized_quality_and_drift_of_runs_at_several_as_of_times(
    world: HealthWorld,
) -> None:
    health = await _health(world, scorer_pb2.GetModelHealthRequest(instance=INSTANCE))
    assert health.instance == INSTANCE and health.serving_version == 1
    runs = list(health.runs)
    # Newest as-of first; every run of the instance, the pruned one included.
    assert [r.run.run_id for r in runs] == world.run_ids[::-1]
    assert [r.window_closed for r in runs] == [False, True, True, True]
    assert not runs[0].HasField("realized") and "not in the data yet" in runs[0].note
    for r in runs[1:]:
        as_of = r.run.as_of.ToDatetime(tzinfo=UTC)
        midnight = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
        assert r.window_end.ToDatetime(tzinfo=UTC) == midnight + timedelta(days=31)
        q = r.realized
        # 500 profiles: the whole run is the sample.
        assert q.profiles == r.run.profiles > 100 and r.validation_auc == pytest.approx(0.8)
        summary = read_summary(ArtifactStore(world.data_dir / "artifacts"), INSTANCE, r.run.run_id)
        assert summary is not None
        labels = _realized_labels(world, as_of, summary.sample_ids)
        assert q.positives == int(labels.sum()) > 0
        assert q.positive_rate == pytest.approx(labels.mean())
        assert 0.5 < q.auc <= 1 and q.lift_top_decile > 1 and 0 <= q.ece < 1 and 0 < q.brier < 1
    # Drift against the run before; the oldest shown has none (no earlier run).
    assert [r.HasField("drift") for r in runs] == [True, True, True, False]
    for newer, older in itertools.pairwise(runs):
        d = newer.drift
        assert d.previous_run_id == older.run.run_id and d.same_model
        assert d.score_psi >= 0 and 0 < len(d.top_features) <= 5
        psis = [f.psi for f in d.top_features]
        assert psis == sorted(psis, reverse=True) and all(f.description for f in d.top_features)
    # The advice follows from the rows and the default thresholds.
    assert (health.auc_drop_threshold, health.psi_threshold) == (0.05, 0.25)
    newest_closed = runs[1].realized
    auc_reason = newest_closed.conclusive and 0.8 - newest_closed.auc > 0.05
    assert any("realized AUC" in r for r in health.reasons) == auc_reason
    psi_reason = any(r.drift.score_psi > 0.25 for r in runs if r.HasField("drift"))
    assert any("score PSI" in r for r in health.reasons) == psi_reason
    assert health.retrain_recommended == bool(health.reasons)


async def test_summaries_outlive_pruned_scores_and_restart_recovery(world: HealthWorld) -> None:
    scores_root = world.data_dir / "artifacts" / SCORES_FOLDER
    oldest = world.run_ids[0]
    assert not (scores_root / INSTANCE / f"{oldest}.parquet").exists()  # pruned (3 kept)
    recover_interrupted(world.db, ArtifactStore(world.data_dir / "artifacts"))  # a scorer start
    health = await _health(world, scorer_pb2.GetModelHealthRequest(instance=INSTANCE, max_runs=1))
    assert len(health.runs) == 1 and health.runs[0].run.run_id == world.run_ids[-1]
    assert health.runs[0].drift.previous_run_id == world.run_ids[-2]  # one run beyond the page
    everything = await _health(world, scorer_pb2.GetModelHealthRequest(instance=INSTANCE))
    assert everything.runs[-1].run.run_id == oldest and everything.runs[-1].realized.profiles > 0


async def test_thresholds_from_settings_decide_the_advice(world: HealthWorld) -> None:
    request = scorer_pb2.GetModelHealthRequest(instance=INSTANCE)
    strict = await _health(world, request, health_psi_threshold=1e-6)
    assert strict.retrain_recommended and strict.psi_threshold == 1e-6
    assert any("score PSI" in r for r in strict.reasons)
    lenient = await _health(world, request, health_auc_drop=0.5, health_psi_threshold=10.0)
    assert not lenient.retrain_recommended and list(lenient.reasons) == []


async def test_model_health_errors(world: HealthWorld) -> None:
    err = await _error(world, scorer_pb2.GetModelHealthRequest(instance="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nope" in (err.details() or "")
    err = await _error(world, scorer_pb2.GetModelHealthRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance" in (err.details() or "")
    err = await _error(world, scorer_pb2.GetModelHealthRequest(instance=INSTANCE, max_runs=101))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_runs" in (err.details() or "")
