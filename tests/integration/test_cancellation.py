"""The cancellation contract over gRPC, for each of the five long RPCs.

A cancelled stream (or a passed deadline) cancels the job: its version or run
ends CANCELLED, nothing is published, and the service keeps serving. Each job
is held at its first progress report until its cancel token is set (a gate
around the domain call), so the test never races a fast job on tiny data.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest
from sqlalchemy import func, select

from foresight import instance as inst
from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from foresight.api.segmenter.v1 import segmenter_pb2, segmenter_pb2_grpc
from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.encoder.trainer import EncoderTrainer
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.runtime import ServiceRuntime
from foresight.shards import JOB_CANCEL
from foresight.storage import ArtifactStore, Database
from foresight.storage.catalog import record_import
from foresight.storage.lifecycle import Status
from foresight.storage.models import (
    DiscoveryRow,
    EncoderVersionRow,
    IndexVersionRow,
    InstanceRow,
    ModelVersionRow,
    ScoringRunRow,
)
from foresight.tools.generate import generate
from services.scorer.main import build_scorer, start_scorer
from services.scorer.settings import ScorerSettings
from services.segmenter.domain import Segmenter
from services.segmenter.main import SERVICE_NAME as SEGMENTER
from services.segmenter.main import build_segmenter
from services.segmenter.servicer import SegmenterServicer
from services.segmenter.settings import SegmenterSettings
from services.trainer.main import SERVICE_NAME as TRAINER
from services.trainer.main import build_servicer
from services.trainer.settings import TrainerSettings
from services.trainer.training import ModelTrainer

pytestmark = pytest.mark.integration

DATASET = "shop"
INSTANCE = "buyers"
SHARDS = 4
HOLD_S = 30.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with events, a READY model, a READY encoder, an index and a discovery."""
    root = tmp_path_factory.mktemp("cancellation")
    data_dir = root / "var"
    g = generate(root / "gen", profiles=800, seed=11)
    db = Database(f"sqlite:///{(data_dir / 'foresight.db').resolve()}")
    data_dir.mkdir(exist_ok=True)
    db.migrate()
    store = EventStore(data_dir / "events", shards=SHARDS)
    accepted = validate(pl.read_parquet(g.events_path), g.ingest_now).accepted
    parts = store.write(DATASET, accepted, [])
    record_import(db, DATASET, [p.catalogued() for p in parts])
    config = inst.from_dict(
        {
            "name": INSTANCE,
            "type": "CONVERSION",
            "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
            "min_positives": 20,
            "min_negatives": 20,
        }
    )
    with db.session() as s:
        s.add(InstanceRow(name=INSTANCE, dataset=DATASET, config=inst.to_dict(config)))
    artifacts = ArtifactStore(data_dir / "artifacts")
    trainer = ModelTrainer(db, store, artifacts, workers=1)
    try:
        assert trainer.train(INSTANCE, 1).status is Status.READY
    finally:
        trainer.close()
    encoder = EncoderTrainer(db, data_dir / "events", artifacts).train(DATASET, 8, "pca", 800)
    assert encoder.status is Status.READY, encoder.error
    segmenter = Segmenter(db, artifacts, data_dir / "events", shards=SHARDS, workers=1)
    segmenter.build(DATASET)
    segmenter.discover(3)
    db.dispose()
    return data_dir


@dataclass
class Services:
    """The three services in-process over one copy of the prepared data directory."""

    data_dir: Path
    db: Database
    trainer: trainer_pb2_grpc.TrainerServiceAsyncStub
    scorer: scorer_pb2_grpc.ScorerServiceAsyncStub
    segmenter: segmenter_pb2_grpc.SegmenterServiceAsyncStub
    domains: dict[str, Any]


@pytest.fixture
async def services(prepared: Path, tmp_path: Path) -> AsyncIterator[Services]:
    data_dir = tmp_path / "var"
    shutil.copytree(prepared, data_dir)
    (tmp_path / "imports").mkdir()
    runtimes: list[Any] = []
    channels: list[grpc.aio.Channel] = []

    def channel(port: int) -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        return channels[-1]

    t_settings = TrainerSettings(
        data_dir=data_dir, port=0, import_root=tmp_path / "imports", shards=SHARDS, workers=1
    )
    t_runtime = ServiceRuntime(t_settings, [TRAINER])
    t_servicer, recover = build_servicer(t_settings)
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(t_servicer, t_runtime.server)
    t_runtime.on_shutdown(t_servicer.models.close)
    t_port = await t_runtime.start()
    await recover()
    runtimes.append(t_runtime)

    s_settings = ScorerSettings(
        data_dir=data_dir, port=0, host="127.0.0.1", poll_seconds=0.1, log_json=False
    )
    db = Database(s_settings.resolved_database_url)
    scorer = build_scorer(s_settings, db)
    running = await start_scorer(s_settings, scorer, follow=False)

    g_settings = SegmenterSettings(
        data_dir=data_dir, port=0, host="127.0.0.1", shards=SHARDS, workers=1, log_json=False
    )
    g_runtime = ServiceRuntime(g_settings, [SEGMENTER])
    segmenter = build_segmenter(g_settings)
    segmenter_pb2_grpc.add_SegmenterServiceServicer_to_server(
        SegmenterServicer(segmenter), g_runtime.server
    )
    g_port = await g_runtime.start()
    await asyncio.to_thread(segmenter.load)
    runtimes.append(g_runtime)
    try:
        yield Services(
            data_dir,
            db,
            trainer_pb2_grpc.TrainerServiceStub(channel(t_port)),
            scorer_pb2_grpc.ScorerServiceStub(channel(running.port)),
            segmenter_pb2_grpc.SegmenterServiceStub(channel(g_port)),
            {
                "models": t_servicer.models,
                "encoders": t_servicer.encoders,
                "scorer": scorer,
                "segmenter": segmenter,
            },
        )
    finally:
        for c in channels:
            await c.close(None)
        await running.stop(0)
        for r in runtimes:
            await r.stop(0)
        db.dispose()


# ------------------------------------------------------------------ helpers


def _hold_at_first_progress(domain: object, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `domain.method`'s job wait at its first progress report until it is cancelled.

    The first report still reaches the caller (so the job is known to be
    running); the job then waits for its cancel token and reports again,
    which is where a cancelled job stops.
    """
    original = getattr(domain, method)

    def hold(report: Callable[..., None]) -> Callable[..., None]:
        held = [False]

        def gated(*args: Any) -> None:
            report(*args)
            if not held[0]:
                held[0] = True
                token = JOB_CANCEL.get()
                assert token is not None, "the job runs without a cancel token"
                token.wait(HOLD_S)
                report(*args)

        return gated

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "progress" in kwargs:
            kwargs["progress"] = hold(kwargs["progress"])
        else:
            args = (*args[:-1], hold(args[-1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(domain, method, wrapper)


async def _cancel_after_first_progress(call: Any) -> None:
    first = await call.read()
    assert first.WhichOneof("event") == "progress"
    call.cancel()


async def _eventually(probe: Callable[[], Any], expected: Any) -> None:
    """Poll `probe` (a blocking callable) until it returns `expected` (bounded)."""
    got = None
    for _ in range(int(HOLD_S / 0.1)):
        got = await asyncio.to_thread(probe)
        if got == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {expected!r}, still {got!r}")


def _newest(db: Database, row: Any) -> tuple[int, str]:
    """(version, status) of the newest row of a versioned table (models: of INSTANCE)."""
    scoped = (
        (lambda q: q.where(row.instance_name == INSTANCE))
        if row is ModelVersionRow
        else (lambda q: q)
    )
    with db.session() as s:
        version = s.scalar(scoped(select(func.max(row.version))))
        status = s.scalar(scoped(select(row.status).where(row.version == version)))
        return int(version), str(status)


# ------------------------------------------------------------------ the five RPCs


async def test_cancelled_train_model_is_cancelled_and_unpublished(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_first_progress(services.domains["models"], "train", monkeypatch)
    call = services.trainer.TrainModel(trainer_pb2.TrainModelRequest(instance=INSTANCE))
    await _cancel_after_first_progress(call)
    await _eventually(lambda: _newest(services.db, ModelVersionRow), (2, Status.CANCELLED.value))
    listed = await services.trainer.ListModelVersions(
        trainer_pb2.ListModelVersionsRequest(instance=INSTANCE)
    )
    cancelled = listed.versions[0]
    assert cancelled.version == 2 and cancelled.status == common_pb2.JOB_STATUS_CANCELLED
    assert cancelled.error and not cancelled.artifact_path
    assert not (services.data_dir / "artifacts" / "models" / INSTANCE / "v2").exists()
    served = await services.trainer.GetModelVersion(
        trainer_pb2.GetModelVersionRequest(instance=INSTANCE)
    )
    assert served.version == 1 and served.status == common_pb2.JOB_STATUS_READY


async def test_a_passed_deadline_cancels_train_model(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_first_progress(services.domains["models"], "train", monkeypatch)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in services.trainer.TrainModel(
            trainer_pb2.TrainModelRequest(instance=INSTANCE), timeout=3
        ):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _eventually(lambda: _newest(services.db, ModelVersionRow), (2, Status.CANCELLED.value))
    assert not (services.data_dir / "artifacts" / "models" / INSTANCE / "v2").exists()


async def test_cancelled_train_encoder_is_cancelled_and_unpublished(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_first_progress(services.domains["encoders"], "train", monkeypatch)
    call = services.trainer.TrainEncoder(
        trainer_pb2.TrainEncoderRequest(
            dataset=DATASET,
            dimensions=8,
            kind=trainer_pb2.ENCODER_KIND_PCA,
            sample_size=800,
        )
    )
    await _cancel_after_first_progress(call)
    await _eventually(lambda: _newest(services.db, EncoderVersionRow), (2, Status.CANCELLED.value))
    assert not (services.data_dir / "artifacts" / "encoders" / "v2").exists()
    listed = await services.trainer.ListEncoderVersions(trainer_pb2.ListEncoderVersionsRequest())
    assert listed.versions[0].status == common_pb2.JOB_STATUS_CANCELLED


async def test_cancelled_run_scoring_is_cancelled_and_unpublished(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_first_progress(services.domains["scorer"], "run_scoring", monkeypatch)
    call = services.scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=INSTANCE))
    await _cancel_after_first_progress(call)

    def newest_run() -> tuple[str, str | None]:
        with services.db.session() as s:
            row = s.scalars(
                select(ScoringRunRow).order_by(ScoringRunRow.started_at.desc()).limit(1)
            ).one()
            return row.status, row.scores_path

    await _eventually(newest_run, (Status.CANCELLED.value, None))
    scores = services.data_dir / "artifacts" / "scores"
    assert not scores.exists() or not any(scores.rglob("*.parquet"))
    runs = await services.scorer.ListScoringRuns(
        scorer_pb2.ListScoringRunsRequest(instance=INSTANCE)
    )
    assert [r.status for r in runs.runs] == [common_pb2.JOB_STATUS_CANCELLED]


async def test_cancelled_build_index_is_cancelled_and_unpublished(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await services.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    _hold_at_first_progress(services.domains["segmenter"], "build", monkeypatch)
    call = services.segmenter.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset=DATASET))
    await _cancel_after_first_progress(call)
    expected = (before.version + 1, Status.CANCELLED.value)
    await _eventually(lambda: _newest(services.db, IndexVersionRow), expected)
    assert not (services.data_dir / "artifacts" / "indexes" / f"v{expected[0]}").exists()
    after = await services.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    assert after.version == before.version  # the served index is untouched


async def test_cancelled_discover_segments_is_cancelled_and_unpublished(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_first_progress(services.domains["segmenter"], "discover", monkeypatch)
    call = services.segmenter.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest(clusters=3))
    await _cancel_after_first_progress(call)
    await _eventually(lambda: _newest(services.db, DiscoveryRow), (2, Status.CANCELLED.value))
    assert not (services.data_dir / "artifacts" / "discoveries" / "v2").exists()
    clusters = await services.segmenter.ListClusters(segmenter_pb2.ListClustersRequest())
    assert clusters.discovery_version == 1 and clusters.clusters
