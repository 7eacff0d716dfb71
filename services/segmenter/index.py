"""The journey index in memory: every profile's embedding in an hnswlib graph (cosine).

`JourneyIndex` is one in-memory index: the HNSW graph, a label-aligned
mirror of the (unit-norm) embeddings, the label ↔ profile id maps and each
profile's trait sources. Every method takes the readers-writer lock
(`locking.RWLock`): queries share it, upserts and removals take it alone,
so the graph is never written while it is queried. A rebuilt index is
swapped in whole by the caller (`live.LiveIndex`), so a build never blocks
queries.

Labels are never reused: hnswlib's `replace_deleted` recycles the *slot* of a
removed profile for a new label, and reusing a label number could leave a
stale slot pointing at it.

Files and registry rows are `index_store`'s; building from the event store
is `index_build`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import hnswlib
import numpy as np
import polars as pl

from foresight.errors import FailedPrecondition
from foresight.progress import Progress, no_progress
from foresight.storage.artifacts import sha256_file
from services.segmenter.embedding import EmbeddedShard
from services.segmenter.index_types import (
    SPACE,
    IndexInfo,
    IndexParams,
    IndexSnapshot,
)
from services.segmenter.locking import RWLock

__all__ = ["INDEX_FILE", "LABELS_FILE", "SIDECAR_FILE", "TRAITS_FILE", "JourneyIndex"]

INDEX_FILE: Final[str] = "index.bin"
SIDECAR_FILE: Final[str] = "index.json"
LABELS_FILE: Final[str] = "labels.parquet"
TRAITS_FILE: Final[str] = "traits.npz"
_ADD_CHUNK: Final[int] = 100_000
_GROWTH: Final[float] = 1.5


class JourneyIndex:
    """One HNSW index with its label maps and trait sources; thread-safe."""

    def __init__(
        self,
        info: IndexInfo,
        hnsw: hnswlib.Index,
        ids: np.ndarray,
        alive: np.ndarray,
        vectors: np.ndarray,
        trait_bits: np.ndarray,
        trait_values: np.ndarray,
        next_label: int,
    ) -> None:
        self.info = info
        self.lock = RWLock()
        self._hnsw = hnsw
        self._ids = ids  # label → profile id (object), capacity-sized
        self._alive = alive  # label → live?
        self._vectors = vectors  # label → unit embedding
        self._bits = trait_bits
        self._values = trait_values
        self._next = next_label
        self._label_of: dict[str, int] = {
            str(ids[i]): int(i) for i in np.flatnonzero(alive[:next_label])
        }
        self.dirty = False
        """Changed since it was last saved."""

    # -- construction -----------------------------------------------------------

    @classmethod
    def create(
        cls,
        info: IndexInfo,
        shards: Sequence[EmbeddedShard],
        params: IndexParams,
        progress: Progress | None = None,
        threads: int = -1,
    ) -> JourneyIndex:
        """Build a fresh index from embedded shards (labels 0..n-1 in shard order)."""
        report = progress or no_progress
        shards = [s for s in shards if s.count]
        n = sum(s.count for s in shards)
        dim = info.dimensions
        ids = (
            np.concatenate([s.profile_ids for s in shards])
            if shards
            else np.array([], dtype=object)
        )
        if len(np.unique(ids)) != n:
            raise FailedPrecondition("a profile appears in more than one shard")
        vectors = (
            np.concatenate([s.embeddings for s in shards])
            if shards
            else np.zeros((0, dim), np.float32)
        )
        bits = (
            np.concatenate([s.trait_bits for s in shards]) if shards else np.zeros((0, 1), np.uint8)
        )
        values = (
            np.concatenate([s.trait_values for s in shards])
            if shards
            else np.zeros((0, 1), np.float32)
        )
        hnsw = hnswlib.Index(space=SPACE, dim=dim)
        hnsw.init_index(
            max_elements=max(n, 16),
            M=params.m,
            ef_construction=params.ef_construction,
            random_seed=100,
            allow_replace_deleted=True,
        )
        hnsw.set_ef(params.ef)
        labels = np.arange(n, dtype=np.int64)
        report("index", 0.0, f"building the HNSW graph of {n:,} profiles")
        for start in range(0, n, _ADD_CHUNK):
            stop = min(start + _ADD_CHUNK, n)
            hnsw.add_items(vectors[start:stop], labels[start:stop], num_threads=threads)
            report("index", stop / n, f"indexed {stop:,} of {n:,} profiles")
        index = cls(
            replace(info, count=n),
            hnsw,
            ids.astype(object),
            np.ones(n, dtype=bool),
            np.ascontiguousarray(vectors, dtype=np.float32),
            bits,
            values,
            n,
        )
        return index

    # -- reads (shared lock) ---------------------------------------------------

    @property
    def count(self) -> int:
        """Live profiles."""
        return len(self._label_of)

    @property
    def dimensions(self) -> int:
        """Embedding width."""
        return self.info.dimensions

    def contains(self, profile_id: str) -> bool:
        """Whether the profile is in the index."""
        return profile_id in self._label_of

    def vectors_of(self, profile_ids: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
        """(known ids, their embeddings, unknown ids), known in request order, duplicates once."""
        with self.lock.read():
            known: list[str] = []
            labels: list[int] = []
            unknown: list[str] = []
            seen: set[str] = set()
            for pid in profile_ids:
                if pid in seen:
                    continue
                seen.add(pid)
                label = self._label_of.get(pid)
                if label is None:
                    unknown.append(pid)
                else:
                    known.append(pid)
                    labels.append(label)
            return known, self._vectors[np.asarray(labels, dtype=np.int64)].copy(), unknown

    def knn(
        self, queries: np.ndarray, k: int, exclude: set[str] | None = None
    ) -> list[list[tuple[str, float]]]:
        """The k nearest profiles of each query (unit vectors): (profile id, cosine similarity).

        Profiles in `exclude` are skipped (the query's own profile, a seed).
        """
        exclude = exclude or set()
        with self.lock.read():
            alive = len(self._label_of)
            want = min(k + len(exclude), alive)
            if want <= 0 or len(queries) == 0:
                return [[] for _ in range(len(queries))]
            try:
                labels, distances = self._hnsw.knn_query(
                    np.ascontiguousarray(queries, dtype=np.float32),
                    k=want,
                    num_threads=1 if len(queries) == 1 else -1,
                )
            except RuntimeError:
                # hnswlib cannot fill k results when many slots are deleted;
                # an exact scan of the mirror always can.
                labels, distances = self._exact(queries, want)
            out: list[list[tuple[str, float]]] = []
            for row_labels, row_dist in zip(labels, distances, strict=True):
                hits: list[tuple[str, float]] = []
                for label, dist in zip(row_labels, row_dist, strict=True):
                    pid = str(self._ids[int(label)])
                    if pid in exclude:
                        continue
                    hits.append((pid, float(1.0 - dist)))
                    if len(hits) == k:
                        break
                out.append(hits)
            return out

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = queries @ self._vectors[: self._next].T
        sims[:, ~self._alive[: self._next]] = -np.inf
        top = np.argsort(-sims, axis=1)[:, :k]
        return top, 1.0 - np.take_along_axis(sims, top, axis=1)

    def exact_scan(
        self,
        points: np.ndarray,
        exclude: Sequence[str],
        centre: np.ndarray | None = None,
        centre_weight: float = 0.0,
        chunk: int = 262_144,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every live profile not in `exclude`: (profile ids, score, index of the nearest point).

        score = (1 - centre_weight) · max cosine to the points + centre_weight ·
        cosine to `centre`. Lookalike expansion ranks a large slice of the
        population against a few query points; one matrix product over the
        mirror does that exactly and faster than HNSW searches with k in the
        tens of thousands.
        """
        with self.lock.read():
            n = self._next
            mask = self._alive[:n].copy()
            for pid in exclude:
                label = self._label_of.get(pid)
                if label is not None:
                    mask[label] = False
            score = np.empty(n, dtype=np.float32)
            which = np.empty(n, dtype=np.int32)
            q = len(points)
            columns = points if centre is None else np.vstack([points, centre.reshape(1, -1)])
            P = np.ascontiguousarray(columns.T, dtype=np.float32)
            # Contiguous slices of the mirror (no fancy-index copies); removed
            # and excluded rows are dropped afterwards.
            for start in range(0, n, chunk):
                # The mirror has spare capacity past n: never read beyond it.
                sims = self._vectors[start : min(start + chunk, n)] @ P
                nearest = np.argmax(sims[:, :q], axis=1)
                best = sims[np.arange(len(sims)), nearest]
                if centre is not None:
                    best = (1.0 - centre_weight) * best + centre_weight * sims[:, q]
                which[start : start + len(sims)] = nearest
                score[start : start + len(sims)] = best
            labels = np.flatnonzero(mask)
            score, which = score[labels], which[labels]
            return self._ids[labels], score, which

    def snapshot(self) -> IndexSnapshot:
        """Copies of the live rows (profile ids, embeddings, trait sources)."""
        with self.lock.read():
            labels = np.flatnonzero(self._alive[: self._next])
            return IndexSnapshot(
                profile_ids=self._ids[labels].copy(),
                vectors=self._vectors[labels].copy(),
                trait_bits=self._bits[labels].copy(),
                trait_values=self._values[labels].copy(),
            )

    # -- writes (exclusive lock) -------------------------------------------------

    def set_ef(self, ef: int) -> None:
        """Change the query-time ef (shared state of the graph, so a write)."""
        with self.lock.write():
            self._hnsw.set_ef(ef)
            self.info = replace(self.info, ef=ef)

    def _grow(self, needed_labels: int) -> None:
        capacity = len(self._alive)
        if needed_labels <= capacity:
            return
        new = max(needed_labels, int(capacity * _GROWTH) + 16)

        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((new, *a.shape[1:]), fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self._ids = grow(self._ids, None)
        self._alive = grow(self._alive, False)
        self._vectors = grow(self._vectors, 0.0)
        self._bits = grow(self._bits, 0)
        self._values = grow(self._values, 0.0)

    def _applied(self, seq: int) -> None:
        """Record the journal entry just applied (call holding the write lock)."""
        if seq > self.info.journal_seq:
            self.info = replace(self.info, journal_seq=seq)
            self.dirty = True

    def upsert(self, shard: EmbeddedShard, seq: int = 0) -> int:
        """Add new profiles and re-embed known ones (journal entry `seq`); returns how many."""
        if shard.count == 0:
            if seq:
                with self.lock.write():
                    self._applied(seq)
            return 0
        if shard.embeddings.shape[1] != self.dimensions:
            raise FailedPrecondition(
                f"embeddings have {shard.embeddings.shape[1]} dimensions, the index {self.dimensions}"
            )
        with self.lock.write():
            labels = np.empty(shard.count, dtype=np.int64)
            fresh: list[int] = []
            for i, pid in enumerate(shard.profile_ids):
                label = self._label_of.get(str(pid))
                if label is None:
                    label = self._next
                    self._next += 1
                    fresh.append(i)
                labels[i] = label
            self._grow(self._next)
            # Slots: live + deleted (reusable) ≤ max_elements.
            used = self._hnsw.get_current_count()
            deleted = used - (len(self._label_of))
            need = used - deleted + len(fresh)
            if need > self._hnsw.get_max_elements():
                self._hnsw.resize_index(max(need, int(self._hnsw.get_max_elements() * _GROWTH)))
            is_new = np.zeros(shard.count, dtype=bool)
            is_new[fresh] = True
            # Known profiles are updated in place; only new ones may take the
            # slot of a removed profile (replace_deleted on a live label would
            # leave its old slot behind, still searchable).
            if (~is_new).any():
                self._hnsw.add_items(shard.embeddings[~is_new], labels[~is_new], num_threads=1)
            if is_new.any():
                self._hnsw.add_items(
                    shard.embeddings[is_new], labels[is_new], num_threads=1, replace_deleted=True
                )
            self._ids[labels] = shard.profile_ids
            self._alive[labels] = True
            self._vectors[labels] = shard.embeddings
            self._bits[labels] = shard.trait_bits
            self._values[labels] = shard.trait_values
            for i in fresh:
                self._label_of[str(shard.profile_ids[i])] = int(labels[i])
            self.info = replace(self.info, count=len(self._label_of))
            self.dirty = True
            self._applied(seq)
            return shard.count

    def remove(self, profile_ids: Sequence[str], seq: int = 0) -> tuple[int, list[str]]:
        """Mark profiles deleted (journal entry `seq`); returns (removed, ids not in the index)."""
        with self.lock.write():
            self._applied(seq)
            removed = 0
            missing: list[str] = []
            for pid in dict.fromkeys(profile_ids):
                label = self._label_of.pop(pid, None)
                if label is None:
                    missing.append(pid)
                    continue
                self._hnsw.mark_deleted(label)
                self._alive[label] = False
                removed += 1
            if removed:
                self.info = replace(self.info, count=len(self._label_of))
                self.dirty = True
            return removed, missing

    # -- persistence ---------------------------------------------------------------

    def save(self, folder: Path, version: int) -> IndexInfo:
        """Write the bundle files into `folder` (a publish temp folder); returns the info saved.

        Under the shared lock: no write runs meanwhile, so the files and the
        journal position recorded in the sidecar describe the same state.
        """
        with self.lock.read():
            info = replace(self.info, version=version)
            tmp = folder / f".{INDEX_FILE}.tmp"
            self._hnsw.save_index(str(tmp))
            os.replace(tmp, folder / INDEX_FILE)
            labels = np.flatnonzero(self._alive[: self._next])
            pl.DataFrame(
                {
                    "label": labels.astype(np.int64),
                    "profile_id": pl.Series(self._ids[labels].tolist(), dtype=pl.String),
                }
            ).write_parquet(folder / LABELS_FILE)
            np.savez(folder / TRAITS_FILE, bits=self._bits[labels], values=self._values[labels])
            saved = replace(info, count=len(labels), checksum=sha256_file(folder / INDEX_FILE))
            sidecar = saved.sidecar(self._next, self._hnsw.get_max_elements())
            (folder / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2))
            self.dirty = False
            return saved

    def adopt(self, saved: IndexInfo) -> None:
        """Take the version and checksum of a published snapshot (writes since are kept)."""
        with self.lock.write():
            self.info = replace(self.info, version=saved.version, checksum=saved.checksum)
