"""The segmenter over gRPC: an in-process aio server on port 0, its real setup and a stub.

A world is built once per module: generated events in the event store and an
encoder trained with the shared encoder module (no trainer service involved).
Each test starts its own server over that world through `make_setup`, so the
ready hook (migrate, load the index) runs as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import polars as pl
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foresight.api.common.v1 import common_pb2
from foresight.api.segmenter.v1 import segmenter_pb2 as pb
from foresight.api.segmenter.v1 import segmenter_pb2_grpc
from foresight.encoder.trainer import EncoderTrainer
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.runtime import ServiceRuntime
from foresight.storage import ArtifactStore, Database
from foresight.storage.catalog import record_import
from foresight.tools.generate import generate
from services.segmenter.main import SERVICE_NAME, make_setup
from services.segmenter.settings import SegmenterSettings

# Steps over one journaled index: upserts and rebuilds carry over between tests.
pytestmark = [pytest.mark.integration, pytest.mark.in_file_order]

DATASET = "shop"
SHARDS = 4


@dataclass
class World:
    """A data directory with events and a READY encoder."""

    data_dir: Path
    events: pl.DataFrame
    truth: pl.DataFrame


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("segmenter-grpc")
    g = generate(data_dir / "gen", profiles=1_000, seed=21)
    db = Database(f"sqlite:///{(data_dir / 'foresight.db').resolve()}")
    db.migrate()
    store = EventStore(data_dir / "events", shards=SHARDS)
    accepted = validate(pl.read_parquet(g.events_path), g.ingest_now).accepted
    parts = store.write(DATASET, accepted, [])
    record_import(db, DATASET, [p.catalogued() for p in parts])
    info = EncoderTrainer(db, data_dir / "events", ArtifactStore(data_dir / "artifacts")).train(
        DATASET, 12, "pca", 1_000
    )
    assert info.status == "READY", info.error
    db.dispose()
    return World(data_dir, accepted, pl.read_parquet(g.ground_truth_path))


@dataclass
class Server:
    stub: segmenter_pb2_grpc.SegmenterServiceAsyncStub
    health: health_pb2_grpc.HealthStub
    runtime: ServiceRuntime


@pytest.fixture
async def server(world: World) -> AsyncIterator[Server]:
    settings = SegmenterSettings(
        data_dir=world.data_dir,
        port=0,
        host="127.0.0.1",
        shards=SHARDS,
        workers=1,
        hnsw_ef=64,
        snapshot_interval_s=0,
        log_json=False,
    )
    runtime = ServiceRuntime(settings, [SERVICE_NAME])
    ready = await make_setup(settings)(runtime)
    port = await runtime.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    # Not serving until the ready hook has loaded the index.
    before = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await ready()
    await runtime.set_serving(True)
    try:
        yield Server(segmenter_pb2_grpc.SegmenterServiceStub(channel), health, runtime)
    finally:
        await channel.close(None)
        await runtime.stop(0)


async def build(stub: segmenter_pb2_grpc.SegmenterServiceAsyncStub) -> pb.IndexInfo:
    events = [e async for e in stub.BuildIndex(pb.BuildIndexRequest(dataset=DATASET))]
    assert events[-1].WhichOneof("event") == "index"
    assert any(e.WhichOneof("event") == "progress" for e in events[:-1])
    return events[-1].index


async def ensure_discovery(stub: segmenter_pb2_grpc.SegmenterServiceAsyncStub) -> pb.Discovery:
    events = [e async for e in stub.DiscoverSegments(pb.DiscoverSegmentsRequest())]
    assert events[-1].WhichOneof("event") == "discovery"
    return events[-1].discovery


def proto_events(world: World, source: str, new_id: str) -> list[common_pb2.Event]:
    out = []
    for row in world.events.filter(pl.col("profile_id") == source).iter_rows(named=True):
        ts = Timestamp()
        ts.FromDatetime(row["timestamp"])
        e = common_pb2.Event(
            profile_id=new_id,
            timestamp=ts,
            event_type=row["event_type"],
            channel=row["channel"] or "",
            product_category=row["product_category"] or "",
            page_name=row["page_name"] or "",
        )
        if row["value"] is not None:
            e.value = row["value"]
        out.append(e)
    return out


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_index_discovery_and_queries_end_to_end(server: Server, world: World) -> None:
    stub = server.stub
    info = await build(stub)
    # A rebuild replays the journal: the 6 × 19 profiles the concurrency test of this
    # module upserts stay in the index if that test ran first (random order).
    assert info.count in (1_000, 1_000 + 6 * 19)
    assert info.space == "cosine" and info.dimensions == 12
    assert len(info.checksum) == 64 and info.encoder_version >= 1
    assert (await stub.GetIndexInfo(pb.GetIndexInfoRequest())).version == info.version

    discovery = await ensure_discovery(stub)
    assert len(discovery.clusters) >= 3 and discovery.chosen_by.startswith("auto")
    listed = await stub.ListClusters(pb.ListClustersRequest())
    assert listed.discovery_version == discovery.version
    top = listed.clusters[0]
    influence = await stub.GetCluster(
        pb.GetClusterRequest(cluster_id=top.cluster_id, view=pb.CLUSTER_VIEW_INFLUENCE, top_n=5)
    )
    assert len(influence.influence) == 5 and not influence.popularity
    assert influence.influence[0].lift >= influence.influence[-1].lift
    popularity = await stub.GetCluster(
        pb.GetClusterRequest(cluster_id=top.cluster_id, view=pb.CLUSTER_VIEW_POPULARITY)
    )
    assert (
        popularity.popularity and popularity.popularity[0].count >= popularity.popularity[-1].count
    )
    page = await stub.ListClusterMembers(
        pb.ListClusterMembersRequest(
            cluster_id=top.cluster_id, page=common_pb2.PageRequest(page_size=10)
        )
    )
    assert len(page.profile_ids) == 10 and page.total == top.size and page.next_page_token
    saved = await stub.SaveClusterSegment(
        pb.SaveClusterSegmentRequest(cluster_id=top.cluster_id, name="top-cluster")
    )
    assert saved.size == top.size

    pid = page.profile_ids[0]
    placed = await stub.ScoreJourney(pb.ScoreJourneyRequest(profile_id=pid, k=5))
    assert placed.cluster_id == top.cluster_id and len(placed.nearest) == 5
    sent = await stub.ScoreJourney(
        pb.ScoreJourneyRequest(events=pb.EventList(events=proto_events(world, pid, "anon")), k=3)
    )
    assert sent.cluster_id == placed.cluster_id and sent.nearest[0].similarity > 0.95
    similar = await stub.FindSimilar(pb.FindSimilarRequest(profile_id=pid, k=7))
    assert len(similar.neighbors) == 7 and all(n.profile_id != pid for n in similar.neighbors)
    assert all(0.0 <= n.similarity <= 1.0 for n in similar.neighbors)

    buyers = world.truth.filter(pl.col("future_purchase"))["profile_id"].to_list()[:30]
    expanded = await stub.ExpandSegment(
        pb.ExpandSegmentRequest(profile_ids=pb.SeedIds(profile_ids=[*buyers, "ghost"]))
    )
    assert expanded.seed_size == 30 and list(expanded.unknown_seed_ids) == ["ghost"]
    # Default target: 5 × the seed (150), but at most a tenth of the 970 others.
    assert len(expanded.lookalikes) == 97 and expanded.query_points >= 1
    assert expanded.reach[-1].audience_size == 97  # the reach curve ends at the target
    assert not {lk.profile_id for lk in expanded.lookalikes} & set(buyers)
    by_segment = await stub.ExpandSegment(
        pb.ExpandSegmentRequest(segment="top-cluster", target_size=50, min_similarity=0.5)
    )
    assert by_segment.seed_size == top.size and len(by_segment.lookalikes) <= 50

    vis = await stub.GetVisualization(pb.GetVisualizationRequest(sample_size=300))
    assert len(vis.points) == 300 and vis.projection == "pca" and vis.clusters


async def test_bad_input_gets_the_right_status(server: Server, world: World) -> None:
    stub = server.stub
    C = grpc.StatusCode
    # Before any index exists in this data dir (first test may have built one: build anyway).
    await build(stub)
    await ensure_discovery(stub)
    assert await code_of(stub.ExpandSegment(pb.ExpandSegmentRequest())) == C.INVALID_ARGUMENT
    empty_ids = pb.ExpandSegmentRequest(profile_ids=pb.SeedIds())
    assert await code_of(stub.ExpandSegment(empty_ids)) == C.INVALID_ARGUMENT
    assert (
        await code_of(stub.ExpandSegment(pb.ExpandSegmentRequest(segment="no-such"))) == C.NOT_FOUND
    )
    assert (
        await code_of(stub.FindSimilar(pb.FindSimilarRequest(profile_id="ghost", k=3)))
        == C.NOT_FOUND
    )
    some = world.events["profile_id"][0]
    assert (
        await code_of(stub.FindSimilar(pb.FindSimilarRequest(profile_id=some, k=5000)))
        == C.INVALID_ARGUMENT
    )
    assert await code_of(stub.ScoreJourney(pb.ScoreJourneyRequest())) == C.INVALID_ARGUMENT
    bad_event = common_pb2.Event(profile_id="x", event_type="web.webpagedetails.pageViews")
    no_time = pb.ScoreJourneyRequest(events=pb.EventList(events=[bad_event]))
    assert await code_of(stub.ScoreJourney(no_time)) == C.INVALID_ARGUMENT
    assert await code_of(stub.GetCluster(pb.GetClusterRequest(cluster_id=999))) == C.NOT_FOUND
    assert (
        await code_of(stub.ListClusters(pb.ListClustersRequest(discovery_version=999)))
        == C.NOT_FOUND
    )
    too_many = pb.UpsertProfilesRequest(
        profiles=[pb.ProfileJourney(profile_id=f"p{i}") for i in range(10_001)]
    )
    assert await code_of(stub.UpsertProfiles(too_many)) == C.RESOURCE_EXHAUSTED
    assert (
        await code_of(stub.SaveClusterSegment(pb.SaveClusterSegmentRequest(name="Bad Name")))
        == C.INVALID_ARGUMENT
    )

    async def build_missing() -> None:
        async for _ in stub.BuildIndex(pb.BuildIndexRequest(dataset="missing")):
            pass

    assert await code_of(build_missing()) == C.NOT_FOUND
    assert (
        await code_of(stub.DiscoverSegments(pb.DiscoverSegmentsRequest(clusters=-1)).read())
        == C.INVALID_ARGUMENT
    )


async def test_queries_never_fail_during_upserts_and_an_index_swap(
    server: Server, world: World
) -> None:
    stub = server.stub
    await build(stub)
    ids = world.events["profile_id"].unique().sort().to_list()
    probes = ids[:50]
    failures: list[BaseException] = []
    done = asyncio.Event()
    calls = 0

    async def hammer(worker: int) -> None:
        nonlocal calls
        i = worker
        while not done.is_set():
            pid = probes[i % len(probes)]
            i += 7
            try:
                if i % 2:
                    r = await stub.FindSimilar(pb.FindSimilarRequest(profile_id=pid, k=10))
                    assert len(r.neighbors) == 10
                else:
                    r2 = await stub.ScoreJourney(pb.ScoreJourneyRequest(profile_id=pid, k=5))
                    assert len(r2.nearest) == 5
                calls += 1
            except BaseException as exc:  # every failure counts, whatever it is
                failures.append(exc)

    async def write() -> None:
        for round_ in range(6):
            batch = [
                pb.ProfileJourney(
                    profile_id=f"new-{round_}-{j}",
                    events=proto_events(world, ids[100 + j], f"new-{round_}-{j}"),
                )
                for j in range(20)
            ]
            batch += [pb.ProfileJourney(profile_id=ids[200 + round_ * 5 + j]) for j in range(5)]
            r = await stub.UpsertProfiles(pb.UpsertProfilesRequest(profiles=batch))
            assert r.upserted == 25 and not r.skipped
            gone = await stub.RemoveProfiles(
                pb.RemoveProfilesRequest(profile_ids=[f"new-{round_}-0", "ghost"])
            )
            assert gone.removed == 1 and list(gone.not_found) == ["ghost"]

    hammers = [asyncio.create_task(hammer(w)) for w in range(8)]
    # Writes and a full rebuild (build-and-swap) race the queries.
    before = (await stub.GetIndexInfo(pb.GetIndexInfoRequest())).version
    await asyncio.gather(write(), build(stub))
    await asyncio.sleep(0.2)
    done.set()
    await asyncio.gather(*hammers)
    assert failures == [], failures[:3]
    assert calls > 50
    info = await stub.GetIndexInfo(pb.GetIndexInfoRequest())
    assert info.version > before
    # Writes made while the new index was built were replayed onto it.
    assert info.count == 1_000 + 6 * 19
