"""The versioned-artifact lifecycle, on SQLite and PostgreSQL, and the one status vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from foresight.api.common.v1 import common_pb2
from foresight.convert import status_from_pb, status_to_pb
from foresight.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import INTERRUPTED, Lifecycle, Status, ending_of
from foresight.storage.models import EncoderVersionRow, ModelVersionRow, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def encoders(database: Database, artifacts: ArtifactStore) -> Lifecycle[EncoderVersionRow]:
    return Lifecycle(
        database, artifacts, EncoderVersionRow, root="encoders", owner="trainer", noun="encoder"
    )


@pytest.fixture
def models(database: Database, artifacts: ArtifactStore) -> Lifecycle[ModelVersionRow]:
    return Lifecycle(
        database,
        artifacts,
        ModelVersionRow,
        root="models/{scope}",
        owner="trainer",
        noun="model version",
        scope_column="instance_name",
    )


def _encoder(version: int, lifecycle: Lifecycle[EncoderVersionRow]) -> EncoderVersionRow:
    with lifecycle.db.session() as s:
        row = s.scalar(select(EncoderVersionRow).where(EncoderVersionRow.version == version))
        assert row is not None
        s.expunge(row)
        return row


def _fields() -> dict[str, Any]:
    return {"dataset": "shop", "dimensions": 8, "metrics": {}}


def _publish(lifecycle: Lifecycle[EncoderVersionRow], version: int) -> None:
    with lifecycle.writing(version, metadata={"version": version}) as folder:
        (folder / "encoder.onnx").write_bytes(b"onnx")


def test_versions_number_up_per_scope_and_skip_folders_on_disk(
    models: Lifecycle[ModelVersionRow],
) -> None:
    assert models.allocate("churn") == 1
    assert models.allocate("churn") == 2
    assert models.allocate("buyers") == 1  # numbered per instance
    models.artifacts.path("models/buyers/v9").mkdir(parents=True)  # a deleted instance's bundle
    assert models.allocate("buyers") == 10
    with pytest.raises(FailedPrecondition, match=r"churn v\d is still running"):
        models.allocate("churn", exclusive=True)


def test_allocation_retries_when_a_concurrent_writer_takes_the_number(
    encoders: Lifecycle[EncoderVersionRow],
) -> None:
    raced = [False]

    def competing_writer(_s: Session) -> None:
        # Another process inserts the same next number between our read and our insert.
        if not raced[0]:
            raced[0] = True
            with encoders.db.session() as other:
                other.add(
                    EncoderVersionRow(
                        version=1, status=Status.RUNNING.value, created_at=utcnow(), **_fields()
                    )
                )

    assert encoders.allocate(check=competing_writer, **_fields()) == 2
    assert raced[0]


def test_ready_only_with_a_verified_bundle_then_latest(
    encoders: Lifecycle[EncoderVersionRow],
) -> None:
    version = encoders.allocate(**_fields())
    with pytest.raises(FailedPrecondition, match="no manifest"):
        encoders.mark_ready(version)
    assert _encoder(version, encoders).status == Status.RUNNING.value
    assert encoders.latest_ready() is None
    _publish(encoders, version)
    row = encoders.mark_ready(version, kind="pca")
    assert row.status == Status.READY.value and row.artifact_path == "encoders/v1"
    assert row.kind == "pca" and encoders.latest_ready() == 1
    with pytest.raises(FailedPrecondition, match="is READY, not RUNNING"):
        encoders.mark_ready(version)
    encoders.end(version, Status.FAILED, "late failure")  # a READY version is kept
    assert _encoder(version, encoders).status == Status.READY.value


def test_guard_ends_a_failed_or_cancelled_job_and_removes_its_files(
    encoders: Lifecycle[EncoderVersionRow],
) -> None:
    failed = encoders.allocate(**_fields())
    with pytest.raises(InvalidArgument), encoders.guard(failed):
        raise InvalidArgument("dimensions", "too many")
    row = _encoder(failed, encoders)
    assert (row.status, row.error) == (Status.FAILED.value, "dimensions: too many")

    cancelled = encoders.allocate(**_fields())
    with pytest.raises(Cancelled), encoders.guard(cancelled):
        _publish(encoders, cancelled)  # published, but the job was cancelled before READY
        raise Cancelled("the job was cancelled by its caller")
    row = _encoder(cancelled, encoders)
    assert row.status == Status.CANCELLED.value and row.artifact_path is None
    assert not encoders.artifacts.path(f"encoders/v{cancelled}").exists()

    unexpected = encoders.allocate(**_fields())
    with pytest.raises(ZeroDivisionError), encoders.guard(unexpected):
        raise ZeroDivisionError("/srv/secret/path")
    row = _encoder(unexpected, encoders)
    assert row.status == Status.FAILED.value
    assert "secret" not in (row.error or "") and "ZeroDivision" not in (row.error or "")


def test_recover_fails_interrupted_work_and_sweeps_only_its_own_temporary_files(
    encoders: Lifecycle[EncoderVersionRow], tmp_path: Path
) -> None:
    ready = encoders.allocate(**_fields())
    _publish(encoders, ready)
    encoders.mark_ready(ready)
    interrupted = encoders.allocate(**_fields())
    _publish(encoders, interrupted)  # renamed into place, then the process died
    root = encoders.artifacts.path("encoders")
    (root / ".tmp-trainer-0123-v9").mkdir()
    (root / ".tmp-segmenter-4567-v9").mkdir()  # someone else's write in flight

    assert encoders.recover() == [(None, interrupted)]
    row = _encoder(interrupted, encoders)
    assert (row.status, row.error, row.artifact_path) == (Status.FAILED.value, INTERRUPTED, None)
    assert not (root / f"v{interrupted}").exists()
    assert not (root / ".tmp-trainer-0123-v9").exists()
    assert (root / ".tmp-segmenter-4567-v9").is_dir()
    assert _encoder(ready, encoders).status == Status.READY.value
    assert (root / f"v{ready}").is_dir()
    assert encoders.recover() == []
    with pytest.raises(NotFound):
        encoders.end(99, Status.FAILED, "no such version")


def test_status_words_and_their_proto_form() -> None:
    for status in Status:
        assert status_from_pb(status_to_pb(status)) is status
    assert status_to_pb("READY") == common_pb2.JOB_STATUS_READY
    assert status_to_pb(Status.CANCELLED) == common_pb2.JOB_STATUS_CANCELLED
    with pytest.raises(InvalidArgument):
        status_from_pb(common_pb2.JOB_STATUS_UNSPECIFIED)
    assert ending_of(Cancelled("stop")) == (Status.CANCELLED, "stop")
    assert ending_of(FailedPrecondition("too few"))[0] is Status.FAILED
    assert ending_of(KeyboardInterrupt()) == (Status.FAILED, INTERRUPTED)
    # Anything but a domain error is reported without its class or text (paths, internals).
    status, reason = ending_of(FileNotFoundError(2, "No such file", "/srv/data/models/x"))
    assert status is Status.FAILED and reason == "unexpected error (see the service log)"
    assert "FileNotFoundError" not in reason and "/srv" not in reason
