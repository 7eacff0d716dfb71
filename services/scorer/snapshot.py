"""The lookup snapshot: the latest run of each instance in compact arrays.

One `RunScores` holds a run as columns: profile ids in one Arrow string buffer,
probability / score / percentile / bucket as small NumPy arrays, and the top
factors as int16 feature codes with float32 impacts and values. An id is found
through a sorted array of its CRC-32 hashes (one binary search, then the id
itself is compared, so a collision can never return another profile's score).
For 1M profiles with 5 factors that is ~85 MB, where a dict of Python objects
would take several times more.

A serving process maps these columns from the run's sidecar (an uncompressed
Arrow IPC file, hashes included) instead of reading them into its heap: loading
copies nothing, the pages are the kernel's page cache, shared by every worker
process that serves the run and reclaimable under memory pressure, and only
the pages lookups touch become resident.

`SnapshotStore` maps instance → `RunScores`; a finished run replaces its
instance's entry by swapping the whole mapping, so a reader holding the old
mapping finishes its request on a consistent run and never sees a half-built one.
"""

from __future__ import annotations

import bisect
import itertools
import json
import mmap
import threading
import zlib
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from foresight.features.spec import FeatureDef, Unit
from foresight.storage.artifacts import atomic_write
from services.scorer.factors import NO_FACTOR, TopFactors, buckets_of, render_factors
from services.scorer.records import Bucket, InstanceScore

METADATA_KEY = b"foresight.scores"
_BUCKETS = [Bucket.LOW, Bucket.LOW, Bucket.MEDIUM, Bucket.HIGH]  # by bucket code (1–3)


def _view(array: np.ndarray) -> memoryview:
    """A memoryview of a 1-D array: indexing it yields plain ints, fast."""
    return memoryview(array)  # type: ignore[arg-type]


def _id_hash(profile_id: bytes) -> int:
    # CRC-32: the same in every process and version, so the sorted hashes are
    # stored in the sidecar and a serving process never hashes a million ids.
    return zlib.crc32(profile_id)


def _offsets(ids: pa.Array) -> np.ndarray:
    """The int64 offsets [n + 1] of a large_string array into its data buffer."""
    n = len(ids)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    return np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset : ids.offset + n + 1]


def _text(ids: pa.Array) -> tuple[bytes, np.ndarray]:
    """The characters of a large_string array's ids and their offsets [n + 1] into them."""
    offsets = _offsets(ids)
    start = int(offsets[0])
    if not len(ids):
        return b"", offsets
    raw = ids.buffers()[2].slice(start, int(offsets[-1]) - start).to_pybytes()
    return raw, offsets - start if start else offsets


def _hash_each(raw: bytes, offsets: np.ndarray) -> np.ndarray:
    """Each id's `_id_hash` (uint32), in chunks: no list of a million strings is built."""
    n = len(offsets) - 1
    hashes = np.empty(n, dtype=np.uint32)
    step = 65_536
    for first in range(0, n, step):
        bounds = offsets[first : min(n, first + step) + 1].tolist()
        hashes[first : first + len(bounds) - 1] = [
            _id_hash(raw[a:b]) for a, b in itertools.pairwise(bounds)
        ]
    return hashes


def id_hashes(ids: pa.Array) -> np.ndarray:
    """The hash `IdIndex` keeps of each id of a large_string array (uint32 [n]): a shard
    worker's ~18 ms per 62.5k ids, off the run's serial path."""
    return _hash_each(*_text(ids))


@dataclass(frozen=True, eq=False)
class IdIndex:
    """Profile id → row: the ids' sorted hashes, the row of each, and the id characters
    (`text`: bytes, or the mapped sidecar) to confirm a match."""

    hashes: np.ndarray  # uint32 [n], sorted
    rows: np.ndarray  # int32 [n]: the row of each hash
    offsets: np.ndarray  # int64 [n + 1]: id i is text[base + offsets[i] : base + offsets[i + 1]]
    text: bytes | mmap.mmap
    base: int = 0

    @classmethod
    def of(cls, ids: pa.Array, hashes: np.ndarray | None = None) -> IdIndex:
        """The index of `ids` (a large_string array), given each id's `id_hashes` (batch
        scoring's shards compute them) or hashing them here."""
        raw, offsets = _text(ids)
        if hashes is None:
            hashes = _hash_each(raw, offsets)
        elif len(hashes) != len(ids):
            raise ValueError(f"{len(hashes)} id hashes for {len(ids)} ids")
        order = np.argsort(hashes, kind="stable")
        return cls(hashes[order], order.astype(np.int32), offsets, raw)

    def nbytes(self) -> int:
        """Bytes of the index besides the ids array: hashes, rows, and the copy of the
        id characters when it holds one (a mapped sidecar's are the ids' own)."""
        copy = len(self.text) if isinstance(self.text, bytes) else 0
        return int(self.hashes.nbytes + self.rows.nbytes + copy)


class ScoreRow(NamedTuple):
    """One profile's score in one run: the run and the profile's row in it (read from the
    columns when it is encoded or rendered, so a lookup builds no per-field objects)."""

    run: RunScores
    row: int

    def instance_score(self) -> InstanceScore:
        """The domain record, factor texts rendered."""
        return self.run.instance_score(self.row)


@dataclass(frozen=True, eq=False)
class RunScores:
    """Every profile's score of one run, as columns (row i = one profile)."""

    run_id: str
    instance: str
    model_version: int
    as_of: datetime
    features: tuple[FeatureDef, ...]
    ids: pa.Array  # large_string, row order
    probability: np.ndarray  # float32 [n]
    score: np.ndarray  # uint8 [n]
    percentile: np.ndarray  # uint8 [n]
    factors: TopFactors
    id_index: InitVar[IdIndex | None] = None  # stored with the run (sidecar), else built
    bucket: np.ndarray = field(init=False)  # uint8 [n] (Bucket values)
    index: IdIndex = field(init=False, repr=False)
    _hash_view: memoryview = field(init=False, repr=False)
    _row_view: memoryview = field(init=False, repr=False)
    _offset_view: memoryview = field(init=False, repr=False)
    views: tuple[memoryview, ...] = field(init=False, repr=False)

    def __post_init__(self, id_index: IdIndex | None) -> None:
        ids = self.ids
        if not pa.types.is_large_string(ids.type):
            ids = ids.cast(pa.large_string())
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "bucket", buckets_of(self.score))
        index = id_index if id_index is not None else IdIndex.of(ids)
        object.__setattr__(self, "index", index)
        # Memoryviews: C-level bisect and plain-int indexing are several times faster
        # than NumPy's per-call overhead for one value.
        object.__setattr__(self, "_hash_view", _view(index.hashes))
        object.__setattr__(self, "_row_view", _view(index.rows))
        object.__setattr__(self, "_offset_view", _view(np.ascontiguousarray(index.offsets)))
        # Flat memoryviews (probability, score, percentile, bucket, then the factor codes,
        # impacts and values, k slots per row): one profile's fields come out as plain
        # Python numbers in well under a microsecond (NumPy scalar indexing costs ~100 ns).
        object.__setattr__(
            self,
            "views",
            tuple(
                _view(np.ascontiguousarray(a).reshape(-1))
                for a in (
                    self.probability,
                    self.score,
                    self.percentile,
                    self.bucket,
                    self.factors.codes,
                    self.factors.impacts,
                    self.factors.values,
                )
            ),
        )

    def __len__(self) -> int:
        return len(self.probability)

    @property
    def k(self) -> int:
        """Factor slots per profile."""
        return int(self.factors.codes.shape[1])

    def feature_index(self) -> dict[str, int]:
        """Feature code → factor code (column of the model's matrix)."""
        return {f.code: i for i, f in enumerate(self.features)}

    def find(self, profile_id: str) -> int:
        """Row of a profile, or -1 (about a microsecond)."""
        key = profile_id.encode()
        h = _id_hash(key)
        hashes, rows, offsets = self._hash_view, self._row_view, self._offset_view
        text, base = self.index.text, self.index.base
        i = bisect.bisect_left(hashes, h)
        n = len(hashes)
        while i < n and hashes[i] == h:
            row = rows[i]
            if text[base + offsets[row] : base + offsets[row + 1]] == key:
                return row
            i += 1
        return -1

    def instance_score(self, row: int) -> InstanceScore:
        """The score of the profile in `row`, with its factors rendered as text."""
        probability, score, percentile, bucket, codes, impacts, values = self.views
        slots = slice(row * self.k, (row + 1) * self.k)
        return InstanceScore(
            self.instance,
            probability[row],
            score[row],
            percentile[row],
            _BUCKETS[bucket[row]],
            render_factors(codes[slots], impacts[slots], values[slots], self.features),
            self.model_version,
            self.as_of,
            self.run_id,
        )

    def nbytes(self) -> int:
        """Bytes of the columns and the id index (in the heap, or mapped from the sidecar)."""
        arrays = (
            self.probability,
            self.score,
            self.percentile,
            self.bucket,
            self.factors.codes,
            self.factors.impacts,
            self.factors.values,
        )
        return int(self.ids.nbytes + sum(a.nbytes for a in arrays) + self.index.nbytes())

    # --- Parquet copy ---------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """The run as an Arrow table (profile_id, probability, score, percentile, bucket, factors)."""
        names = np.array([b.name for b in Bucket], dtype=object)
        columns: dict[str, pa.Array] = {
            "profile_id": self.ids,
            "probability": pa.array(self.probability, pa.float32()),
            "score": pa.array(self.score.astype(np.int16), pa.int16()),
            "percentile": pa.array(self.percentile.astype(np.int16), pa.int16()),
            "bucket": pa.DictionaryArray.from_arrays(
                pa.array(self.bucket.astype(np.int8) - 1, pa.int8()), pa.array(names, pa.string())
            ),
        }
        dictionary = pa.array([f.code for f in self.features], pa.string())
        for slot in range(self.k):
            codes = self.factors.codes[:, slot]
            indices = pa.array(codes, pa.int16(), mask=codes == NO_FACTOR)
            columns[f"factor_{slot}"] = pa.DictionaryArray.from_arrays(indices, dictionary)
            columns[f"factor_impact_{slot}"] = pa.array(self.factors.impacts[:, slot], pa.float32())
            columns[f"factor_value_{slot}"] = pa.array(self.factors.values[:, slot], pa.float32())
        table = pa.table(columns)
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(self._meta()).encode()})

    def write_parquet(self, path: Path) -> None:
        """Write the Parquet copy atomically (readers never see half a file)."""
        table = self.to_arrow()
        # Dictionary pages only for the columns that are dictionaries (bucket, factor codes):
        # unique ids and continuous floats gain nothing from the attempt (1M rows: 0.36 s
        # against 0.62 s, and 11% smaller).
        dictionary = [f.name for f in table.schema if pa.types.is_dictionary(f.type)]
        atomic_write(
            path,
            lambda fh: pq.write_table(table, fh, compression="zstd", use_dictionary=dictionary),
        )

    # --- compact sidecar: what a serving process loads --------------------------------

    def _meta(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "instance": self.instance,
            "model_version": self.model_version,
            "as_of": self.as_of.isoformat(),
            "top_factors": self.k,
            "features": [[f.code, f.description, f.unit.value] for f in self.features],
        }

    def write_sidecar(self, path: Path) -> None:
        """The columns and the id index as one uncompressed Arrow IPC file, written
        atomically: what `read_sidecar` maps."""
        k = self.k

        def slots(values: np.ndarray, type_: pa.DataType) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type_), k)

        batch = pa.record_batch(
            {
                "profile_id": self.ids,
                "probability": pa.array(self.probability, pa.float32()),
                "score": pa.array(self.score, pa.uint8()),
                "percentile": pa.array(self.percentile, pa.uint8()),
                "factor_codes": slots(self.factors.codes, pa.int16()),
                "factor_impacts": slots(self.factors.impacts, pa.float32()),
                "factor_values": slots(self.factors.values, pa.float32()),
                "id_hash": pa.array(self.index.hashes, pa.uint32()),
                "id_row": pa.array(self.index.rows, pa.int32()),
            },
            metadata={METADATA_KEY: json.dumps(self._meta()).encode()},
        )

        def write(fh: BinaryIO) -> None:  # streamed: no in-memory copy of the file
            with pa.ipc.new_file(fh, batch.schema) as writer:
                writer.write_batch(batch)

        atomic_write(path, write)

    @classmethod
    def read_sidecar(cls, path: Path) -> RunScores:
        """Map a run written by `write_sidecar`: its columns stay in the file's pages
        (no copy into the heap; files are replaced by rename, never rewritten in place)."""
        with path.open("rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        whole = pa.py_buffer(mapped)
        reader = pa.ipc.open_file(whole)
        raw = (reader.schema.metadata or {}).get(METADATA_KEY)
        if raw is None or reader.num_record_batches != 1:
            raise ValueError(f"{path} is not a scorer sidecar")
        batch = reader.get_batch(0)
        batch.validate()
        meta = json.loads(raw)
        n, k = batch.num_rows, int(meta["top_factors"])

        def column(name: str) -> np.ndarray:
            return np.asarray(batch.column(name).to_numpy(zero_copy_only=True))

        def slots(name: str) -> np.ndarray:
            values = batch.column(name).flatten().to_numpy(zero_copy_only=True)
            return np.asarray(values).reshape(n, k)

        ids = batch.column("profile_id")
        data = ids.buffers()[2] if n else None
        index = IdIndex(
            column("id_hash"),
            column("id_row"),
            _offsets(ids),
            mapped,
            data.address - whole.address if data is not None else 0,
        )
        return cls(
            **_run_fields(meta),
            ids=ids,
            probability=column("probability"),
            score=column("score"),
            percentile=column("percentile"),
            factors=TopFactors(
                slots("factor_codes"), slots("factor_impacts"), slots("factor_values")
            ),
            id_index=index,
        )

    def write(self, parquet_path: Path) -> None:
        """The Parquet copy (for people and other tools) and the sidecar next to it."""
        self.write_sidecar(sidecar_of(parquet_path))
        self.write_parquet(parquet_path)

    @classmethod
    def load(cls, parquet_path: Path) -> RunScores:
        """A run from its sidecar, or from the Parquet copy when there is none."""
        sidecar = sidecar_of(parquet_path)
        if sidecar.is_file():
            return cls.read_sidecar(sidecar)
        return cls.read_parquet(parquet_path)

    @classmethod
    def read_parquet(cls, path: Path) -> RunScores:
        """Load a run written by `write_parquet`."""
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path} is not a scorer score file")
        meta = json.loads(raw)
        fields = _run_fields(meta)
        features = fields["features"]
        k = int(meta["top_factors"])
        n = table.num_rows
        lookup = {f.code: i for i, f in enumerate(features)}
        codes = np.full((n, k), NO_FACTOR, dtype=np.int16)
        impacts = np.zeros((n, k), dtype=np.float32)
        values = np.full((n, k), np.nan, dtype=np.float32)
        for slot in range(k):
            column = table.column(f"factor_{slot}").combine_chunks()
            if not isinstance(column, pa.DictionaryArray):
                column = column.dictionary_encode()
            # The file's dictionary may be re-encoded; map its entries back to model columns.
            remap = np.array(
                [lookup[c] for c in column.dictionary.to_pylist()] + [NO_FACTOR], dtype=np.int16
            )
            idx = column.indices.fill_null(len(remap) - 1).to_numpy(zero_copy_only=False)
            codes[:, slot] = remap[idx]
            impacts[:, slot] = table.column(f"factor_impact_{slot}").to_numpy()
            values[:, slot] = table.column(f"factor_value_{slot}").to_numpy()
            table = table.drop_columns(
                [f"factor_{slot}", f"factor_impact_{slot}", f"factor_value_{slot}"]
            )
        return cls(
            **fields,
            ids=table.column("profile_id").combine_chunks(),
            probability=table.column("probability").to_numpy().astype(np.float32),
            score=table.column("score").to_numpy().astype(np.uint8),
            percentile=table.column("percentile").to_numpy().astype(np.uint8),
            factors=TopFactors(codes, impacts, values),
        )


def _run_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The run's identity fields from the metadata `_meta` writes."""
    return {
        "run_id": meta["run_id"],
        "instance": meta["instance"],
        "model_version": int(meta["model_version"]),
        "as_of": datetime.fromisoformat(meta["as_of"]),
        "features": tuple(
            FeatureDef(code, desc, Unit(unit)) for code, desc, unit in meta["features"]
        ),
    }


def sidecar_of(parquet_path: Path) -> Path:
    """Where the sidecar (Arrow IPC, what serving maps) of a Parquet score copy lives."""
    return parquet_path.with_suffix(".arrow")


class SnapshotStore:
    """Instance → latest `RunScores`, replaced atomically by swapping the mapping."""

    def __init__(self) -> None:
        self._by_instance: dict[str, RunScores] = {}
        self._finished: dict[str, datetime] = {}
        self._write_lock = threading.Lock()

    def get(self, instance: str) -> RunScores | None:
        """The snapshot of an instance, if any."""
        return self._by_instance.get(instance)

    def current(self) -> dict[str, RunScores]:
        """The mapping as of now (callers keep using it for one request)."""
        return self._by_instance

    def finished_at(self, instance: str) -> datetime | None:
        """When the served run of an instance finished."""
        return self._finished.get(instance)

    def swap(self, scores: RunScores, finished_at: datetime) -> bool:
        """Serve `scores` for its instance unless a later-finished run is already served.

        The check keeps a slow reload of an older run (another process's poll)
        from replacing the run this process has just finished.
        """
        with self._write_lock:
            served = self._finished.get(scores.instance)
            if served is not None and served > finished_at:
                return False
            self._finished = {**self._finished, scores.instance: finished_at}
            self._by_instance = {**self._by_instance, scores.instance: scores}
            return True

    def drop(self, instances: Sequence[str]) -> None:
        """Stop serving these instances (deleted)."""
        gone = set(instances)
        with self._write_lock:
            if gone & set(self._by_instance):
                self._by_instance = {k: v for k, v in self._by_instance.items() if k not in gone}
                self._finished = {k: v for k, v in self._finished.items() if k not in gone}

    def nbytes(self) -> int:
        """Memory held by every snapshot."""
        return sum(s.nbytes() for s in self._by_instance.values())
