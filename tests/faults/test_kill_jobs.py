"""kill -9 in the middle of every long job; after a restart the work is FAILED, nothing leaks.

Each test kills one service at its job's first progress message (after its
worker processes exist, where the job has any), restarts it on the same
folder and checks: the interrupted work reads FAILED with reason
"interrupted", what was served before is still served, every READY row
points at a complete bundle, no temporary or uncatalogued file is left and
no process of the killed tree survives.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import polars as pl
import pytest

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.convert import event_from_row
from foresight.storage.models import IndexVersionRow, ScoringRunRow

pytestmark = pytest.mark.faults

INSTANCE = "churn"


def interrupted(error: str | None) -> bool:
    """The reason start-up recovery gives to work its service did not finish."""
    return "interrupted" in (error or "")


def test_kill9_mid_training_fails_the_version_and_the_scorer_keeps_serving(world: Any) -> None:
    world.start("trainer", "scorer")
    t = world.client.trainer
    current = t.GetModelVersion(trainer_pb2.GetModelVersionRequest(instance=INSTANCE))
    scored = (
        world.client.scorer.BatchGetProfileScores(
            scorer_pb2.BatchGetProfileScoresRequest(profile_ids=world.prepared.profile_ids[:200])
        )
        .profiles[0]
        .profile_id
    )
    with world.lookups(scored) as poller:
        world.kill_mid_stream(
            "trainer",
            t.TrainModel(trainer_pb2.TrainModelRequest(instance=INSTANCE, max_trials=20)),
            "TrainModel",
            wait_for_workers=True,
        )
        world.restart("trainer")
        versions = world.client.trainer.ListModelVersions(
            trainer_pb2.ListModelVersionsRequest(instance=INSTANCE)
        ).versions
    newest = versions[0]
    assert newest.version > current.version
    assert newest.status == common_pb2.JOB_STATUS_FAILED and interrupted(newest.error)
    served = world.client.trainer.GetModelVersion(
        trainer_pb2.GetModelVersionRequest(instance=INSTANCE)
    )
    assert served.version == current.version and served.status == common_pb2.JOB_STATUS_READY
    assert poller.calls > 5 and not poller.failures, poller.failures[:3]
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_kill9_mid_encoder_training_fails_the_encoder_version(world: Any) -> None:
    world.start("trainer")
    t = world.client.trainer
    before = t.ListEncoderVersions(trainer_pb2.ListEncoderVersionsRequest()).versions
    world.kill_mid_stream(
        "trainer",
        t.TrainEncoder(
            trainer_pb2.TrainEncoderRequest(
                dataset="shop", dimensions=8, kind=trainer_pb2.ENCODER_KIND_AUTOENCODER
            )
        ),
        "TrainEncoder",
    )
    world.restart("trainer")
    after = world.client.trainer.ListEncoderVersions(
        trainer_pb2.ListEncoderVersionsRequest()
    ).versions
    new = [v for v in after if v.version not in {b.version for b in before}]
    assert len(new) == 1
    assert new[0].status == common_pb2.JOB_STATUS_FAILED and interrupted(new[0].error)
    world.assert_no_orphan_processes()
    world.assert_consistent()


def _batches(
    world: Any, dataset: str, sent: threading.Event, release: threading.Event
) -> Iterator[Any]:
    rows = pl.read_parquet(world.prepared.imports / "gen" / "events.parquet").head(4_000)
    for chunk in rows.iter_slices(1_000):
        yield trainer_pb2.IngestEventsRequest(
            dataset=dataset, events=[event_from_row(r) for r in chunk.iter_rows(named=True)]
        )
    sent.set()
    release.wait(60)  # the stream stays open: the trainer dies before it ends


def test_kill9_mid_ingest_stream_leaves_no_half_dataset(world: Any) -> None:
    world.start("trainer")
    sent, release = threading.Event(), threading.Event()
    call = world.client.trainer.IngestEvents.future(_batches(world, "streamed", sent, release))
    assert sent.wait(60)
    world.kill("trainer", "IngestEvents")
    release.set()
    with pytest.raises(grpc.RpcError):
        call.result(timeout=30)
    world.restart("trainer")
    names = {
        d.name
        for d in world.client.trainer.ListDatasets(trainer_pb2.ListDatasetsRequest()).datasets
    }
    # Never acknowledged: no dataset, or an empty one; never some of the rows.
    if "streamed" in names:
        described = world.client.trainer.DescribeDataset(
            trainer_pb2.DescribeDatasetRequest(dataset="streamed")
        )
        assert described.rows == 0
    world.assert_no_orphan_processes()
    world.assert_consistent()


def _wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_kill9_mid_import_publishes_all_or_nothing(world: Any) -> None:
    world.start("trainer")
    whole = world.client.trainer.DescribeDataset(
        trainer_pb2.DescribeDatasetRequest(dataset="shop")
    ).dataset.rows  # the same file, imported whole when the world was prepared
    call = world.client.trainer.ImportDataset.future(
        trainer_pb2.ImportDatasetRequest(dataset="again", path="gen/events.parquet")
    )
    target = world.data_dir / "events" / "again"
    _wait_for(lambda: target.exists() or call.done())
    world.kill("trainer", "ImportDataset")
    acknowledged = None
    with contextlib.suppress(grpc.RpcError):
        acknowledged = call.result(timeout=30)
    world.restart("trainer")
    names = {
        d.name
        for d in world.client.trainer.ListDatasets(trainer_pb2.ListDatasetsRequest()).datasets
    }
    if acknowledged is not None:  # an OK is durable: every row is there
        rows = world.client.trainer.DescribeDataset(
            trainer_pb2.DescribeDatasetRequest(dataset="again")
        ).dataset.rows
        world.lost(max(0, acknowledged.written - rows))
        assert rows == acknowledged.written
    elif "again" in names:  # killed after its commit, before its answer: all of it
        rows = world.client.trainer.DescribeDataset(
            trainer_pb2.DescribeDatasetRequest(dataset="again")
        ).dataset.rows
        assert rows == whole
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_kill9_mid_scoring_fails_the_run_and_keeps_the_previous_scores(world: Any) -> None:
    world.start("scorer")
    s = world.client.scorer
    ids = world.prepared.profile_ids[:200]
    before = s.BatchGetProfileScores(scorer_pb2.BatchGetProfileScoresRequest(profile_ids=ids))
    previous_run = before.profiles[0].scores[0].run_id
    world.kill_mid_stream(
        "scorer", s.RunScoring(scorer_pb2.RunScoringRequest(instance=INSTANCE)), "RunScoring"
    )
    world.restart("scorer")
    runs = world.rows(ScoringRunRow)
    failed = [r for r in runs if r.run_id != previous_run]
    assert len(failed) == 1 and failed[0].status == "FAILED" and interrupted(failed[0].error)
    after = world.client.scorer.BatchGetProfileScores(
        scorer_pb2.BatchGetProfileScoresRequest(profile_ids=ids)
    )
    assert len(after.profiles) == len(before.profiles)
    assert {p.scores[0].run_id for p in after.profiles} == {previous_run}
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_kill9_mid_index_build_fails_the_build_and_serves_the_old_index(world: Any) -> None:
    world.start("segmenter")
    seg = world.client.segmenter
    served = seg.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    world.kill_mid_stream(
        "segmenter",
        seg.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset="shop")),
        "BuildIndex",
        wait_for_workers=True,
    )
    world.restart("segmenter")
    after = world.client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    assert after.version == served.version and after.count == served.count
    rows = world.rows(IndexVersionRow)
    newer = [r for r in rows if r.version > served.version]
    assert len(newer) == 1 and newer[0].status == "FAILED"
    assert interrupted(newer[0].error)
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_kill9_mid_discovery_keeps_the_previous_discovery(world: Any) -> None:
    world.start("segmenter")
    seg = world.client.segmenter
    before = seg.ListClusters(segmenter_pb2.ListClustersRequest())
    world.kill_mid_stream(
        "segmenter",
        seg.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest()),
        "DiscoverSegments",
    )
    world.restart("segmenter")
    after = world.client.segmenter.ListClusters(segmenter_pb2.ListClustersRequest())
    assert after.discovery_version == before.discovery_version
    assert [c.size for c in after.clusters] == [c.size for c in before.clusters]
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_sigterm_mid_index_build_drains_exits_0_and_leaves_no_running_work(world: Any) -> None:
    world.start("segmenter")
    seg = world.client.segmenter
    served = seg.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    stream = seg.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset="shop"))
    for event in stream:
        assert event.WhichOneof("event") == "progress", "the build finished before SIGTERM"
        assert world.wait_for_children("segmenter"), "the build started no worker process"
        # The build either ends within the drain (cancelled, or finished) or is stopped
        # with the process; either way the service must exit 0.
        assert world.kill("segmenter", "sigterm: BuildIndex", signal.SIGTERM) == 0
        break
    world.restart("segmenter")
    after = world.client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    newer = [r for r in world.rows(IndexVersionRow) if r.version > served.version]
    assert all(r.status in {"READY", "FAILED", "CANCELLED"} for r in newer), newer
    published = [r.version for r in newer if r.status == "READY"]
    assert after.version == (published[-1] if published else served.version)
    world.assert_no_orphan_processes()
    world.assert_consistent()


def _sigterm_jobs(world: Any) -> dict[str, tuple[str, Any, bool]]:
    """Each remaining long job: (its service, a way to start its stream, has workers)."""
    return {
        "TrainModel": (
            "trainer",
            lambda: world.client.trainer.TrainModel(
                trainer_pb2.TrainModelRequest(instance=INSTANCE, max_trials=20)
            ),
            True,
        ),
        "TrainEncoder": (
            "trainer",
            lambda: world.client.trainer.TrainEncoder(
                trainer_pb2.TrainEncoderRequest(
                    dataset="shop", dimensions=8, kind=trainer_pb2.ENCODER_KIND_AUTOENCODER
                )
            ),
            False,
        ),
        "RunScoring": (
            "scorer",
            lambda: world.client.scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=INSTANCE)),
            False,
        ),
        "DiscoverSegments": (
            "segmenter",
            lambda: world.client.segmenter.DiscoverSegments(
                segmenter_pb2.DiscoverSegmentsRequest()
            ),
            False,
        ),
    }


@pytest.mark.parametrize("job", ["TrainModel", "TrainEncoder", "RunScoring", "DiscoverSegments"])
def test_sigterm_mid_job_exits_0_and_leaves_no_running_work(world: Any, job: str) -> None:
    service, start, has_workers = _sigterm_jobs(world)[job]
    world.start(service)
    stream = start()
    for event in stream:
        assert event.WhichOneof("event") == "progress", f"{job} finished before SIGTERM"
        if has_workers:
            assert world.wait_for_children(service), f"{job} started no worker process"
        # The job ends within the drain (cancelled, or finished) or with the process;
        # either way the service exits 0 and nothing stays RUNNING.
        assert world.kill(service, f"sigterm: {job}", signal.SIGTERM) == 0
        break
    with contextlib.suppress(grpc.RpcError):
        for _ in stream:  # the stream ends: cancelled, or the final message
            pass
    world.restart(service)
    world.assert_no_orphan_processes()
    world.assert_consistent()
