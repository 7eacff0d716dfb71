"""The scorer's start-up recovery and the one way a scoring run ends without scores.

Only the scorer writes scoring runs and the scores folder, so what it finds
RUNNING at start belongs to a dead scorer process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, select, update

from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import INTERRUPTED, Status
from foresight.storage.models import ProfileScoreRow, ScoringRunRow, utcnow
from services.scorer.health import HEALTH_FOLDER, summary_file
from services.scorer.snapshot import sidecar_of

SCORES_FOLDER = "scores"
"""Where score copies live, under the artifact root (only the scorer writes there)."""


def scores_path_of(instance: str, run_id: str) -> str:
    """Where a run's Parquet copy lives, relative to the artifact root (`scores_path`)."""
    return f"{SCORES_FOLDER}/{instance}/{run_id}.parquet"


def score_files(scores_path: str) -> tuple[str, str]:
    """A run's score files relative to the artifact root: (Parquet copy, sidecar)."""
    return scores_path, sidecar_of(Path(scores_path)).as_posix()


def end_runs(
    db: Database, artifacts: ArtifactStore, runs: dict[str, str], status: Status, reason: str
) -> None:
    """Set runs (id → instance) to `status` with the reason; drop their scores, rows and
    files (at the artifact mirror too)."""
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
        for relative in (
            *score_files(scores_path_of(instance, run_id)),
            summary_file(instance, run_id),
        ):
            artifacts.remove_file(relative)


_DELETE_BATCH = 10_000


def drop_pruned_rows(db: Database, pause: Callable[[], object] = lambda: None) -> int:
    """Delete the `profile_scores` rows of pruned runs (succeeded, no scores path any more).

    In transactions of 10,000 rows: a run's million rows in one DELETE would hold
    SQLite's write lock longer than other writers wait for it (busy_timeout).
    `pause` is called before each transaction (the scorer's waits while a run is
    in progress).
    """
    with db.session() as session:
        runs = list(
            session.scalars(
                select(ScoringRunRow.run_id).where(
                    ScoringRunRow.status == Status.READY.value,
                    ScoringRunRow.scores_path.is_(None),
                )
            )
        )
    deleted = 0
    for run_id in runs:
        while True:
            pause()
            with db.session() as session:
                keys = session.scalars(
                    select(ProfileScoreRow.profile_id)
                    .where(ProfileScoreRow.run_id == run_id)
                    .limit(_DELETE_BATCH)
                ).all()
                session.execute(
                    delete(ProfileScoreRow).where(
                        ProfileScoreRow.run_id == run_id, ProfileScoreRow.profile_id.in_(keys)
                    )
                )
            deleted += len(keys)
            if len(keys) < _DELETE_BATCH:
                break
    return deleted


def recover_interrupted(db: Database, artifacts: ArtifactStore) -> tuple[list[str], int]:
    """At scorer start: fail the runs a killed scorer left RUNNING, remove orphan score files.

    Only the scorer writes scoring runs and the scores folder, so every RUNNING
    run found before it serves belongs to a dead process: it becomes FAILED
    "interrupted" with its partial rows deleted. Files under the scores folder
    that no READY run points at (a failed run's copy, a temporary file of a
    killed write) are removed, and so are model health files of no READY run
    (summaries of pruned runs stay), and so are the rows of pruned runs. With an
    artifact mirror, the interrupted runs' copies there are removed too (local
    orphans are only this scorer's).
    Returns (interrupted run ids, orphan files removed).
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
    end_runs(db, artifacts, running, Status.FAILED, INTERRUPTED)
    drop_pruned_rows(db)  # a scorer killed while it deleted them
    keep = {artifacts.root / name for path in kept for name in score_files(path)}
    scores_root = artifacts.root / SCORES_FOLDER
    removed = 0
    if scores_root.is_dir():
        for f in scores_root.rglob("*"):
            if f.is_file() and f not in keep:
                f.unlink(missing_ok=True)
                removed += 1
    return list(running), removed + _sweep_summaries(db, artifacts.root / HEALTH_FOLDER)


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
