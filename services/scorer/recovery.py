"""The scorer's start-up recovery and the one way a scoring run ends without scores.

Only the scorer writes scoring runs and the scores folder, so what it finds
RUNNING at start belongs to a dead scorer process.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select, update

from foresight.storage.db import Database
from foresight.storage.lifecycle import INTERRUPTED, Status
from foresight.storage.models import ProfileScoreRow, ScoringRunRow, utcnow
from services.scorer.health import HEALTH_FOLDER, summary_path
from services.scorer.snapshot import sidecar_of

SCORES_FOLDER = "scores"
"""Where score copies live, under the artifact root (only the scorer writes there)."""


def end_runs(
    db: Database, scores_root: Path, runs: dict[str, str], status: Status, reason: str
) -> None:
    """Set runs (id → instance) to `status` with the reason; drop their scores, rows and files."""
    if not runs:
        return
    with db.session() as session:
        session.execute(delete(ProfileScoreRow).where(ProfileScoreRow.run_id.in_(runs)))
        session.execute(
            update(ScoringRunRow)
            .where(ScoringRunRow.run_id.in_(runs))
            .values(
                status=status.value, finished_at=utcnow(), error=reason[:4000], scores_path=None
            )
        )
    for run_id, instance in runs.items():
        path = scores_root / instance / f"{run_id}.parquet"
        path.unlink(missing_ok=True)
        sidecar_of(path).unlink(missing_ok=True)
        summary_path(scores_root.parent / HEALTH_FOLDER, instance, run_id).unlink(missing_ok=True)


def recover_interrupted(db: Database, scores_root: Path) -> tuple[list[str], int]:
    """At scorer start: fail the runs a killed scorer left RUNNING, remove orphan score files.

    Only the scorer writes scoring runs and the scores folder, so every RUNNING
    run found before it serves belongs to a dead process: it becomes FAILED
    "interrupted" with its partial rows deleted. Files under the scores folder
    that no READY run points at (a failed run's copy, a temporary file of a
    killed write) are removed, and so are model health files of no READY run
    (summaries of pruned runs stay). Returns (interrupted run ids, orphan files removed).
    """
    with db.session() as session:
        running: dict[str, str] = {
            run_id: instance
            for run_id, instance in session.execute(
                select(ScoringRunRow.run_id, ScoringRunRow.instance_name).where(
                    ScoringRunRow.status == Status.RUNNING.value
                )
            )
        }
        kept = {
            str(path)
            for path in session.scalars(
                select(ScoringRunRow.scores_path).where(
                    ScoringRunRow.status == Status.READY.value,
                    ScoringRunRow.scores_path.is_not(None),
                )
            )
        }
    end_runs(db, scores_root, running, Status.FAILED, INTERRUPTED)
    keep = {scores_root.parent / p for p in kept} | {
        sidecar_of(scores_root.parent / p) for p in kept
    }
    removed = 0
    if scores_root.is_dir():
        for f in scores_root.rglob("*"):
            if f.is_file() and f not in keep:
                f.unlink(missing_ok=True)
                removed += 1
    return list(running), removed + _sweep_summaries(db, scores_root.parent / HEALTH_FOLDER)


def _sweep_summaries(db: Database, health_root: Path) -> int:
    """Remove model health files of no succeeded run (a killed write's temporary file)."""
    if not health_root.is_dir():
        return 0
    with db.session() as session:
        ready = set(
            session.scalars(
                select(ScoringRunRow.run_id).where(ScoringRunRow.status == Status.READY.value)
            )
        )
    removed = 0
    for f in health_root.rglob("*"):
        if f.is_file() and f.stem not in ready:
            f.unlink(missing_ok=True)
            removed += 1
    return removed
