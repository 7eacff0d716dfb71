"""The segment tables' owner on both backends: create, read, page, and the name race."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from foresight.errors import AlreadyExists, ForesightError, InvalidArgument, NotFound
from foresight.storage.db import Database
from foresight.storage.segments import MEMBER_COLUMNS, SegmentSource, SegmentTables

pytestmark = pytest.mark.integration


def _scored(n: int) -> list[tuple[Any, ...]]:
    return [(f"p{i:03d}", 1.0 - i / 100, 100 - i, 100 - i, "HIGH") for i in range(n)]


def test_create_then_read_list_and_page(database: Database) -> None:
    tables = SegmentTables(database)
    created = tables.create(
        "top",
        SegmentSource.SCORE,
        [_scored(5), _scored(10)[5:]],
        columns=MEMBER_COLUMNS,
        size=10,
        filter={"min_percentile": 90},
        instance="churn",
        run_id="run-1",
        bucket_counts={"HIGH": 10},
    )
    tables.create("cluster-3", SegmentSource.CLUSTER, [[("c1",), ("c2",)]], size=2, filter={})
    assert tables.get("top") == created
    assert created.source is SegmentSource.SCORE and created.bucket_counts == {"HIGH": 10}
    assert [s.name for s in tables.list_segments()] == ["cluster-3", "top"]
    assert [s.name for s in tables.list_segments("churn")] == ["top"]
    first = tables.members(created.id, 4)
    rest = tables.members(created.id, 100, (first[-1].probability or 0.0, first[-1].profile_id))
    assert [m.profile_id for m in first + rest] == [f"p{i:03d}" for i in range(10)]
    assert first[0].score == 100 and first[0].bucket == "HIGH"
    cluster = tables.get("cluster-3")
    assert [m.probability for m in tables.members(cluster.id, 10)] == [None, None]
    assert sorted(tables.member_ids("cluster-3")) == ["c1", "c2"]


@pytest.mark.parametrize("name", ["", "Upper", "a b", "x" * 65, "../up"])
def test_a_bad_name_is_invalid_argument(database: Database, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        SegmentTables(database).create(name, SegmentSource.CLUSTER, [], size=0, filter={})
    assert info.value.field == "name"


def test_unknown_segments_are_not_found(database: Database) -> None:
    tables = SegmentTables(database)
    with pytest.raises(NotFound):
        tables.get("nope")
    with pytest.raises(NotFound):
        tables.member_ids("nope")


def test_two_writers_racing_for_one_name_get_one_segment(database: Database) -> None:
    """The unique constraint decides: one creator wins, the other gets AlreadyExists."""
    tables = SegmentTables(database)
    start = threading.Barrier(4)
    outcomes: list[str] = []

    def create(n: int) -> None:
        start.wait()
        try:
            tables.create("same", SegmentSource.CLUSTER, [[(f"w{n}",)]], size=1, filter={})
            outcomes.append("created")
        except AlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created", "exists", "exists", "exists"]
    assert len(tables.member_ids("same")) == 1


def test_a_failed_member_load_leaves_no_segment(database: Database) -> None:
    tables = SegmentTables(database)

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        yield [("a",), ("b",)]
        raise ForesightError("the source went away")

    with pytest.raises(ForesightError):
        tables.create("half", SegmentSource.CLUSTER, chunks(), size=3, filter={})
    with pytest.raises(NotFound):
        tables.get("half")
    # The name is free again.
    tables.create("half", SegmentSource.CLUSTER, [[("a",)]], size=1, filter={})
    assert tables.member_ids("half") == ["a"]
