"""A damaged Parquet part affects only its dataset, is reported precisely, verified and repaired (issue 11.7)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from typer.testing import CliRunner

from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.cli import app

if TYPE_CHECKING:
    from tests.faults.inprocess import Suite

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]


def _write_source(path: Path, rows: int) -> None:
    """Good events for 40 profiles (spread over every shard) plus three bad rows."""
    start = datetime(2026, 2, 1, tzinfo=UTC)
    with path.open("w") as fh:
        for i in range(rows):
            event = {
                "event_id": f"{path.stem}-{i}",
                "profile_id": f"q{i % 40}",
                "timestamp": (start + timedelta(minutes=i)).isoformat(),
                "event_type": "commerce.productViews",
            }
            fh.write(json.dumps(event) + "\n")
        fh.write('{"profile_id": "q1", "event_type": "x"}\n')  # no timestamp
        fh.write("not json at all\n")
        fh.write('{"timestamp": "2026-02-01T00:00:00Z", "event_type": "x"}\n')  # no profile


def _import(stub: trainer_pb2_grpc.TrainerServiceStub, metadata: Metadata, name: str) -> None:
    summary = stub.ImportDataset(
        trainer_pb2.ImportDatasetRequest(dataset=name, path=f"{name}.jsonl"), metadata=metadata
    )
    assert summary.rejected == 3


def _describe(
    stub: trainer_pb2_grpc.TrainerServiceStub, metadata: Metadata, name: str
) -> trainer_pb2.DatasetDescription:
    return stub.DescribeDataset(trainer_pb2.DescribeDatasetRequest(dataset=name), metadata=metadata)


def _cli(suite: Suite, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        ["--trainer", f"127.0.0.1:{suite.ports['trainer']}", "--token", "fuzz-token", *args],
    )
    return result.exit_code, result.output


def test_damage_is_contained_reported_verified_and_repaired(
    suite: Suite, metadata: Metadata
) -> None:
    for name in ("damaged", "healthy"):
        _write_source(suite.data / "imports" / f"{name}.jsonl", 400)
    with suite.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        _import(stub, metadata, "damaged")
        _import(stub, metadata, "healthy")
        before = _describe(stub, metadata, "damaged")
        assert before.dataset.rows == 400 and before.quarantined_rows == 3

        parts = sorted((suite.data / "events" / "damaged").glob("shard=*/part-*.parquet"))
        assert len(parts) == 2
        lost, corrupt = parts
        lost.unlink()
        corrupt.write_bytes(b"PAR1 garbage")

        with pytest.raises(grpc.RpcError) as caught:
            _describe(stub, metadata, "damaged")
        err = caught.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.details() or ""
        assert "damaged/shard=" in details and "foresight dataset repair damaged" in details
        assert str(suite.data) not in details and "Error" not in details
        # Re-import refuses too, precisely, until repaired.
        with pytest.raises(grpc.RpcError) as again:
            _import(stub, metadata, "damaged")
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The other dataset is unaffected.
        assert _describe(stub, metadata, "healthy").dataset.rows == 400

        code, out = _cli(suite, "dataset", "verify", "damaged")
        assert code == 1, out
        assert "2 damaged" in out and "missing" in out and "unreadable" in out
        health = stub.VerifyDataset(
            trainer_pb2.VerifyDatasetRequest(dataset="damaged"), metadata=metadata
        )
        assert {p.problem for p in health.damaged} == {"missing", "unreadable"}
        assert health.rows_lost == 400 and not health.repaired

        code, out = _cli(suite, "dataset", "repair", "damaged")
        assert code == 0, out
        assert "2 dropped" in out
        assert not corrupt.exists()
        assert _describe(stub, metadata, "damaged").dataset.rows == 0

        # Re-importing the source restores every event; its rejected rows stay quarantined once.
        _import(stub, metadata, "damaged")
        after = _describe(stub, metadata, "damaged")
        assert (after.dataset.rows, after.quarantined_rows) == (400, 3)
        code, out = _cli(suite, "dataset", "verify", "damaged")
        assert code == 0 and "0 damaged" in out


def test_reimporting_a_file_does_not_quarantine_its_rejects_twice(
    suite: Suite, metadata: Metadata
) -> None:
    _write_source(suite.data / "imports" / "twice.jsonl", 50)
    with suite.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        _import(stub, metadata, "twice")
        _import(stub, metadata, "twice")
        described = _describe(stub, metadata, "twice")
    assert (described.dataset.rows, described.quarantined_rows) == (50, 3)
    assert len(list((suite.data / "events" / "twice" / "_quarantine").iterdir())) == 1
