"""Score lookups from the in-memory snapshot: no I/O, a few microseconds of work."""

from __future__ import annotations

from collections.abc import Sequence

from foresight.errors import InvalidArgument, NotFound
from services.scorer.records import ProfileScores
from services.scorer.snapshot import RunScores, ScoreRow, SnapshotStore

MAX_BATCH_IDS = 1000


def _selected(snapshots: SnapshotStore, instances: Sequence[str]) -> list[RunScores]:
    current = snapshots.current()
    if not instances:
        return list(current.values())
    chosen: list[RunScores] = []
    for name in instances:
        scores = current.get(name)
        if scores is None:
            raise NotFound(f"instance '{name}' has no scores (unknown instance or never scored)")
        if scores not in chosen:
            chosen.append(scores)
    return chosen


def _scores_of(profile_id: str, runs: list[RunScores]) -> ProfileScores:
    found = []
    for scores in runs:
        row = scores.find(profile_id)
        if row >= 0:
            found.append(ScoreRow(scores, row))
    return ProfileScores(profile_id, found)


def get_profile_scores(
    snapshots: SnapshotStore, profile_id: str, instances: Sequence[str]
) -> ProfileScores:
    """Latest score of one profile in every (or each named) instance."""
    if not profile_id:
        raise InvalidArgument("profile_id", "must not be empty")
    result = _scores_of(profile_id, _selected(snapshots, instances))
    if not result.scores:
        raise NotFound(f"profile '{profile_id}' has no scores")
    return result


def batch_get_profile_scores(
    snapshots: SnapshotStore, profile_ids: Sequence[str], instances: Sequence[str]
) -> tuple[list[ProfileScores], list[str]]:
    """Scores of up to 1,000 profiles, in request order, and the ids with none."""
    if not profile_ids:
        raise InvalidArgument("profile_ids", "give at least one profile id")
    if len(profile_ids) > MAX_BATCH_IDS:
        raise InvalidArgument(
            "profile_ids", f"at most {MAX_BATCH_IDS:,} ids per call, got {len(profile_ids):,}"
        )
    for i, pid in enumerate(profile_ids):
        if not pid:
            raise InvalidArgument(f"profile_ids[{i}]", "must not be empty")
    runs = _selected(snapshots, instances)
    found: list[ProfileScores] = []
    missing: list[str] = []
    for pid in profile_ids:
        result = _scores_of(pid, runs)
        if result.scores:
            found.append(result)
        else:
            missing.append(pid)
    return found, missing
