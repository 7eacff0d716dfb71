"""In-process gRPC tests of the trainer's ingestion, dataset and instance RPCs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import polars as pl
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from foresight.api.common.v1 import common_pb2
from foresight.api.trainer.v1 import trainer_pb2 as pb
from services.trainer.main import SERVICE_NAME
from tests.fixtures.trainer import Trainer, start_trainer

pytestmark = pytest.mark.integration


@pytest.fixture
async def trainer(tmp_path: Path) -> AsyncIterator[Trainer]:
    t = await start_trainer(tmp_path)
    yield t
    await t.channel.close(None)
    await t.runtime.stop(0)


def _good_rows(n: int, start: datetime) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"e{i}",
            "profile_id": f"p{i % 50}",
            "timestamp": (start + timedelta(hours=i)).isoformat(),
            "event_type": "commerce.purchases" if i % 5 == 0 else "commerce.productViews",
            "channel": "web" if i % 2 else "mobile",
            "value": 10.0 + i if i % 5 == 0 else None,
            "quantity": 1,
            "product_category": "tools",
        }
        for i in range(n)
    ]


def _broken_rows(start: datetime) -> list[tuple[dict[str, object], str]]:
    """One broken row of every kind, with the reason validation must give."""
    base = {
        "event_id": None,
        "profile_id": "px",
        "timestamp": start.isoformat(),
        "event_type": "web.webpagedetails.pageViews",
    }
    far = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    return [
        ({**base, "event_id": "b1", "profile_id": None}, "profile_id"),
        ({**base, "event_id": "b2", "timestamp": "not a time"}, "timestamp"),
        ({**base, "event_id": "b3", "timestamp": far}, "timestamp"),
        ({**base, "event_id": "b4", "event_type": None}, "event_type"),
        ({**base, "event_id": "b5", "value": "abc"}, "value"),
        ({**base, "event_id": "b6", "value": "-3"}, "value"),
        ({**base, "event_id": "b7", "value": "NaN"}, "value"),
        ({**base, "event_id": "b8", "quantity": "-1"}, "quantity"),
        ({**base, "event_id": "b9", "page_name": "x" * 5000}, "page_name"),
        ({**base, "event_id": "b10", "profile_id": "p" * 200}, "profile_id"),
    ]


async def test_health_serving_and_reflection_lists_the_service(trainer: Trainer) -> None:
    health = health_pb2_grpc.HealthStub(trainer.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(trainer.channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


async def test_health_not_serving_after_shutdown(tmp_path: Path) -> None:
    t = await start_trainer(tmp_path)
    health = health_pb2_grpc.HealthStub(t.channel)
    await t.runtime.health.enter_graceful_shutdown()
    resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await t.channel.close(None)
    await t.runtime.stop(0)


async def test_broken_rows_are_quarantined_and_reimport_adds_nothing(trainer: Trainer) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    good = _good_rows(90, start)
    broken = _broken_rows(start)
    rows = good + [r for r, _ in broken]  # 10 % broken, one of every kind
    path = trainer.imports / "events.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    first = await trainer.stub.ImportDataset(
        pb.ImportDatasetRequest(dataset="shop", path="events.jsonl")
    )
    assert first.rows_read == 100
    assert (first.accepted, first.rejected, first.written) == (90, 10, 90)
    assert first.accepted + first.rejected == first.rows_read
    quarantine = pl.read_parquet(trainer.data / "events" / first.quarantine_path)
    assert quarantine.height == 10
    reasons = dict(
        zip(
            quarantine["raw_event_id"]
            if "raw_event_id" in quarantine.columns
            else quarantine["event_id"],
            quarantine["reason"],
            strict=True,
        )
    )
    for row, field in broken:
        assert field in reasons[row["event_id"]], (row["event_id"], reasons[row["event_id"]])

    again = await trainer.stub.ImportDataset(
        pb.ImportDatasetRequest(dataset="shop", path="events.jsonl")
    )
    assert (again.written, again.duplicates, again.rejected) == (0, 90, 10)
    described = await trainer.stub.DescribeDataset(pb.DescribeDatasetRequest(dataset="shop"))
    assert described.dataset.rows == 90
    assert described.profiles == 50
    counts = {c.event_type: c.rows for c in described.event_types}
    assert counts == {"commerce.productViews": 72, "commerce.purchases": 18}
    completeness = {c.field: c.percent for c in described.completeness}
    assert completeness["profile_id"] == 100.0 and completeness["value"] == 20.0
    # The re-import's rejected rows are the same rows: quarantined once (issue 11.7).
    assert described.quarantined_rows == 10
    assert again.quarantine_path == first.quarantine_path


async def test_import_outside_root_is_permission_denied(trainer: Trainer, tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("profile_id,timestamp,event_type\np1,2026-01-01T00:00:00Z,x\n")
    (trainer.imports / "link.csv").symlink_to(outside)
    for path in ["../secret.csv", str(outside), "link.csv", "sub/../../secret.csv"]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="d", path=path))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, path


async def test_bad_requests_name_the_field(trainer: Trainer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="Bad Name!", path="x.csv"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("dataset:")
    assert ("foresight-field", "dataset") in tuple(err.value.trailing_metadata() or ())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.DescribeDataset(pb.DescribeDatasetRequest(dataset="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="d", path="nope.csv"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ingest_stream_counts_and_idempotency(trainer: Trainer) -> None:
    start = datetime(2026, 2, 1, tzinfo=UTC)

    def batches() -> list[pb.IngestEventsRequest]:
        events = []
        for i in range(30):
            ev = common_pb2.Event(
                event_id=f"s{i}",
                profile_id=f"p{i % 3}",
                event_type="application.launch",
                channel="mobile",
            )
            ev.timestamp.FromDatetime(start + timedelta(minutes=i))
            events.append(ev)
        bad = common_pb2.Event(event_id="bad", profile_id="p1")  # no timestamp, no type
        return [
            pb.IngestEventsRequest(dataset="stream", events=events[:15]),
            pb.IngestEventsRequest(dataset="stream", events=[*events[15:], bad]),
        ]

    first = await trainer.stub.IngestEvents(iter(batches()))
    assert (first.rows_read, first.accepted, first.rejected, first.written) == (31, 30, 1, 30)
    second = await trainer.stub.IngestEvents(iter(batches()))
    assert (second.written, second.duplicates) == (0, 30)
    listed = await trainer.stub.ListDatasets(pb.ListDatasetsRequest())
    assert [(d.name, d.rows) for d in listed.datasets] == [("stream", 30)]


async def test_mixed_datasets_in_one_stream_is_invalid(trainer: Trainer) -> None:
    ev = common_pb2.Event(profile_id="p", event_type="x")
    reqs = [
        pb.IngestEventsRequest(dataset="a", events=[ev]),
        pb.IngestEventsRequest(dataset="b", events=[ev]),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.IngestEvents(iter(reqs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_instance_crud(trainer: Trainer) -> None:
    (trainer.imports / "e.jsonl").write_text(
        "\n".join(json.dumps(r) for r in _good_rows(10, datetime(2026, 1, 1, tzinfo=UTC))) + "\n"
    )
    await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="shop", path="e.jsonl"))
    goal = pb.Goal(
        conditions=common_pb2.Conditions(text='event_type = "commerce.purchases" and value > 100'),
        window_days=30,
    )
    created = await trainer.stub.CreateInstance(
        pb.CreateInstanceRequest(
            instance=pb.Instance(
                name="buyers", type=pb.INSTANCE_TYPE_CONVERSION, goal=goal, dataset="shop"
            )
        )
    )
    assert created.goal.occurrence == pb.OCCURRENCE_WILL_OCCUR
    assert created.goal.conditions.WhichOneof("form") == "structured"
    assert len(created.goal.conditions.structured.items) == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.CreateInstance(pb.CreateInstanceRequest(instance=created))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    updated = await trainer.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=pb.Instance(name="buyers", description="big baskets"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert updated.description == "big baskets" and updated.goal.window_days == 30
    listed = await trainer.stub.ListInstances(pb.ListInstancesRequest())
    assert [i.name for i in listed.instances] == ["buyers"]

    bad_text = pb.Instance(
        name="broken",
        type=pb.INSTANCE_TYPE_CUSTOM,
        dataset="shop",
        goal=pb.Goal(conditions=common_pb2.Conditions(text="value >"), window_days=30),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.CreateInstance(pb.CreateInstanceRequest(instance=bad_text))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "goal.conditions" in details and "column" in details

    await trainer.stub.DeleteInstance(pb.DeleteInstanceRequest(name="buyers"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.GetInstance(pb.GetInstanceRequest(name="buyers"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bearer_token_required_but_health_open(tmp_path: Path) -> None:
    t = await start_trainer(tmp_path, auth_token="s3cret")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await t.stub.ListDatasets(pb.ListDatasetsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await t.stub.ListDatasets(
            pb.ListDatasetsRequest(), metadata=(("authorization", "Bearer s3cret"),)
        )
        assert list(ok.datasets) == []
        health = health_pb2_grpc.HealthStub(t.channel)
        resp = await health.Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await t.channel.close(None)
        await t.runtime.stop(0)


@pytest.mark.parametrize(
    ("goal", "field", "fragment"),
    [
        (
            pb.Goal(conditions=common_pb2.Conditions(text='colour = "red"'), window_days=30),
            "goal.conditions",
            "colour",
        ),
        (
            pb.Goal(conditions=common_pb2.Conditions(text='value > "lots"'), window_days=30),
            "goal.conditions",
            "value",
        ),
        (
            pb.Goal(conditions=common_pb2.Conditions(text='event_type = "x"'), window_days=0),
            "goal.window_days",
            "between",
        ),
        (
            pb.Goal(conditions=common_pb2.Conditions(text=""), window_days=30),
            "goal.conditions",
            "empty",
        ),
        (
            pb.Goal(conditions=common_pb2.Conditions(text="value >"), window_days=30),
            "goal.conditions",
            "column",
        ),
    ],
)
async def test_bad_goals_are_invalid_argument_naming_the_problem(
    trainer: Trainer, goal: pb.Goal, field: str, fragment: str
) -> None:
    (trainer.imports / "e.jsonl").write_text(
        "\n".join(json.dumps(r) for r in _good_rows(5, datetime(2026, 1, 1, tzinfo=UTC))) + "\n"
    )
    await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="shop", path="e.jsonl"))
    instance = pb.Instance(name="bad", type=pb.INSTANCE_TYPE_CONVERSION, dataset="shop", goal=goal)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.CreateInstance(pb.CreateInstanceRequest(instance=instance))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert details.startswith(field) and fragment in details, details


async def _import_events(
    trainer: Trainer, dataset: str, path: str
) -> tuple[list[common_pb2.Progress], pb.IngestSummary | None]:
    progress: list[common_pb2.Progress] = []
    summary = None
    async for event in trainer.stub.ImportDatasetWithProgress(
        pb.ImportDatasetRequest(dataset=dataset, path=path)
    ):
        if event.WhichOneof("event") == "progress":
            progress.append(event.progress)
        else:
            summary = event.summary
    return progress, summary


async def test_import_with_progress_reports_rows_read_then_the_same_summary(
    trainer: Trainer,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    folder = trainer.imports / "parts"
    folder.mkdir()
    rows = _good_rows(120, start)
    for i in range(3):  # batches never span files: three batches, three reports
        pl.DataFrame(rows[i * 40 : (i + 1) * 40]).write_csv(folder / f"part-{i}.csv")
    progress, summary = await _import_events(trainer, "shop", "parts")
    assert summary is not None and (summary.rows_read, summary.written) == (120, 120)
    imported = [p for p in progress if p.stage == "import"]
    assert [round(p.fraction, 3) for p in imported] == [0.333, 0.667, 1.0]
    assert imported[-1].message == "120 of ~120 rows"
    plain = await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="copy", path="parts"))
    assert (plain.rows_read, plain.accepted, plain.written) == (120, 120, 120)


async def test_import_with_progress_refuses_bad_names_like_import(trainer: Trainer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import_events(trainer, "Bad Name!", "x.csv")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("dataset:")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import_events(trainer, "d", "../x.csv")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_cancelled_import_stops_and_stores_nothing(
    trainer: Trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from foresight.events.readers import read_batches
    from services.trainer import ingest

    batches_read = 0

    def slow_batches(path: Path) -> Iterator[pl.DataFrame]:
        nonlocal batches_read
        for batch in read_batches(path, batch_rows=10):
            time.sleep(0.2)
            batches_read += 1
            yield batch

    monkeypatch.setattr(ingest, "read_batches", slow_batches)
    rows = _good_rows(200, datetime(2026, 1, 1, tzinfo=UTC))
    rows[3]["profile_id"] = None  # one rejected row in the first batch
    (trainer.imports / "big.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    call = trainer.stub.ImportDatasetWithProgress(
        pb.ImportDatasetRequest(dataset="shop", path="big.jsonl")
    )
    async for event in call:
        if event.WhichOneof("event") == "progress" and event.progress.stage == "import":
            call.cancel()
            break
    # The job stops at its next report, a few batches in, long before all 20.
    for _ in range(100):
        stopped = batches_read
        await asyncio.sleep(0.5)
        if batches_read == stopped:
            break
    assert 0 < batches_read < 20
    listed = await trainer.stub.ListDatasets(pb.ListDatasetsRequest())
    assert "shop" not in [d.name for d in listed.datasets]  # nothing published
    folder = trainer.data / "events" / "shop"
    left = [p.name for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert left == []  # the written parts are removed at once, not at the next start


async def test_import_failing_on_a_later_file_stores_nothing(trainer: Trainer) -> None:
    folder = trainer.imports / "mixed"
    folder.mkdir()
    pl.DataFrame(_good_rows(40, datetime(2026, 1, 1, tzinfo=UTC))).write_csv(folder / "a.csv")
    (folder / "b.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.ImportDataset(pb.ImportDatasetRequest(dataset="shop", path="mixed"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "b.parquet" in (err.value.details() or "")
    listed = await trainer.stub.ListDatasets(pb.ListDatasetsRequest())
    assert "shop" not in [d.name for d in listed.datasets]  # a.csv's rows are not published
    folder = trainer.data / "events" / "shop"
    assert not folder.exists() or [p for p in folder.rglob("*") if p.is_file()] == []
    # Fixed, the same import stores every row once.
    (trainer.imports / "mixed" / "b.parquet").unlink()
    summary = await trainer.stub.ImportDataset(
        pb.ImportDatasetRequest(dataset="shop", path="mixed")
    )
    assert (summary.rows_read, summary.written) == (40, 40)
