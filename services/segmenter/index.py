"""The journey index: every profile's embedding in an hnswlib graph (cosine), kept current.

`JourneyIndex` is one in-memory index: the HNSW graph, a label-aligned
mirror of the (unit-norm) embeddings, the label ↔ profile id maps and each
profile's trait sources. hnswlib is not safe for an insert running next to a
query, so every method takes a readers-writer lock: queries share it,
upserts and removals take it alone. A rebuilt index is swapped in whole by
the caller (build-and-swap), so a build never blocks queries.

Labels are never reused: hnswlib's `replace_deleted` recycles the *slot* of a
removed profile for a new label, and reusing a label number could leave a
stale slot pointing at it.

`IndexStore` saves an index as a bundle `indexes/v<N>/` (index.bin written to
a temporary file and renamed, `index.json` sidecar, `labels.parquet`,
`traits.npz`) published atomically, records it in the registry, and loads
it back after verifying every checksum.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import hnswlib
import numpy as np
import polars as pl
from sqlalchemy import func, select

from foresight.encoder import behaviour_as_of, get_encoder_version
from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.shards import ShardRunner
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore, sha256_file
from foresight.storage.db import Database
from foresight.storage.models import IndexVersionRow, utcnow
from services.segmenter.embedding import EmbeddedShard, embed_shard

__all__ = [
    "IndexInfo",
    "IndexParams",
    "IndexStore",
    "JourneyIndex",
    "RWLock",
    "build_index",
]

log = logging.getLogger("foresight.segmenter.index")

SPACE: Final[str] = "cosine"
INDEX_FILE: Final[str] = "index.bin"
SIDECAR_FILE: Final[str] = "index.json"
LABELS_FILE: Final[str] = "labels.parquet"
TRAITS_FILE: Final[str] = "traits.npz"
_ADD_CHUNK: Final[int] = 100_000
_LOAD_CHUNK: Final[int] = 50_000
_GROWTH: Final[float] = 1.5

Progress = Callable[[str, float, str], None]


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


# ---------------------------------------------------------------- locking


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock alone."""
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# ---------------------------------------------------------------- metadata


@dataclass(frozen=True)
class IndexParams:
    """HNSW parameters."""

    m: int = 16
    ef_construction: int = 100
    ef: int = 128

    def check(self) -> IndexParams:
        """Validated copy (0 = default), or InvalidArgument."""
        p = IndexParams(
            m=self.m or 16, ef_construction=self.ef_construction or 100, ef=self.ef or 128
        )
        if not 4 <= p.m <= 96:
            raise InvalidArgument("m", "must be between 4 and 96")
        if not 10 <= p.ef_construction <= 2000:
            raise InvalidArgument("ef_construction", "must be between 10 and 2000")
        return p


@dataclass(frozen=True)
class IndexInfo:
    """Parameters and size of an index: what its sidecar records."""

    version: int
    dataset: str
    space: str
    dimensions: int
    m: int
    ef_construction: int
    ef: int
    encoder_version: int
    count: int
    checksum: str
    built_at: datetime
    as_of: datetime
    """Reference time of the behaviour vectors (just after the dataset's latest event)."""

    def sidecar(self, labels: int, max_elements: int) -> dict[str, Any]:
        """The JSON sidecar."""
        return {
            "version": self.version,
            "dataset": self.dataset,
            "space": self.space,
            "dim": self.dimensions,
            "M": self.m,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "encoder_version": self.encoder_version,
            "count": self.count,
            "sha256": self.checksum,
            "built_at": self.built_at.isoformat(),
            "as_of": self.as_of.isoformat(),
            "labels": labels,
            "max_elements": max_elements,
        }

    @classmethod
    def from_sidecar(cls, data: dict[str, Any]) -> IndexInfo:
        """Inverse of `sidecar`."""
        return cls(
            version=int(data["version"]),
            dataset=str(data["dataset"]),
            space=str(data["space"]),
            dimensions=int(data["dim"]),
            m=int(data["M"]),
            ef_construction=int(data["ef_construction"]),
            ef=int(data["ef"]),
            encoder_version=int(data["encoder_version"]),
            count=int(data["count"]),
            checksum=str(data["sha256"]),
            built_at=datetime.fromisoformat(data["built_at"]),
            as_of=datetime.fromisoformat(data["as_of"]),
        )


@dataclass(frozen=True)
class IndexSnapshot:
    """Copies of the live rows of an index, for work that must not hold the lock (discovery, map)."""

    profile_ids: np.ndarray
    vectors: np.ndarray
    trait_bits: np.ndarray
    trait_values: np.ndarray


# ---------------------------------------------------------------- the index


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
        report = progress or _no_progress
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
                sims = self._vectors[start : start + chunk] @ P
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

    def upsert(self, shard: EmbeddedShard) -> int:
        """Add new profiles and re-embed known ones; returns how many."""
        if shard.count == 0:
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
            return shard.count

    def remove(self, profile_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Mark profiles deleted; returns (removed, ids not in the index)."""
        with self.lock.write():
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

    def save(self, folder: Path, info: IndexInfo) -> IndexInfo:
        """Write the bundle files into `folder` (a publish temp folder); returns the info saved."""
        with self.lock.read():
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

    @classmethod
    def load(cls, folder: Path) -> JourneyIndex:
        """Read a bundle written by `save` (checksums are the caller's job)."""
        sidecar = json.loads((folder / SIDECAR_FILE).read_text())
        info = IndexInfo.from_sidecar(sidecar)
        if info.space != SPACE:
            raise FailedPrecondition(f"index space {info.space!r} is not {SPACE!r}")
        n_labels = int(sidecar["labels"])
        hnsw = hnswlib.Index(space=SPACE, dim=info.dimensions)
        hnsw.load_index(
            str(folder / INDEX_FILE),
            max_elements=int(sidecar["max_elements"]),
            allow_replace_deleted=True,
        )
        hnsw.set_ef(info.ef)
        frame = pl.read_parquet(folder / LABELS_FILE)
        labels = frame["label"].to_numpy()
        if len(labels) != info.count or (len(labels) and labels.max() >= n_labels):
            raise FailedPrecondition("index labels do not match its sidecar")
        traits = np.load(folder / TRAITS_FILE)
        ids = np.full(n_labels, None, dtype=object)
        ids[labels] = np.asarray(frame["profile_id"].to_list(), dtype=object)
        alive = np.zeros(n_labels, dtype=bool)
        alive[labels] = True
        vectors = np.zeros((n_labels, info.dimensions), dtype=np.float32)
        # In chunks: get_items materialises its result in Python first, which
        # for a million rows at once doubled the loading process's peak memory.
        for start in range(0, len(labels), _LOAD_CHUNK):
            chunk = labels[start : start + _LOAD_CHUNK]
            vectors[chunk] = np.asarray(hnsw.get_items(chunk), dtype=np.float32)
        bits = np.zeros((n_labels, traits["bits"].shape[1]), dtype=np.uint8)
        bits[labels] = traits["bits"]
        values = np.zeros((n_labels, traits["values"].shape[1]), dtype=np.float32)
        values[labels] = traits["values"]
        return cls(info, hnsw, ids, alive, vectors, bits, values, n_labels)


# ---------------------------------------------------------------- registry + files


def index_bundle_path(version: int) -> str:
    """Relative artifact path of an index bundle."""
    return f"indexes/v{version}"


class IndexStore:
    """Index bundles in the artifact store and their rows in the registry."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    def allocate(self, dataset: str, encoder_version: int) -> int:
        """A BUILDING row with the next free version."""
        folder = self.artifacts.path("indexes")
        on_disk = (
            [int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit()]
            if folder.is_dir()
            else []
        )
        with self.db.session() as s:
            highest = s.scalar(select(func.max(IndexVersionRow.version))) or 0
            version = max(int(highest), *on_disk, 0) + 1
            s.add(
                IndexVersionRow(
                    version=version,
                    dataset=dataset,
                    encoder_version=encoder_version,
                    status="BUILDING",
                    params={},
                    created_at=utcnow(),
                )
            )
        return version

    def publish(self, index: JourneyIndex, version: int) -> IndexInfo:
        """Save `index` as version `version` (atomically), then mark the row READY."""
        relative = index_bundle_path(version)
        info = replace(index.info, version=version)
        with self.artifacts.publish(relative, {"kind": "index", "version": version}) as folder:
            saved = index.save(folder, info)
        self.artifacts.verify(relative)
        index.info = saved
        with self.db.session() as s:
            row = s.scalar(select(IndexVersionRow).where(IndexVersionRow.version == version))
            if row is None:
                raise NotFound(f"index version {version} does not exist")
            row.status = "READY"
            row.artifact_path = relative
            row.count = saved.count
            row.checksum = saved.checksum
            row.params = {
                "space": saved.space,
                "dim": saved.dimensions,
                "M": saved.m,
                "ef_construction": saved.ef_construction,
                "ef": saved.ef,
                "as_of": saved.as_of.isoformat(),
            }
        return saved

    def mark(self, version: int, status: str, error: str | None = None) -> None:
        """Set a row's status (FAILED, CORRUPT, RETIRED), keeping the reason in params."""
        with self.db.session() as s:
            row = s.scalar(select(IndexVersionRow).where(IndexVersionRow.version == version))
            if row is not None:
                row.status = status
                if error:
                    row.params = {**(row.params or {}), "error": error}

    def latest_ready(self) -> IndexVersionRow | None:
        """The newest READY row."""
        with self.db.session() as s:
            return s.scalars(
                select(IndexVersionRow)
                .where(IndexVersionRow.status == "READY")
                .order_by(IndexVersionRow.version.desc())
                .limit(1)
            ).first()

    def load(self, row: IndexVersionRow) -> JourneyIndex:
        """Verify and load a READY version; FailedPrecondition says what is wrong."""
        if not row.artifact_path:
            raise FailedPrecondition(f"index v{row.version} has no files")
        manifest = self.artifacts.verify(row.artifact_path)  # every file vs its SHA-256
        folder = self.artifacts.path(row.artifact_path)
        sidecar = json.loads((folder / SIDECAR_FILE).read_text())
        on_disk = manifest["files"].get(INDEX_FILE)
        if not (sidecar.get("sha256") == on_disk == row.checksum):
            raise FailedPrecondition(
                f"index v{row.version}: index.bin checksum does not match its sidecar/registry"
            )
        index = JourneyIndex.load(folder)
        if index.info.version != row.version or index.info.encoder_version != row.encoder_version:
            raise FailedPrecondition(f"index v{row.version}: sidecar does not match the registry")
        return index

    def retire_older(self, keep_from: int, keep: int = 2) -> None:
        """Delete bundles of READY versions older than the `keep` newest (upsert snapshots pile up)."""
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    select(IndexVersionRow)
                    .where(IndexVersionRow.status == "READY", IndexVersionRow.version <= keep_from)
                    .order_by(IndexVersionRow.version.desc())
                )
            )
            for row in rows[keep:]:
                if row.artifact_path:
                    shutil.rmtree(self.artifacts.path(row.artifact_path), ignore_errors=True)
                row.status = "RETIRED"
                row.artifact_path = None


# ---------------------------------------------------------------- build


def build_index(
    db: Database,
    store_root: Path | str,
    artifacts: ArtifactStore,
    dataset: str,
    encoder_version: int,
    params: IndexParams,
    workers: int = 0,
    progress: Progress | None = None,
    scheduler: str | None = None,
) -> JourneyIndex:
    """Embed every profile of `dataset` shard by shard on all cores, build and publish the index."""
    report = progress or _no_progress
    params = params.check()
    catalog.get_dataset(db, dataset)
    encoder = get_encoder_version(db, encoder_version)
    if encoder.status != "READY" or not encoder.artifact_path:
        raise FailedPrecondition(f"encoder v{encoder.version} is {encoder.status}, not READY")
    parts = catalog.catalogued_parts(db, dataset)
    span = catalog.time_range(db, dataset)
    if not parts or span is None:
        raise FailedPrecondition(f"dataset {dataset!r} has no events")
    as_of = behaviour_as_of(span[1])
    store = IndexStore(db, artifacts)
    version = store.allocate(dataset, encoder.version)
    began = time.perf_counter()
    try:
        shards = sorted(catalog.shards_of(parts))
        encoder_dir = str(artifacts.path(encoder.artifact_path))
        pool = ShardRunner(workers or os.cpu_count() or 1, scheduler=scheduler)
        # Each worker runs onnxruntime single-threaded: the parallelism is across shards.
        threads = 1 if pool.workers > 1 and len(shards) > 1 else 0
        tasks = [
            (
                str(store_root),
                dataset,
                shard,
                [p for p in parts if f"/shard={shard}/" in p],
                as_of,
                encoder_dir,
                threads,
            )
            for shard in shards
        ]
        report("embed", 0.0, f"embedding {len(shards)} shards with {pool.workers} workers")
        embedded = pool.map(
            embed_shard,
            tasks,
            lambda done, total: report(
                "embed", 0.6 * done / total, f"embedded {done} of {total} shards"
            ),
        )
        total = sum(e.count for e in embedded)
        if total == 0:
            raise FailedPrecondition(f"dataset {dataset!r} has no profiles with recent events")
        info = IndexInfo(
            version=version,
            dataset=dataset,
            space=SPACE,
            dimensions=encoder.dimensions,
            m=params.m,
            ef_construction=params.ef_construction,
            ef=params.ef,
            encoder_version=encoder.version,
            count=total,
            checksum="",
            built_at=datetime.now(UTC),
            as_of=as_of,
        )
        index = JourneyIndex.create(
            info,
            embedded,
            params,
            lambda stage, f, msg: report(stage, 0.6 + 0.3 * f, msg),
        )
        del embedded
        report("save", 0.92, f"saving index v{version}")
        store.publish(index, version)
        log.info(
            "index built",
            extra={
                "version": version,
                "count": index.count,
                "seconds": round(time.perf_counter() - began, 1),
            },
        )
        report("done", 1.0, f"index v{version}: {index.count:,} profiles")
        return index
    except BaseException as exc:
        store.mark(version, "FAILED", str(exc) or type(exc).__name__)
        raise
