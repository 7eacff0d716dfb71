"""Start-up recovery: each service fails its own interrupted work and removes only its own leftovers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import INTERRUPTED, Status
from foresight.storage.models import ProfileScoreRow, ScoringRunRow
from services.scorer.health import HEALTH_FOLDER
from services.scorer.recovery import SCORES_FOLDER, recover_interrupted

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def _run(run_id: str, status: Status, scores_path: str | None = None) -> ScoringRunRow:
    return ScoringRunRow(
        run_id=run_id,
        instance_name="churn",
        model_version=1,
        status=status.value,
        as_of=AS_OF,
        started_at=AS_OF,
        scores_path=scores_path,
    )


def test_scorer_start_fails_interrupted_runs_and_removes_orphan_score_files(
    database: Database, tmp_path: Path
) -> None:
    scores = tmp_path / "artifacts" / SCORES_FOLDER
    (scores / "churn").mkdir(parents=True)
    kept = scores / "churn" / "ready.parquet"
    for name in ("ready.parquet", "ready.arrow", "killed.parquet", "failed.parquet"):
        (scores / "churn" / name).write_bytes(b"scores")
    (scores / "churn" / ".tmp-0123-killed.parquet").write_bytes(b"half")
    # The sidecar format of earlier versions: the run falls back to its Parquet copy.
    (scores / "churn" / "ready.npz").write_bytes(b"old sidecar")
    # Model health summaries: kept for READY runs, pruned ones included.
    health = tmp_path / "artifacts" / HEALTH_FOLDER / "churn"
    health.mkdir(parents=True)
    for name in ("ready.json", "pruned.json", "killed.json", "failed.json", ".tmp-0123-ready.json"):
        (health / name).write_bytes(b"{}")
    with database.session() as s:
        s.add(_run("ready", Status.READY, f"{SCORES_FOLDER}/churn/ready.parquet"))
        s.add(_run("pruned", Status.READY))
        s.add(_run("killed", Status.RUNNING))
        s.add(_run("failed", Status.FAILED))
    with database.session() as s:
        # A killed run's partial rows; a pruned run's rows the background delete did not
        # reach (the scorer was killed); the served run's rows.
        for run_id in ("killed", "pruned", "ready"):
            s.add(
                ProfileScoreRow(
                    run_id=run_id,
                    profile_id="p1",
                    probability=0.5,
                    score=50,
                    percentile=50,
                    bucket="MEDIUM",
                    factors="[]",
                )
            )

    interrupted, removed = recover_interrupted(database, ArtifactStore(tmp_path / "artifacts"))

    # The failed run's copy, the temp file and the old sidecar; its summary and the temp
    # summary (the interrupted run's summary goes with the run itself).
    assert interrupted == ["killed"] and removed == 5
    assert sorted(p.name for p in (scores / "churn").iterdir()) == ["ready.arrow", "ready.parquet"]
    assert sorted(p.name for p in health.iterdir()) == ["pruned.json", "ready.json"]
    assert kept.read_bytes() == b"scores"
    with database.session() as s:
        runs = {r.run_id: (r.status, r.error) for r in s.scalars(select(ScoringRunRow))}
        left = set(s.scalars(select(ProfileScoreRow.run_id)))
        assert left == {"ready"}  # the killed run's and the pruned run's rows are gone
    assert runs == {
        "ready": (Status.READY.value, None),
        "pruned": (Status.READY.value, None),
        "killed": (Status.FAILED.value, INTERRUPTED),
        "failed": (Status.FAILED.value, None),
    }
    assert recover_interrupted(database, ArtifactStore(tmp_path / "artifacts")) == ([], 0)
