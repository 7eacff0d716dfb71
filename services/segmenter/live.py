"""The index the segmenter serves: loaded at start, journaled writes, builds swapped in whole.

`LiveIndex` owns the served `JourneyIndex` and everything that changes it:

- a write (upsert or removal) is committed to the journal first, then
  applied under the index's write lock, then acknowledged: an OK survives
  kill -9;
- at start the newest READY snapshot is loaded and the journal entries
  after it are replayed; a corrupt snapshot is rebuilt from the event store
  (or refused), never fatal;
- a build runs beside the served index (queries and writes go on), then
  every journal entry of the dataset is replayed onto it and it is swapped
  in whole, so upserted request events stay and removed profiles stay
  removed;
- a snapshot saves the index as a new version and compacts the journal up
  to the position it recorded (periodically, and on SIGTERM after the
  server drained its calls).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import polars as pl

from foresight.errors import FailedPrecondition, ForesightError, public_reason
from foresight.progress import Progress
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from services.segmenter.embedding import EmbeddedShard
from services.segmenter.index import JourneyIndex
from services.segmenter.index_build import build_index
from services.segmenter.index_store import IndexStore
from services.segmenter.index_types import IndexInfo, IndexParams
from services.segmenter.journal import Journal, JournalEntry

__all__ = ["Embedder", "LiveIndex"]

log = logging.getLogger("foresight.segmenter.index")

Embedder = Callable[[JourneyIndex, pl.DataFrame | None, Sequence[str]], EmbeddedShard]
"""(index, request events or None, ids to read from the event store) → embedded profiles."""


class LiveIndex:
    """The served index, its journal, builds and snapshots."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        store_root: Path | str,
        embed: Embedder,
        workers: int = 0,
        ef: int = 128,
        scheduler: str | None = None,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.store_root = store_root
        self.store = IndexStore(db, artifacts)
        self.journal = Journal(db)
        self._embed = embed
        self.workers = workers
        self.scheduler = scheduler
        self.ef = ef
        self._index: JourneyIndex | None = None
        # Guards _index and _building, and orders writes: journal order = apply order.
        self._swap = threading.Lock()
        self._building = False
        self._snapshotting = threading.Lock()

    @property
    def index(self) -> JourneyIndex:
        """The index served now, or FailedPrecondition."""
        index = self._index
        if index is None:
            raise FailedPrecondition("no journey index yet; call BuildIndex")
        return index

    # ---------------------------------------------------------------- start

    def load(self, rebuild_corrupt: bool = True) -> IndexInfo | None:
        """Load the newest READY snapshot and replay the journal after it (None: no index)."""
        row = self.store.latest_ready()
        if row is None:
            log.info("no index to load; BuildIndex will create one")
            return None
        try:
            index = self.store.load(row)
        except Exception as exc:  # any failure to read must not stop the service
            reason = public_reason(exc, "the snapshot could not be read (see the log)")
            log.error(
                "index v%s is corrupt or mismatched: %s",
                row.version,
                reason,
                exc_info=not isinstance(exc, ForesightError),
            )
            self.store.mark(row.version, Status.FAILED, f"corrupt: {reason}")
            if not rebuild_corrupt:
                log.error("serving without an index (rebuild of corrupt indexes is off)")
                return None
            params = row.params or {}
            try:
                info = self.build(
                    row.dataset,
                    0,
                    IndexParams(
                        m=int(params.get("M", 16)),
                        ef_construction=int(params.get("ef_construction", 100)),
                        ef=self.ef,
                    ),
                )
            except Exception:
                log.exception("rebuilding the corrupt index failed; serving without an index")
                return None
            log.info("rebuilt the corrupt index", extra={"version": info.version})
            return info
        index.set_ef(self.ef)
        replayed = self._replay(
            index, self.journal.entries(index.info.dataset, after=index.info.journal_seq)
        )
        with self._swap:
            self._index = index
        log.info(
            "index loaded",
            extra={"version": row.version, "count": index.count, "replayed": replayed},
        )
        return index.info

    def _replay(self, index: JourneyIndex, entries: Iterable[JournalEntry]) -> int:
        """Apply journal entries in order; returns how many."""
        applied = 0
        for entry in entries:
            if entry.events is not None or entry.stored:
                index.upsert(self._embed(index, entry.events, entry.stored), entry.seq)
            if entry.removed:
                index.remove(entry.removed, entry.seq)
            applied += 1
        return applied

    # ---------------------------------------------------------------- build

    def build(
        self,
        dataset: str,
        encoder_version: int,
        params: IndexParams,
        progress: Progress | None = None,
    ) -> IndexInfo:
        """Build from the event store, replay the dataset's journal onto it, swap it in."""
        with self._swap:
            if self._building:
                raise FailedPrecondition("an index build is already running")
            self._building = True
        try:
            index = build_index(
                self.db,
                self.store_root,
                self.artifacts,
                dataset,
                encoder_version,
                params,
                self.workers,
                progress,
                self.scheduler,
            )
            with self._swap:  # writes wait: none may land between replay and swap
                replayed = self._replay(index, self.journal.entries(dataset))
                old, self._index = self._index, index
            if replayed:
                log.info("replayed the journal onto the new index", extra={"entries": replayed})
            if old is not None:
                self.store.retire_older(index.info.version)
            return index.info
        finally:
            with self._swap:
                self._building = False

    # ---------------------------------------------------------------- writes

    def upsert(
        self, events: pl.DataFrame | None, stored: Sequence[str]
    ) -> tuple[EmbeddedShard, int, int]:
        """Journal, then apply: (embedded profiles, upserted, live count)."""
        index = self.index
        embedded = self._embed(index, events, stored)
        with self._swap:
            if self._index is not index:  # a build was swapped in meanwhile: its encoder
                index = self.index
                embedded = self._embed(index, events, stored)
            if embedded.count == 0:
                return embedded, 0, index.count
            seq = self.journal.append(index.info.dataset, stored=stored, events=events)
            upserted = index.upsert(embedded, seq)
            return embedded, upserted, index.count

    def remove(self, profile_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Journal, then apply: (removed, ids not in the index)."""
        with self._swap:
            index = self.index
            seq = self.journal.append(index.info.dataset, removed=list(profile_ids))
            return index.remove(list(profile_ids), seq)

    # ---------------------------------------------------------------- snapshots

    def snapshot(self) -> IndexInfo | None:
        """Save the index as a new version and compact the journal (None when nothing changed)."""
        with self._snapshotting:
            index = self._index
            if index is None or not index.dirty or self._building:
                return None
            version = self.store.allocate(index.info.dataset, index.info.encoder_version)
            try:
                saved = self.store.publish(index, version)
            except BaseException as exc:
                self.store.lifecycle.end_with(version, exc)
                raise
            self.store.retire_older(version)
            folded = self.journal.compact(saved.dataset, saved.journal_seq)
            log.info(
                "index snapshot saved",
                extra={"version": version, "count": saved.count, "journal_folded": folded},
            )
            return saved
