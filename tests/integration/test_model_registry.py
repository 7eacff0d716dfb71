"""Model registry: version lifecycle, current version, recovery after a kill -9 mid-publish."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from foresight.errors import FailedPrecondition, NotFound
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import InstanceRow
from services.trainer.registry import INTERRUPTED, OWNER, ModelRegistry, bundle_path

pytestmark = pytest.mark.integration

CUTOFF = datetime(2024, 12, 2, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'foresight.db'}")
    database.migrate()
    with database.session() as s:
        s.add(InstanceRow(name="churn", dataset="shop", config={"name": "churn"}))
    yield database
    database.dispose()


@pytest.fixture
def registry(db: Database, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(db, ArtifactStore(tmp_path / "artifacts"))


def _publish(registry: ModelRegistry, version: int, auc: float = 0.8) -> None:
    relative = bundle_path("churn", version)
    with registry.artifacts.publish(relative, owner=OWNER) as folder:
        (folder / "model.onnx").write_bytes(b"onnx")
        (folder / "evaluation.json").write_text(f'{{"auc": {auc}, "version": {version}}}')
    registry.mark_ready(
        "churn",
        version,
        auc=auc,
        feature_count=12,
        validation_cutoff=CUTOFF,
    )


def test_versions_number_up_and_the_latest_ready_is_current(registry: ModelRegistry) -> None:
    v1 = registry.create_training("churn")
    assert v1 == 1
    row = registry.get("churn", 1)
    assert row.status is Status.RUNNING and not row.current
    with pytest.raises(FailedPrecondition, match="churn v1 is still running"):
        registry.create_training("churn")
    _publish(registry, 1, auc=0.71)
    v2 = registry.create_training("churn")
    _publish(registry, v2, auc=0.74)
    current = registry.get("churn")
    assert (current.version, current.current, current.auc) == (2, True, 0.74)
    assert current.validation_cutoff == CUTOFF and current.feature_count == 12
    assert current.finished_at is not None and current.created_at <= current.finished_at
    assert [(v.version, v.current) for v in registry.list("churn")] == [(2, True), (1, False)]
    evaluation = registry.read_evaluation("churn")
    assert (evaluation.auc, evaluation.version) == (0.74, 2)
    assert registry.read_evaluation("churn", 1).auc == 0.71
    registry.set_current("churn", 1)
    assert registry.get("churn").version == 1


def test_not_found_and_failed_versions(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound):
        registry.create_training("nope")
    with pytest.raises(NotFound, match="no trained model"):
        registry.get("churn")
    with pytest.raises(NotFound):
        registry.get("churn", 4)
    with pytest.raises(NotFound):
        registry.list("nope")
    version = registry.create_training("churn")
    failed = registry.mark_failed("churn", version, "boom")
    assert failed.status is Status.FAILED and failed.error == "boom"
    with pytest.raises(FailedPrecondition, match="only READY versions have an evaluation"):
        registry.read_evaluation("churn", version)
    with pytest.raises(FailedPrecondition, match="only READY versions can be current"):
        registry.set_current("churn", version)
    assert registry.create_training("churn") == version + 1  # a failed job does not block


def test_never_ready_without_a_verified_bundle(registry: ModelRegistry) -> None:
    version = registry.create_training("churn")
    with pytest.raises(FailedPrecondition, match="no manifest"):
        registry.mark_ready(
            "churn",
            version,
            auc=0.9,
            feature_count=3,
            validation_cutoff=CUTOFF,
        )
    assert registry.get("churn", version).status is Status.RUNNING
    with pytest.raises(NotFound):
        registry.get("churn")


def test_version_numbers_skip_bundles_left_on_disk(registry: ModelRegistry) -> None:
    # A deleted and re-created instance keeps its old bundles; versions never collide.
    registry.artifacts.path("models/churn/v7").mkdir(parents=True)
    assert registry.create_training("churn") == 8


def test_recover_interrupted_fails_training_rows_and_dangling_ready_rows(
    registry: ModelRegistry,
) -> None:
    _publish(registry, registry.create_training("churn"))
    stale = registry.create_training("churn")
    # The killed job had already renamed its bundle into place (row still TRAINING).
    with registry.artifacts.publish(bundle_path("churn", stale), owner=OWNER) as folder:
        (folder / "model.onnx").write_bytes(b"x")
    leftover = registry.artifacts.path("models/churn/.tmp-trainer-dead-v9")
    leftover.mkdir()
    # Another service's write in flight under the same root is not the trainer's to sweep.
    in_flight = registry.artifacts.path("models/.tmp-scorer-123-x")
    in_flight.mkdir()
    assert registry.recover_interrupted() == [("churn", stale)]
    row = registry.get("churn", stale)
    assert row.status is Status.FAILED and row.error == INTERRUPTED
    assert row.artifact_path is None and row.finished_at is not None
    assert not registry.artifacts.path(bundle_path("churn", stale)).exists()
    assert not leftover.exists()
    assert in_flight.is_dir()
    assert registry.get("churn").version == 1  # the good version stays current

    # A READY bundle that vanished is failed and no longer current.
    shutil.rmtree(registry.artifacts.path(bundle_path("churn", 1)))
    registry.recover_interrupted()
    gone = registry.get("churn", 1)
    assert gone.status is Status.FAILED and "missing" in (gone.error or "")
    with pytest.raises(NotFound):
        registry.get("churn")


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from foresight.storage.artifacts import ArtifactStore
    from foresight.storage.db import Database
    from services.trainer.registry import ModelRegistry, bundle_path

    db_url, root, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    registry = ModelRegistry(Database(db_url), ArtifactStore(root))
    version = registry.create_training("churn")
    with registry.artifacts.publish(bundle_path("churn", version), owner="trainer") as folder:
        (folder / "model.onnx").write_bytes(b"half a model")
        marker.write_text(str(version))
        time.sleep(60)  # killed here, mid-publish
    """
)


def test_kill_9_mid_publish_leaves_no_ready_row_and_no_visible_bundle(
    db: Database, registry: ModelRegistry, tmp_path: Path
) -> None:
    marker = tmp_path / "inside-publish"
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, db.url, str(registry.artifacts.root), str(marker)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):  # written, not just created
            assert process.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never reached publish"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    version = int(marker.read_text())
    assert not registry.artifacts.path(bundle_path("churn", version)).exists()
    temporary = list(registry.artifacts.path("models/churn").glob(".tmp-*"))
    assert len(temporary) == 1  # the half-written folder is hidden, never the bundle
    row = registry.get("churn", version)
    assert row.status is Status.RUNNING

    # Trainer restart.
    assert registry.recover_interrupted() == [("churn", version)]
    row = registry.get("churn", version)
    assert row.status is Status.FAILED and row.error == INTERRUPTED
    assert not any(registry.artifacts.path("models/churn").iterdir())
    with pytest.raises(NotFound):
        registry.get("churn")
