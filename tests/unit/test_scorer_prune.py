"""Pruned runs' rows are deleted while no scoring run is in progress, or when the scorer closes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from foresight.storage import Database
from services.scorer import scoring
from services.scorer.scoring import ScoringEngine

pytestmark = pytest.mark.unit


def _engine(
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    between: Callable[[int], object] = lambda _transaction: None,
) -> tuple[ScoringEngine, list[set[str]]]:
    none = cast(Any, None)  # the deletes need no catalog, models, snapshots or artifacts
    engine = ScoringEngine(db, none, none, none, none, threads=1, top_k=5)
    deletes: list[set[str]] = []  # the runs in progress when each transaction started

    def three_transactions(_db: Database, pause: Callable[[], object]) -> None:
        for i in range(3):
            pause()
            deletes.append(set(engine._running))
            between(i)

    monkeypatch.setattr(scoring, "drop_pruned_rows", three_transactions)
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
    assert deletes == [set(), set(), set()]


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
    assert deletes == [{"churn"}] * 3


def test_a_run_that_starts_meanwhile_pauses_the_deletes(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def a_run_starts(transaction: int) -> None:
        if transaction == 0:  # purchase starts after the first transaction, for 0.3 s
            engine._claim("purchase")
            threading.Timer(0.3, engine._release, ["purchase"]).start()

    engine, deletes = _engine(sqlite_db, monkeypatch, a_run_starts)
    engine._housekeeping.submit(engine._drop_when_idle).result(timeout=30)
    assert deletes == [set(), set(), set()]  # none began while purchase was scoring
    engine.close()


def test_deletes_wait_for_runs_no_longer_than_their_patience(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "PRUNE_PATIENCE_S", 0.5)  # in all, not per transaction
    engine, deletes = _engine(sqlite_db, monkeypatch)
    engine._claim("purchase")  # scoring all day
    engine._housekeeping.submit(engine._drop_when_idle)
    time.sleep(1.2)  # all three after 0.5 s; waiting 0.5 s before each would take 1.5 s
    assert deletes == [{"purchase"}] * 3
    engine._release("purchase")
    engine.close()
