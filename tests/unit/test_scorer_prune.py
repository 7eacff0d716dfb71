"""Pruned runs' rows are deleted once no scoring run is in progress, or when the scorer closes."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from foresight.storage import Database
from services.scorer import scoring
from services.scorer.scoring import ScoringEngine

pytestmark = pytest.mark.unit


def _engine(db: Database, monkeypatch: pytest.MonkeyPatch) -> tuple[ScoringEngine, list[set[str]]]:
    none = cast(Any, None)  # the deletes need no catalog, models, snapshots or artifacts
    engine = ScoringEngine(db, none, none, none, none, threads=1, top_k=5)
    deletes: list[set[str]] = []  # the runs in progress when each delete started
    monkeypatch.setattr(
        scoring, "drop_pruned_rows", lambda _db: deletes.append(set(engine._running))
    )
    return engine, deletes


def test_deletes_wait_for_every_run_in_progress(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, deletes = _engine(sqlite_db, monkeypatch)
    engine._claim("churn")
    engine._claim("purchase")  # another instance's run, started before churn's ended
    engine._housekeeping.submit(engine._drop_when_idle)  # what churn's prune submits
    engine._release("churn")
    time.sleep(0.3)
    assert deletes == []  # purchase is still scoring
    engine._release("purchase")
    engine.close()  # waits for the delete
    assert deletes == [set()]


def test_closing_the_scorer_does_not_wait_for_a_run(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, deletes = _engine(sqlite_db, monkeypatch)
    monkeypatch.setattr(scoring, "PRUNE_PATIENCE_S", 3600.0)
    engine._claim("churn")
    engine._housekeeping.submit(engine._drop_when_idle)
    closing = threading.Thread(target=engine.close)
    closing.start()
    closing.join(timeout=30)
    assert not closing.is_alive()  # not an hour: the deletes run now
    assert deletes == [{"churn"}]
