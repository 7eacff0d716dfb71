"""The scorer over gRPC: an in-process aio server on port 0 and a stub.

A world is built once per module: generated events in the event store, two
instances (churn, purchase) and, for each, a tiny LightGBM model trained here
and exported to ONNX into a real bundle (no trainer package involved), then
one scoring run per instance. Each test starts its own server over that world.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import mmap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select, update

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from foresight.events.store import EventStore
from foresight.features.spec import format_factor_value
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import (
    InstanceRow,
    ModelVersionRow,
    ProfileScoreRow,
)
from foresight.tools.generate import generate
from services.scorer import realtime
from services.scorer.batch import factor_json, score_shard
from services.scorer.factors import NO_FACTOR, importance_of
from services.scorer.main import RunningScorer, build_scorer, start_scorer
from services.scorer.snapshot import IdIndex, RunScores
from tests.fixtures.scorer_world import (
    DATASET,
    INSTANCES,
    WINDOW,
    publish_model,
)
from tests.fixtures.scorer_world import database as _database
from tests.fixtures.scorer_world import dataset_parts as _parts
from tests.fixtures.scorer_world import load_events as _load_events
from tests.fixtures.scorer_world import scorer_settings as _settings

pytestmark = pytest.mark.integration

# --- the world -------------------------------------------------------------------------


@dataclass
class World:
    """Stores with events, instances, READY models and one run per instance."""

    data_dir: Path
    db: Database
    end: datetime  # exclusive end of the event data
    profile: str  # a profile scored in both instances


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("scorer")
    data_dir = root / "var"
    data_dir.mkdir()
    with _database(request.param, data_dir) as db:
        generate(root / "gen", profiles=500, seed=7)
        end = _load_events(data_dir, db, root / "gen" / "events.parquet")
        events = EventStore(data_dir / "events", 4).scan(DATASET, _parts(db)).collect()
        cutoff = (end - timedelta(days=WINDOW)).replace(hour=0, minute=0, second=0, microsecond=0)
        with db.session() as s:
            for name, cfg in INSTANCES.items():
                s.add(InstanceRow(name=name, dataset=DATASET, config=cfg))
        for name in INSTANCES:
            publish_model(data_dir, db, name, 1, events, cutoff)
        scorer = build_scorer(_settings(data_dir), db)
        scorer.refresh()
        for name in INSTANCES:
            scorer.run_scoring(name, None)
        snapshot = scorer.snapshots.get("churn")
        assert snapshot is not None
        yield World(data_dir, db, end, str(snapshot.ids[0].as_py()))


@dataclass
class Client:
    """A stub on a running in-process scorer."""

    stub: scorer_pb2_grpc.ScorerServiceAsyncStub
    channel: grpc.aio.Channel
    running: RunningScorer


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    settings = _settings(world.data_dir)
    scorer = build_scorer(settings, world.db)
    running = await start_scorer(settings, scorer)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield Client(scorer_pb2_grpc.ScorerServiceStub(channel), channel, running)
    await channel.close(None)
    await running.stop(0)


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


def _ts(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


# --- health, status, runs ----------------------------------------------------------------


async def test_health_serving_and_status_lists_models_and_snapshots(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="foresight.scorer.v1.ScorerService")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    status = await client.stub.GetScorerStatus(scorer_pb2.GetScorerStatusRequest())
    by_name = {m.instance: m for m in status.models}
    assert set(by_name) == {"churn", "purchase"}
    assert all(
        m.serving_version >= 1 and m.snapshot_profiles > 0 and m.snapshot_run_id
        for m in status.models
    )


async def test_run_scoring_streams_progress_then_the_run(client: Client, world: World) -> None:
    events = [
        e async for e in client.stub.RunScoring(scorer_pb2.RunScoringRequest(instance="purchase"))
    ]
    assert events[-1].HasField("run")
    progress = [e.progress for e in events[:-1]]
    assert progress and all(0.0 <= p.fraction <= 1.0 for p in progress)
    run = events[-1].run
    assert run.status == common_pb2.JOB_STATUS_READY and run.profiles > 100
    # As of the data's end, not the wall clock; the generated data is years old
    # (more than the 30-day window), so the stream says so.
    assert run.as_of.ToDatetime(tzinfo=UTC) == world.end
    warnings = [p.message for p in progress if p.stage == "warning"]
    assert len(warnings) == 1 and "days old, more than the 30-day outcome window" in warnings[0]
    runs = await client.stub.ListScoringRuns(scorer_pb2.ListScoringRunsRequest(instance="purchase"))
    assert runs.runs[0].run_id == run.run_id and len(runs.runs) >= 2
    # The new run is what lookups serve now.
    scores = await client.stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile, instances=["purchase"])
    )
    assert scores.scores[0].run_id == run.run_id


async def test_run_scoring_errors(client: Client) -> None:
    err = await _error(
        _drain(client.stub.RunScoring(scorer_pb2.RunScoringRequest(instance="nope")))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nope" in (err.details() or "")
    err = await _error(_drain(client.stub.RunScoring(scorer_pb2.RunScoringRequest())))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance" in (err.details() or "")
    err = await _error(
        client.stub.ListScoringRuns(scorer_pb2.ListScoringRunsRequest(instance="nope"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def _drain(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        pass


# --- lookups --------------------------------------------------------------------------------


async def test_get_profile_scores_has_every_instance_with_factors(
    client: Client, world: World
) -> None:
    reply = await client.stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile)
    )
    assert reply.profile_id == world.profile
    assert {s.instance for s in reply.scores} == {"churn", "purchase"}
    for s in reply.scores:
        assert 0.0 <= s.probability <= 1.0 and s.score == round(100 * s.probability)
        # Another test may publish a newer version into this module's world.
        assert 1 <= s.percentile <= 100 and s.model_version >= 1 and s.run_id
        expected = (
            common_pb2.BUCKET_LOW
            if s.score < 25
            else common_pb2.BUCKET_HIGH
            if s.score >= 75
            else common_pb2.BUCKET_MEDIUM
        )
        assert s.bucket == expected
        assert 1 <= len(s.factors) <= 5
        impacts = [abs(f.impact) for f in s.factors]
        assert impacts == sorted(impacts, reverse=True)
        for f in s.factors:
            assert f.code and ": " in f.text and f.importance != common_pb2.IMPORTANCE_UNSPECIFIED
    only = await client.stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile, instances=["churn"])
    )
    assert [s.instance for s in only.scores] == ["churn"]


async def test_lookup_errors(client: Client, world: World) -> None:
    err = await _error(
        client.stub.GetProfileScores(scorer_pb2.GetProfileScoresRequest(profile_id=""))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "profile_id" in (err.details() or "")
    err = await _error(
        client.stub.GetProfileScores(scorer_pb2.GetProfileScoresRequest(profile_id="nobody"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nobody" in (err.details() or "")
    err = await _error(
        client.stub.GetProfileScores(
            scorer_pb2.GetProfileScoresRequest(profile_id=world.profile, instances=["nope"])
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nope" in (err.details() or "")
    too_many = scorer_pb2.BatchGetProfileScoresRequest(profile_ids=[f"p{i}" for i in range(1001)])
    err = await _error(client.stub.BatchGetProfileScores(too_many))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "1,000" in (err.details() or "")
    err = await _error(client.stub.BatchGetProfileScores(scorer_pb2.BatchGetProfileScoresRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_batch_lookup_keeps_order_and_reports_missing(client: Client, world: World) -> None:
    status = await client.stub.GetScorerStatus(scorer_pb2.GetScorerStatusRequest())
    assert status.models
    known = client.running.scorer.snapshots.get("churn").ids.to_pylist()[:3]  # type: ignore[union-attr]
    ids = [known[2], "ghost", known[0], known[1]]
    reply = await client.stub.BatchGetProfileScores(
        scorer_pb2.BatchGetProfileScoresRequest(profile_ids=ids)
    )
    assert [p.profile_id for p in reply.profiles] == [known[2], known[0], known[1]]
    assert list(reply.not_found) == ["ghost"]


# --- real time -------------------------------------------------------------------------------


def _event(**fields: object) -> common_pb2.Event:
    attributes = fields.pop("attributes", None)
    event = common_pb2.Event(**fields)  # type: ignore[arg-type]
    if attributes is not None:
        s = Struct()
        s.update(attributes)  # type: ignore[arg-type]
        event.attributes.CopyFrom(s)
    return event


async def test_score_profile_from_stored_and_fresh_events(
    client: Client, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # Another test may have re-scored this module's world as of another time: use the run's.
    batch = await client.stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile, instances=["purchase"])
    )
    stored = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(
            instance="purchase", profile_id=world.profile, as_of=batch.scores[0].scored_at
        )
    )
    s = stored.score
    assert s.percentile == 0 and s.run_id == "" and 0 <= s.probability <= 1 and s.factors
    # Same as-of and events as the batch run: the same probability.
    assert s.probability == pytest.approx(batch.scores[0].probability, abs=1e-6)
    # Without as_of: the dataset's end (not the wall clock), with a staleness warning.
    default = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(instance="purchase", profile_id=world.profile)
    )
    assert default.score.scored_at.ToDatetime(tzinfo=UTC) == world.end
    at_end = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(
            instance="purchase", profile_id=world.profile, as_of=_ts(world.end)
        )
    )
    assert default.score.probability == pytest.approx(at_end.score.probability, abs=1e-6)
    assert len(default.warnings) == 1 and "days old" in default.warnings[0]
    late = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(
            instance="purchase", profile_id=world.profile, as_of=_ts(world.end + timedelta(days=90))
        )
    )
    assert "90 days after the newest event" in late.warnings[0]
    # Every answer warns; the log says it at most once per instance and hour.
    logged = [r for r in caplog.records if "stale data for instance purchase" in r.getMessage()]
    assert len(logged) <= 1
    fresh = _event(
        timestamp=_ts(world.end - timedelta(hours=1)),
        event_type="commerce.purchases",
        value=120.0,
        channel="web",
    )
    with_fresh = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(
            instance="purchase", profile_id=world.profile, events=[fresh], as_of=_ts(world.end)
        )
    )
    assert with_fresh.score.scored_at.ToDatetime(tzinfo=UTC) == world.end
    alone = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(
            instance="churn",
            events=[
                _event(
                    profile_id="brand-new",
                    event_type="application.launch",
                    timestamp=_ts(world.end),
                )
            ],
        )
    )
    assert alone.score.instance == "churn" and alone.score.factors


async def test_score_profile_rejects_malformed_events(client: Client, world: World) -> None:
    def request(
        *events: common_pb2.Event, profile_id: str = "p-x"
    ) -> scorer_pb2.ScoreProfileRequest:
        return scorer_pb2.ScoreProfileRequest(
            instance="churn", profile_id=profile_id, events=list(events)
        )

    ok = _event(event_type="commerce.productViews", timestamp=_ts(world.end))
    err = await _error(
        client.stub.ScoreProfile(request(ok, _event(event_type="commerce.productViews")))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("events[1].timestamp: missing timestamp")
    err = await _error(client.stub.ScoreProfile(request(_event(timestamp=_ts(world.end)))))
    assert (err.details() or "").startswith("events[0].event_type")
    bad_value = _event(event_type="commerce.purchases", timestamp=_ts(world.end), value=-5.0)
    err = await _error(client.stub.ScoreProfile(request(bad_value)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "events[0].value" in (
        err.details() or ""
    )
    nested = _event(event_type="x", timestamp=_ts(world.end), attributes={"a": {"b": 1}})
    err = await _error(client.stub.ScoreProfile(request(nested)))
    assert "events[0].attributes" in (err.details() or "")
    other = _event(profile_id="someone-else", event_type="x", timestamp=_ts(world.end))
    err = await _error(client.stub.ScoreProfile(request(other)))
    assert "events[0].profile_id" in (err.details() or "")
    err = await _error(client.stub.ScoreProfile(scorer_pb2.ScoreProfileRequest(instance="churn")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await _error(
        client.stub.ScoreProfile(
            scorer_pb2.ScoreProfileRequest(instance="churn", profile_id="ghost")
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(
        client.stub.ScoreProfile(scorer_pb2.ScoreProfileRequest(instance="nope", profile_id="x"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_score_profile_calls_take_turns_on_their_own_thread_while_lookups_go_on(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ScoreProfile's work holds the GIL: its calls run one at a time on one thread of
    # their own (threads would only fight over the GIL), never on the event loop.
    real = realtime.score_profile
    running, seen = [0], []

    def observed(*args: Any) -> Any:
        running[0] += 1
        seen.append((threading.current_thread().name, running[0]))
        time.sleep(0.05)
        try:
            return real(*args)
        finally:
            running[0] -= 1

    monkeypatch.setattr(realtime, "score_profile", observed)
    request = scorer_pb2.ScoreProfileRequest(instance="churn", profile_id=world.profile)
    scoring = asyncio.gather(*(client.stub.ScoreProfile(request) for _ in range(4)))
    await asyncio.sleep(0.02)
    lookup = await client.stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile)
    )
    assert lookup.scores and not scoring.done()  # answered while the four were queued
    answers = await scoring
    assert len({a.score.probability for a in answers}) == 1
    assert len(seen) == 4 and all(name.startswith("score-profile") for name, _ in seen)
    assert max(count for _, count in seen) == 1


# --- segments --------------------------------------------------------------------------------


async def test_segments_create_page_export(client: Client) -> None:
    high = scorer_pb2.SegmentFilter(
        buckets=[common_pb2.BUCKET_HIGH, common_pb2.BUCKET_MEDIUM], min_percentile=50
    )
    seg = await client.stub.CreateSegment(
        scorer_pb2.CreateSegmentRequest(name="likely-churn", instance="churn", filter=high)
    )
    assert seg.size > 0 and seg.source == "score" and seg.run_id
    assert sum(seg.bucket_counts.values()) == seg.size and seg.bucket_counts["LOW"] == 0
    got = await client.stub.GetSegment(scorer_pb2.GetSegmentRequest(name="likely-churn"))
    assert got.size == seg.size and list(got.filter.buckets) == list(high.buckets)
    listed = await client.stub.ListSegments(scorer_pb2.ListSegmentsRequest(instance="churn"))
    assert "likely-churn" in [s.name for s in listed.segments]

    seen: list[str] = []
    probabilities: list[float] = []
    token = ""
    while True:
        page = await client.stub.ListSegmentMembers(
            scorer_pb2.ListSegmentMembersRequest(
                name="likely-churn", page=common_pb2.PageRequest(page_size=17, page_token=token)
            )
        )
        assert page.total == seg.size
        seen += [m.profile_id for m in page.members]
        probabilities += [m.probability for m in page.members]
        assert all(m.percentile >= 50 for m in page.members)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == seg.size
    assert probabilities == sorted(probabilities, reverse=True)

    chunks = [
        c.data
        async for c in client.stub.ExportSegment(
            scorer_pb2.ExportSegmentRequest(name="likely-churn")
        )
    ]
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert rows[0] == ["profile_id", "probability", "score", "percentile", "bucket"]
    assert [r[0] for r in rows[1:]] == seen
    parquet = [
        c.data
        async for c in client.stub.ExportSegment(
            scorer_pb2.ExportSegmentRequest(
                name="likely-churn", format=scorer_pb2.EXPORT_FORMAT_PARQUET
            )
        )
    ]
    table = pq.read_table(io.BytesIO(b"".join(parquet)))
    assert table.num_rows == seg.size and table.column("profile_id").to_pylist() == seen


async def test_segment_by_factor_and_empty_segment(client: Client) -> None:
    snapshot = client.running.scorer.snapshots.get("purchase")
    assert snapshot is not None
    code = snapshot.features[int(snapshot.factors.codes[0, 0])].code
    by_factor = await client.stub.CreateSegment(
        scorer_pb2.CreateSegmentRequest(
            name="has-factor",
            instance="purchase",
            filter=scorer_pb2.SegmentFilter(factor_code=code),
        )
    )
    assert by_factor.size == int(
        (snapshot.factors.codes == snapshot.feature_index()[code]).any(axis=1).sum()
    )
    empty = await client.stub.CreateSegment(
        scorer_pb2.CreateSegmentRequest(
            name="nobody",
            instance="purchase",
            filter=scorer_pb2.SegmentFilter(min_probability=1.0, max_probability=1.0),
        )
    )
    assert empty.size == 0 and dict(empty.bucket_counts) == {"LOW": 0, "MEDIUM": 0, "HIGH": 0}
    page = await client.stub.ListSegmentMembers(scorer_pb2.ListSegmentMembersRequest(name="nobody"))
    assert list(page.members) == [] and page.next_page_token == "" and page.total == 0
    chunks = [
        c.data
        async for c in client.stub.ExportSegment(scorer_pb2.ExportSegmentRequest(name="nobody"))
    ]
    assert b"".join(chunks).decode().strip() == "profile_id,probability,score,percentile,bucket"


async def test_segment_errors(client: Client) -> None:
    async def create(name: str, instance: str = "churn", **f: Any) -> grpc.aio.AioRpcError:
        request = scorer_pb2.CreateSegmentRequest(
            name=name, instance=instance, filter=scorer_pb2.SegmentFilter(**f)
        )
        return await _error(client.stub.CreateSegment(request))

    err = await create("bad", min_percentile=120)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter.min_percentile" in (
        err.details() or ""
    )
    err = await create("bad", min_probability=0.9, max_probability=0.1)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter.min_probability" in (
        err.details() or ""
    )
    err = await create("bad", max_probability=1.5)
    assert "filter.max_probability" in (err.details() or "")
    err = await create("bad", factor_code="no_such_feature")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "no_such_feature" in (
        err.details() or ""
    )
    err = await create("Bad Name!")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith(
        "name:"
    )
    err = await create("x", instance="nope")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await create("x", buckets=[common_pb2.BUCKET_UNSPECIFIED])
    assert "filter.buckets[0]" in (err.details() or "")
    await client.stub.CreateSegment(scorer_pb2.CreateSegmentRequest(name="twice", instance="churn"))
    err = await create("twice")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = await _error(client.stub.GetSegment(scorer_pb2.GetSegmentRequest(name="ghost")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    bad_token = scorer_pb2.ListSegmentMembersRequest(
        name="twice", page=common_pb2.PageRequest(page_token="%%%")
    )
    err = await _error(client.stub.ListSegmentMembers(bad_token))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (err.details() or "")


# --- insights --------------------------------------------------------------------------------


async def test_insights_of_the_latest_run(client: Client) -> None:
    insights = await client.stub.GetInsights(scorer_pb2.GetInsightsRequest(instance="churn"))
    assert len(insights.histogram) == 10 and insights.histogram[-1].high == 100
    assert sum(b.count for b in insights.histogram) == insights.run.profiles
    assert sum(b.profiles for b in insights.buckets) == insights.run.profiles
    assert insights.evaluation.auc == 0.8 and insights.evaluation.quality == "GOOD"
    assert any(b.factors for b in insights.buckets)
    for b in insights.buckets:
        assert all(0 < f.share <= 1 and f.weight > 0 and f.description for f in b.factors)
    # Scored as of the end of the data: the outcome window has not happened yet.
    assert not insights.outcome_available and not insights.expected_vs_actual


async def test_expected_vs_actual_once_the_window_has_passed(client: Client, world: World) -> None:
    as_of = world.end - timedelta(days=WINDOW + 5)
    events = [
        e
        async for e in client.stub.RunScoring(
            scorer_pb2.RunScoringRequest(instance="purchase", as_of=_ts(as_of))
        )
    ]
    run = events[-1].run
    insights = await client.stub.GetInsights(
        scorer_pb2.GetInsightsRequest(instance="purchase", run_id=run.run_id)
    )
    assert insights.outcome_available and len(insights.expected_vs_actual) == 3
    assert sum(e.profiles for e in insights.expected_vs_actual) == run.profiles
    for e in insights.expected_vs_actual:
        assert 0 <= e.actual_rate <= 1 and 0 <= e.expected_rate <= 1
    err = await _error(
        client.stub.GetInsights(scorer_pb2.GetInsightsRequest(instance="purchase", run_id="nope"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --- swaps under load ------------------------------------------------------------------------


async def test_lookups_never_fail_through_a_model_swap_and_a_snapshot_swap(
    client: Client, world: World
) -> None:
    stub, failures, done = client.stub, [], asyncio.Event()
    ok = 0

    async def hammer() -> None:
        nonlocal ok
        request = scorer_pb2.GetProfileScoresRequest(profile_id=world.profile)
        realtime = scorer_pb2.ScoreProfileRequest(instance="churn", profile_id=world.profile)
        while not done.is_set():
            try:
                await stub.GetProfileScores(request)
                await stub.ScoreProfile(realtime)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)

    workers = [asyncio.create_task(hammer()) for _ in range(4)]
    status = await stub.GetScorerStatus(scorer_pb2.GetScorerStatusRequest())
    version = max(m.serving_version for m in status.models if m.instance == "churn") + 1
    events = await asyncio.to_thread(
        lambda: EventStore(world.data_dir / "events", 4).scan(DATASET, _parts(world.db)).collect()
    )
    cutoff = (world.end - timedelta(days=WINDOW)).replace(hour=0, minute=0, second=0, microsecond=0)
    await asyncio.to_thread(
        publish_model, world.data_dir, world.db, "churn", version, events, cutoff, 40
    )
    for _ in range(100):  # the registry follower picks the new version up
        status = await stub.GetScorerStatus(scorer_pb2.GetScorerStatusRequest())
        if {m.instance: m.serving_version for m in status.models}["churn"] == version:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the new model version was not loaded")
    before = {m.instance: m.snapshot_run_id for m in status.models}["churn"]
    run = [e async for e in stub.RunScoring(scorer_pb2.RunScoringRequest(instance="churn"))][-1].run
    reply = await stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile, instances=["churn"])
    )
    assert (
        reply.scores[0].run_id == run.run_id != before and reply.scores[0].model_version == version
    )
    await asyncio.sleep(0.2)
    done.set()
    await asyncio.gather(*workers)
    assert failures == [] and ok > 0


async def test_a_broken_model_version_keeps_the_previous_one_serving(
    client: Client, world: World
) -> None:
    status = await client.stub.GetScorerStatus(scorer_pb2.GetScorerStatusRequest())
    serving = {m.instance: m.serving_version for m in status.models}["purchase"]
    relative = f"models/purchase/v{serving + 10}"
    with ArtifactStore(world.data_dir / "artifacts").publish(relative, owner="trainer") as folder:
        (folder / "model.onnx").write_bytes(b"not a model")
    with world.db.session() as s:
        s.add(
            ModelVersionRow(
                instance_name="purchase",
                version=serving + 10,
                status="READY",
                artifact_path=relative,
            )
        )
        s.execute(
            update(InstanceRow)
            .where(InstanceRow.name == "purchase")
            .values(current_version=serving + 10)
        )
    for _ in range(100):
        status = await client.stub.GetScorerStatus(scorer_pb2.GetScorerStatusRequest())
        purchase = {m.instance: m for m in status.models}["purchase"]
        if purchase.last_error:
            break
        await asyncio.sleep(0.05)
    assert purchase.serving_version == serving and purchase.last_error.startswith(
        f"v{serving + 10}:"
    )
    reply = await client.stub.ScoreProfile(
        scorer_pb2.ScoreProfileRequest(instance="purchase", profile_id=world.profile)
    )
    assert reply.score.model_version == serving
    with world.db.session() as s:  # leave the world as it was for the other tests
        s.query(ModelVersionRow).filter_by(instance_name="purchase", version=serving + 10).delete()
        s.execute(
            update(InstanceRow)
            .where(InstanceRow.name == "purchase")
            .values(current_version=serving)
        )


def test_scoring_schedule_runs_due_instances(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = build_scorer(_settings(world.data_dir), world.db)
    scorer.refresh()
    now = datetime.now(UTC)
    assert scorer.due_instances(now) == []  # no instance has a schedule
    model = scorer.registry.get("purchase")
    scheduled = replace(model, config=replace(model.config, scoring_schedule="* * * * *"))
    monkeypatch.setattr(scorer.registry, "models", lambda: {"purchase": scheduled})
    assert scorer.due_instances(now + timedelta(minutes=2)) == ["purchase"]
    before = len(scorer.list_runs("purchase"))
    runs = scorer.run_due(now + timedelta(minutes=2))
    assert [r.instance for r in runs] == ["purchase"] and len(
        scorer.list_runs("purchase")
    ) == before + 1
    assert scorer.due_instances(runs[0].started_at) == []  # just ran: not due again yet


# --- exporting a run -----------------------------------------------------------------------


async def test_export_scores_of_a_whole_run_as_csv_and_parquet(
    client: Client, world: World
) -> None:
    snapshot = client.running.scorer.snapshots.get("purchase")
    assert snapshot is not None
    text = b"".join(
        [
            c.data
            async for c in client.stub.ExportScores(
                scorer_pb2.ExportScoresRequest(instance="purchase")
            )
        ]
    ).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "profile_id",
        "probability",
        "score",
        "percentile",
        "bucket",
        "reasons",
    ]
    assert len(rows) == len(snapshot)
    mine = next(r for r in rows if r["profile_id"] == world.profile)
    served = await client.stub.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=world.profile, instances=["purchase"])
    )
    score = served.scores[0]
    assert float(mine["probability"]) == pytest.approx(score.probability, abs=1e-6)
    assert int(mine["score"]) == score.score and int(mine["percentile"]) == score.percentile
    assert mine["bucket"] == common_pb2.Bucket.Name(score.bucket).removeprefix("BUCKET_")
    reasons = json.loads(mine["reasons"])
    assert [r["code"] for r in reasons] == [f.code for f in score.factors]
    parquet = b"".join(
        [
            c.data
            async for c in client.stub.ExportScores(
                scorer_pb2.ExportScoresRequest(
                    instance="purchase",
                    run_id=snapshot.run_id,
                    format=scorer_pb2.EXPORT_FORMAT_PARQUET,
                )
            )
        ]
    )
    table = pq.read_table(io.BytesIO(parquet))
    assert table.num_rows == len(snapshot)
    assert table.column("profile_id").to_pylist() == [r["profile_id"] for r in rows]


async def test_export_scores_errors(client: Client) -> None:
    err = await _error(_drain(client.stub.ExportScores(scorer_pb2.ExportScoresRequest())))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance" in (err.details() or "")
    err = await _error(
        _drain(client.stub.ExportScores(scorer_pb2.ExportScoresRequest(instance="nope")))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(
        _drain(
            client.stub.ExportScores(
                scorer_pb2.ExportScoresRequest(
                    instance="purchase",
                    format=9,  # type: ignore[arg-type]
                )
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in (err.details() or "")


def _reference_factor_json(scores: RunScores, row: int, keyed: bool = True) -> str:
    """json.dumps of a row's factor dicts (keyed: exports), or of its [code, text, impact,
    importance] lists (`profile_scores.factors`)."""
    items: list[object] = []
    for code, impact, value in zip(
        scores.factors.codes[row].tolist(),
        scores.factors.impacts[row].astype(np.float64).round(6).tolist(),
        scores.factors.values[row].tolist(),
        strict=True,
    ):
        if code == NO_FACTOR:
            break
        feature = scores.features[code]
        level = int(importance_of(scores.factors.impacts[row][len(items)]))
        values = (
            feature.code,
            format_factor_value(feature, value),
            impact,
            ["", "LOW", "MEDIUM", "HIGH"][level],
        )
        items.append(
            dict(zip(("code", "text", "impact", "importance"), values, strict=True))
            if keyed
            else values
        )
    return json.dumps(items, separators=(",", ":"))


def test_batch_scoring_in_worker_processes_equals_scoring_each_shard_inline(
    world: World,
) -> None:
    scorer = build_scorer(_settings(world.data_dir), world.db)
    run = scorer.run_scoring("churn", None)  # shards in 2 worker processes
    assert {"read", "featurize", "predict", "explain", "snapshot", "write"} <= set(
        scorer.engine.stage_seconds
    )
    served = scorer.snapshots.get("churn")
    assert served is not None and served.run_id == run.run_id
    # Served mapped from the run's sidecar, not from the arrays the run built.
    assert isinstance(served.index.text, mmap.mmap) and not served.probability.flags.writeable
    # Its id index (hashed in the shard workers) is the one the ids give.
    rebuilt = IdIndex.of(served.ids)
    np.testing.assert_array_equal(served.index.hashes, rebuilt.hashes)
    np.testing.assert_array_equal(served.index.rows, rebuilt.rows)
    model = scorer.registry.get("churn")
    parts = scorer.catalog.parts(DATASET)
    inline = [
        score_shard(scorer.catalog.read_shard(parts, shard), None, served.as_of, model, 5)
        for shard in sorted(set(parts.shards))
    ]
    ids = np.array(pa.concat_arrays([r.profile_ids for r in inline]).to_pylist())
    order = np.argsort(ids)
    served_ids = np.array(served.ids.to_pylist())
    served_order = np.argsort(served_ids)
    assert (served_ids[served_order] == ids[order]).all()
    # Bit for bit: probabilities and every reason (code, impact, value).
    probability = np.concatenate([r.probability for r in inline])[order]
    np.testing.assert_array_equal(served.probability[served_order], probability)
    for name in ("codes", "impacts", "values"):
        expected = np.concatenate([getattr(r.factors, name) for r in inline])[order]
        np.testing.assert_array_equal(getattr(served.factors, name)[served_order], expected)
    # The reason JSON is the text json.dumps writes, row for row: keyed in exports, as
    # [code, text, impact, importance] lists in the stored rows.
    fast = factor_json(served.features, served.factors)
    assert fast == [_reference_factor_json(served, row) for row in range(len(served))]
    assert any('"importance":"HIGH"' in text or "MEDIUM" in text for text in fast)
    with world.db.session() as session:
        stored = dict(
            session.execute(
                select(ProfileScoreRow.profile_id, ProfileScoreRow.factors).where(
                    ProfileScoreRow.run_id == run.run_id
                )
            ).all()
        )
    ids = served.ids.to_pylist()
    assert len(stored) == len(served) > 0
    assert [stored[ids[row]] for row in range(len(served))] == [
        _reference_factor_json(served, row, keyed=False) for row in range(len(served))
    ]
