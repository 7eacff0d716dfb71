"""The write-ahead journal of the served index: every acknowledged upsert and removal.

An UpsertProfiles or RemoveProfiles call commits its journal row *before*
the index changes and before the caller gets OK, so the write survives
kill -9. The journal is a SQL table (`index_journal`, migration 0003) rather
than an append log next to the index: a commit is durable on both backends
without a file format of our own (torn tails, checksums, fsync of the
folder), it is shared by every machine that sees the registry, and
compaction is one transaction.

Entries are logical (request events and profile ids, not embeddings), so a
replay embeds them with whatever encoder the index it lands on uses. What
is replayed where:

- at start, the entries after the snapshot's `journal_seq`;
- after any build from the event store (BuildIndex, the rebuild of a
  corrupt index), every entry of the dataset: the event store does not hold
  upserted request events, and removed profiles must stay removed.

A snapshot compacts the entries it covers into one entry holding each
touched profile's last write, so the journal stays as large as the set of
profiles written through the API, not as long as their history.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import polars as pl
from sqlalchemy import delete, func, select

from foresight.storage.db import Database
from foresight.storage.models import IndexJournalRow, utcnow

__all__ = ["Journal", "JournalEntry"]

_PAGE = 200  # rows read at a time on replay (an entry may hold 10,000 profiles' events)


@dataclass(frozen=True)
class JournalEntry:
    """One acknowledged write (or a compacted run of them)."""

    seq: int
    dataset: str
    removed: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    """Profiles re-embedded from their stored events."""
    events: pl.DataFrame | None = None
    """Validated request events of the profiles upserted from the request."""


def _to_parquet(frame: pl.DataFrame | None) -> bytes | None:
    if frame is None or frame.is_empty():
        return None
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _entry(row: IndexJournalRow) -> JournalEntry:
    events = pl.read_parquet(io.BytesIO(row.events)) if row.events else None
    return JournalEntry(row.seq, row.dataset, list(row.removed), list(row.stored), events)


class Journal:
    """Append, read back and compact journal entries (the one writer of `index_journal`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        dataset: str,
        removed: Sequence[str] = (),
        stored: Sequence[str] = (),
        events: pl.DataFrame | None = None,
    ) -> int:
        """Commit one entry; returns its sequence number (the order replays follow)."""
        with self.db.session() as s:
            row = IndexJournalRow(
                dataset=dataset,
                removed=list(removed),
                stored=list(stored),
                events=_to_parquet(events),
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            return int(row.seq)

    def entries(self, dataset: str, after: int = 0) -> Iterator[JournalEntry]:
        """The dataset's entries with seq > `after`, oldest first."""
        last = after
        while True:
            with self.db.session() as s:
                rows = list(
                    s.scalars(
                        select(IndexJournalRow)
                        .where(IndexJournalRow.dataset == dataset, IndexJournalRow.seq > last)
                        .order_by(IndexJournalRow.seq)
                        .limit(_PAGE)
                    )
                )
            if not rows:
                return
            for row in rows:
                yield _entry(row)
            last = rows[-1].seq

    def last_seq(self, dataset: str) -> int:
        """The newest entry's seq (0 when there is none)."""
        with self.db.session() as s:
            seq = s.scalar(
                select(func.max(IndexJournalRow.seq)).where(IndexJournalRow.dataset == dataset)
            )
        return int(seq or 0)

    def compact(self, dataset: str, upto: int) -> int:
        """Fold the entries with seq ≤ `upto` into one (seq `upto`); returns entries removed.

        The folded entry keeps each profile's last write only, which replays
        to the same index as the whole run did.
        """
        covered = list(self._covered(dataset, upto))
        if len(covered) <= 1:
            return 0
        folded = _fold(covered, upto)
        with self.db.session() as s:
            s.execute(
                delete(IndexJournalRow).where(
                    IndexJournalRow.dataset == dataset, IndexJournalRow.seq <= upto
                )
            )
            s.add(
                IndexJournalRow(
                    seq=folded.seq,
                    dataset=dataset,
                    removed=folded.removed,
                    stored=folded.stored,
                    events=_to_parquet(folded.events),
                    created_at=utcnow(),
                )
            )
        return len(covered) - 1

    def _covered(self, dataset: str, upto: int) -> Iterator[JournalEntry]:
        for entry in self.entries(dataset):
            if entry.seq > upto:
                return
            yield entry


Write = Literal["removed", "stored", "events"]


def _fold(entries: Sequence[JournalEntry], seq: int) -> JournalEntry:
    """One entry with each profile's last write in `entries` (oldest first)."""
    last: dict[str, tuple[Write, int]] = {}
    for i, entry in enumerate(entries):
        if entry.events is not None:
            for pid in entry.events["profile_id"].unique().to_list():
                last[str(pid)] = ("events", i)
        for pid in entry.stored:
            last[pid] = ("stored", i)
        for pid in entry.removed:
            last[pid] = ("removed", i)
    frames = []
    for i, entry in enumerate(entries):
        mine = [pid for pid, (kind, at) in last.items() if kind == "events" and at == i]
        if mine and entry.events is not None:
            frames.append(entry.events.filter(pl.col("profile_id").is_in(mine)))
    return JournalEntry(
        seq=seq,
        dataset=entries[0].dataset,
        removed=[pid for pid, (kind, _) in last.items() if kind == "removed"],
        stored=[pid for pid, (kind, _) in last.items() if kind == "stored"],
        events=pl.concat(frames, how="diagonal_relaxed") if frames else None,
    )
