"""The index journal: append order, paging, and compaction that replays to the same state."""

from __future__ import annotations

import random

import polars as pl
import pytest

from foresight.storage import Database
from services.segmenter.journal import Journal, JournalEntry

pytestmark = pytest.mark.unit


def events(*pids: str, tag: str = "") -> pl.DataFrame:
    return pl.DataFrame({"profile_id": list(pids), "page_name": [f"{p}{tag}" for p in pids]})


def replay(entries: list[JournalEntry]) -> dict[str, str]:
    """What an index would hold: profile → where its embedding came from."""
    state: dict[str, str] = {}
    for e in entries:
        if e.events is not None:
            for pid, page in e.events.select("profile_id", "page_name").iter_rows():
                state[pid] = page
        for pid in e.stored:
            state[pid] = "stored"
        for pid in e.removed:
            state.pop(pid, None)
    return state


def test_entries_come_back_in_order_per_dataset(sqlite_db: Database) -> None:
    journal = Journal(sqlite_db)
    a = journal.append("shop", stored=["p1"], events=events("p2"))
    b = journal.append("other", removed=["p9"])
    c = journal.append("shop", removed=["p1"])
    assert a < b < c and journal.last_seq("shop") == c
    shop = list(journal.entries("shop"))
    assert [e.seq for e in shop] == [a, c]
    assert shop[0].stored == ["p1"] and shop[0].events is not None
    assert shop[0].events["profile_id"].to_list() == ["p2"]
    assert shop[1].removed == ["p1"] and shop[1].events is None
    assert [e.seq for e in journal.entries("shop", after=a)] == [c]
    assert journal.compact("shop", a) == 0  # one entry: nothing to fold


def test_compaction_replays_to_the_same_state(sqlite_db: Database) -> None:
    journal = Journal(sqlite_db)
    rng = random.Random(3)
    ids = [f"p{i}" for i in range(12)]
    for step in range(60):
        kind = rng.choice(["events", "stored", "removed"])
        pick = rng.sample(ids, rng.randint(1, 4))
        if kind == "events":
            journal.append("shop", events=events(*pick, tag=f"@{step}"))
        elif kind == "stored":
            journal.append("shop", stored=pick)
        else:
            journal.append("shop", removed=pick)
    journal.append("other", stored=["x"])
    before = list(journal.entries("shop"))
    upto = before[40].seq
    folded = journal.compact("shop", upto)
    after = list(journal.entries("shop"))
    assert folded == 40 and len(after) == len(before) - 40
    assert after[0].seq == upto and [e.seq for e in after[1:]] == [e.seq for e in before[41:]]
    assert replay(after) == replay(before)
    assert replay(after[:1]) == replay(before[:41])
    assert [e.stored for e in journal.entries("other")] == [["x"]]
    # New entries still come after the folded one.
    assert journal.append("shop", removed=["p0"]) > before[-1].seq
