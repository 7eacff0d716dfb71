"""Acknowledged UpsertProfiles / RemoveProfiles survive kill -9 and SIGTERM.

An OK from the segmenter means the write is in the journal: killed right
after the answer, or in the middle of a stream of writes, the restarted
segmenter has every acknowledged upsert and none of the acknowledged
removals. SIGTERM drains, snapshots and compacts the journal, and exits 0.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import grpc
import polars as pl
import pytest
from sqlalchemy import func, select

from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.convert import event_from_row
from foresight.storage.models import IndexJournalRow, IndexVersionRow

pytestmark = pytest.mark.faults


def journey(world: Any, source: str, new_id: str) -> segmenter_pb2.ProfileJourney:
    """A new profile whose events copy a stored profile's."""
    rows = (
        pl.read_parquet(world.prepared.imports / "gen" / "events.parquet")
        .filter(pl.col("profile_id") == source)
        .with_columns(pl.lit(new_id).alias("profile_id"))
        .drop("event_id")
    )
    return segmenter_pb2.ProfileJourney(
        profile_id=new_id, events=[event_from_row(r) for r in rows.iter_rows(named=True)]
    )


def in_index(world: Any, profile_id: str) -> bool:
    """Whether the segmenter knows the profile (FindSimilar answers NOT_FOUND otherwise)."""
    try:
        world.client.segmenter.FindSimilar(
            segmenter_pb2.FindSimilarRequest(profile_id=profile_id, k=1)
        )
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


def write_some(world: Any) -> tuple[list[str], list[str]]:
    """Upsert two new profiles and one stored one, remove two: (present, removed)."""
    ids = world.prepared.profile_ids
    seg = world.client.segmenter
    answer = seg.UpsertProfiles(
        segmenter_pb2.UpsertProfilesRequest(
            profiles=[
                journey(world, ids[0], "ack-new-1"),
                journey(world, ids[1], "ack-new-2"),
                segmenter_pb2.ProfileJourney(profile_id=ids[2]),  # re-embed from stored events
            ]
        )
    )
    assert answer.upserted == 3
    removed = seg.RemoveProfiles(segmenter_pb2.RemoveProfilesRequest(profile_ids=ids[3:5]))
    assert removed.removed == 2
    return ["ack-new-1", "ack-new-2", ids[2]], list(ids[3:5])


def check_writes(world: Any, present: list[str], removed: list[str]) -> None:
    lost = [p for p in present if not in_index(world, p)]
    back = [p for p in removed if in_index(world, p)]
    world.lost(len(lost) + len(back))
    assert not lost, f"acknowledged upserts lost: {lost}"
    assert not back, f"acknowledged removals undone: {back}"


def test_kill9_right_after_acknowledged_writes_keeps_them(world: Any) -> None:
    world.start("segmenter")
    count = world.client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest()).count
    present, removed = write_some(world)
    assert world.kill("segmenter", "after UpsertProfiles/RemoveProfiles OK") == -signal.SIGKILL
    world.restart("segmenter")
    check_writes(world, present, removed)
    info = world.client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    assert info.count == count + 2 - 2
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_kill9_during_a_stream_of_writes_keeps_every_acknowledged_one(world: Any) -> None:
    world.start("segmenter")
    ids = world.prepared.profile_ids
    acknowledged: list[tuple[str, str]] = []
    stop = threading.Event()

    def writer() -> None:
        seg = world.client.segmenter
        i = 0
        while not stop.is_set():
            try:
                if i % 3 == 2:
                    seg.RemoveProfiles(
                        segmenter_pb2.RemoveProfilesRequest(profile_ids=[ids[20 + i]])
                    )
                    acknowledged.append(("removed", ids[20 + i]))
                else:
                    seg.UpsertProfiles(
                        segmenter_pb2.UpsertProfilesRequest(
                            profiles=[journey(world, ids[i], f"stream-{i}")]
                        )
                    )
                    acknowledged.append(("upserted", f"stream-{i}"))
            except grpc.RpcError:
                return  # the segmenter died under this call: not acknowledged
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(acknowledged) < 12:
            assert thread.is_alive(), "the writer stopped before the kill"
            stop.wait(0.05)
        world.kill("segmenter", "during a stream of UpsertProfiles/RemoveProfiles")
    finally:
        stop.set()
        thread.join(timeout=30)
    world.restart("segmenter")
    check_writes(
        world,
        [p for kind, p in acknowledged if kind == "upserted"],
        [p for kind, p in acknowledged if kind == "removed"],
    )
    world.assert_no_orphan_processes()
    world.assert_consistent()


def test_sigterm_after_writes_snapshots_compacts_the_journal_and_exits_0(world: Any) -> None:
    world.start("segmenter")
    before = world.client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    present, removed = write_some(world)
    assert world.kill("segmenter", "sigterm after writes", signal.SIGTERM) == 0
    db = world.database()
    try:
        with db.session() as s:
            newest = s.scalars(
                select(IndexVersionRow)
                .where(IndexVersionRow.status == "READY")
                .order_by(IndexVersionRow.version.desc())
            ).first()
            entries = s.scalar(select(func.count()).select_from(IndexJournalRow))
            last = s.scalar(select(func.max(IndexJournalRow.seq)))
    finally:
        db.dispose()
    assert newest is not None and newest.version > before.version
    assert newest.params["journal_seq"] == last
    assert entries == 1  # the writes folded into one entry, kept for rebuilds
    world.restart("segmenter")
    info = world.client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
    assert info.version == newest.version
    check_writes(world, present, removed)
    world.assert_consistent()
