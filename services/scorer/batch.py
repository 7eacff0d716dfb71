"""The pure part of batch scoring: one shard in, its scores out; and the stored reason JSON.

`score_job` reads one shard of a picklable `ShardJob` and scores it, so it runs
the same in a worker process of the local `ShardRunner` or as a Dask task; each
worker loads the model bundle once and keeps it. A task carries the bundle's
folder, not its bytes: a Dask worker reads it from the artifact volume it
shares with the scorer (as BuildIndex's tasks read the encoder bundle), so
the scheduler never holds a copy of the model per shard. Its events come from
the event store's URL (shared volume or s3://). `score_shard` is the same on
events already in memory.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from foresight.errors import FailedPrecondition
from foresight.events.partitions import shard_of
from foresight.events.store import EventStore
from foresight.features.featurize import featurize
from foresight.features.labels import eligible_profiles
from foresight.features.spec import WHOLE_NUMBER_UNITS, FeatureDef, format_factor_values
from foresight.storage.artifacts import materialize
from foresight.storage.db import Database
from foresight.storage.models import ProfileScoreRow
from services.scorer.drift import Sketch, sketch_columns
from services.scorer.explain import configure_native_threads
from services.scorer.factors import NO_FACTOR, TopFactors, importance_of, top_factors
from services.scorer.models import LoadedModel, load_bundle
from services.scorer.records import Bucket, Importance
from services.scorer.snapshot import id_hashes

_json_string = json.encoder.encode_basestring_ascii  # json.dumps of a str, without its overhead


@dataclass(frozen=True)
class ShardScores:
    """Scores of one shard's eligible profiles, and the seconds each stage took."""

    profile_ids: pa.Array  # large_string: pickles as two buffers, joins without a copy per id
    probability: np.ndarray
    factors: TopFactors
    id_hashes: np.ndarray  # uint32: each id's `snapshot.id_hashes`, what the run's index keeps
    seconds: dict[str, float] = field(default_factory=dict)
    features: list[Sketch] | None = None  # one per feature column, for model health (drift.py)


def score_shard(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    as_of: datetime,
    model: LoadedModel,
    k: int,
    threads: int = 1,
) -> ShardScores:
    """Score the eligible profiles of one shard as of `as_of` (pure: no I/O)."""
    t0 = time.perf_counter()
    eligible = eligible_profiles(events, model.config.population, as_of)
    if eligible.len() == 0:
        return ShardScores(
            pa.array([], type=pa.large_string()),
            np.zeros(0, dtype=np.float32),
            TopFactors.empty(k),
            np.zeros(0, dtype=np.uint32),
            {"featurize": time.perf_counter() - t0},
        )
    matrix = featurize(events, profiles, as_of, model.spec, profile_ids=eligible)
    sketches = sketch_columns(matrix.X)
    t1 = time.perf_counter()
    probability = model.predict(matrix.X)
    t2 = time.perf_counter()
    factors = top_factors(model.contributions(matrix.X, threads), matrix.X, k)
    t3 = time.perf_counter()
    seconds = {"featurize": t1 - t0, "predict": t2 - t1, "explain": t3 - t2}
    ids = pa.array(matrix.profile_ids, type=pa.large_string())
    return ShardScores(ids, probability, factors, id_hashes(ids), seconds, sketches)


@dataclass(frozen=True)
class ShardJob:
    """One shard of a run: picklable, so it runs in a worker process or a Dask task."""

    store_root: str  # a folder or a URL
    shards: int
    dataset: str
    shard: int
    parts: tuple[str, ...]
    bundle: str  # model bundle folder
    instance: str
    version: int
    as_of: datetime
    k: int
    explainers: str | None = None  # the scorer's cache of built explainers (a folder)


@functools.lru_cache(maxsize=4)
def _worker_model(bundle: str, instance: str, version: int, explainers: str | None) -> LoadedModel:
    # Loaded once per worker process and kept for the following shards and runs.
    folder = materialize(bundle)
    if not folder.is_dir():
        # A Dask worker that does not share the service's artifact volume (never a
        # local worker: it runs on the service's machine). No path in the message.
        raise FailedPrecondition(
            f"the model bundle of instance '{instance}' v{version} is not readable where "
            "this shard ran: Dask workers must see FORESIGHT_DATA_DIR's artifacts at the "
            "same path as the scorer (a shared volume), or the services must mirror them "
            "to an object store (FORESIGHT_ARTIFACTS_URL)"
        )
    configure_native_threads()
    # A Dask worker on another machine has no such folder: it builds the explainer.
    return load_bundle(folder, instance, version, Path(explainers) if explainers else None)


def score_job(job: ShardJob, profiles: pl.DataFrame | None) -> ShardScores:
    """Read one shard and score it (what a worker process or a Dask task runs)."""
    t0 = time.perf_counter()
    model = _worker_model(job.bundle, job.instance, job.version, job.explainers)
    # Only the columns scoring reads: the others (event ids, SKUs, …) are not decoded.
    events = EventStore(job.store_root, job.shards).read_shard(
        job.dataset, job.shard, job.parts, model.event_columns
    )
    read = time.perf_counter() - t0
    result = score_shard(events, profiles, job.as_of, model, job.k)
    result.seconds["read"] = read
    return result


@dataclass(frozen=True)
class LoadJob:
    """One chunk of a run's rows to render and bulk load into `profile_scores` (picklable:
    a worker process or a Dask task runs it, with its own connection)."""

    database_url: str
    run_id: str
    features: tuple[FeatureDef, ...]
    ids: pa.Array
    probability: np.ndarray  # float32
    score: np.ndarray
    percentile: np.ndarray
    bucket: np.ndarray  # Bucket values
    factors: TopFactors


_BUCKET_NAMES = {int(b): b.name for b in Bucket}


@functools.lru_cache(maxsize=2)
def _worker_database(url: str) -> Database:
    return Database(url)  # one engine per worker process, kept for the following chunks


def load_job(job: LoadJob) -> int:
    """Render a chunk's factor JSON and bulk load its rows (COPY on PostgreSQL)."""
    data = {
        "run_id": [job.run_id] * len(job.ids),
        "profile_id": job.ids.to_pylist(),
        "probability": job.probability.astype(np.float64).tolist(),
        "score": job.score.tolist(),
        "percentile": job.percentile.tolist(),
        "bucket": [_BUCKET_NAMES[b] for b in job.bucket.tolist()],
        "factors": factor_json(job.features, job.factors, keyed=False),
    }
    table = ProfileScoreRow.__table__
    return _worker_database(job.database_url).bulk_load(table, data)  # type: ignore[arg-type]


def profiles_of(profiles: pl.DataFrame | None, shard: int, shards: int) -> pl.DataFrame | None:
    """The profile attributes of one shard's profiles (what its task needs, nothing more)."""
    if profiles is None:
        return None
    return profiles.filter(shard_of(profiles.get_column("profile_id"), shards) == shard)


def factor_json(
    features: Sequence[FeatureDef], factors: TopFactors, keyed: bool = True
) -> list[str]:
    """The reason JSON of each row: its factors' code, text, impact and importance.

    Keyed (exports): a list of objects, `[{"code":…,"text":…,"impact":…,
    "importance":…},…]`. Not keyed (`profile_scores.factors`): a list of
    `[code, text, impact, importance]` arrays, the same values without the key
    names each row would repeat: 30% fewer bytes to store, which is 30% less
    SQLite insert time for a run.

    The text `json.dumps` writes (compact separators), built from pieces: the
    head (`{"code":…,"text":…,"impact":`) of each distinct (code, shown value)
    is rendered once, feature by feature (a feature shown as a whole number
    has one text per whole number, however many fractions of days its
    profiles have); a compiled loop (`factor_kernel`) lays the rows out with
    their impacts (float repr of the value rounded to 6 places, as json writes
    it) and importance tails, and the rows are split at their ends.
    """
    layout = _KEYED if keyed else _POSITIONAL
    # Imported here: Numba loads only where rows are loaded (the shard workers).
    from services.scorer import factor_kernel

    n, k = factors.codes.shape
    if n == 0:
        return []
    codes = factors.codes.astype(np.int64)
    whole = np.array([f.unit in WHOLE_NUMBER_UNITS for f in features] + [False])
    values = np.where(whole[codes], np.rint(factors.values), factors.values)  # NO_FACTOR: last
    # Distinct (code, value bits), sorted by code: each feature's values are one run.
    keys = (codes << 32) | values.view(np.uint32).astype(np.int64)
    distinct, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    distinct_codes = distinct >> 32
    distinct_values = (distinct & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    rendered: list[str] = []
    bounds = np.searchsorted(distinct_codes, np.arange(-1, len(features) + 1)).tolist()
    rendered += [""] * (bounds[1] - bounds[0])  # empty slots (NO_FACTOR sorts first)
    for code, feature in enumerate(features):
        lo, hi = bounds[code + 1], bounds[code + 2]
        if lo == hi:
            continue
        opening = f"{layout.opening}{json.dumps(feature.code)}{layout.middle}"
        shown = format_factor_values(feature, distinct_values[lo:hi].tolist())
        rendered += [f"{opening}{_json_string(value)}{layout.closing}" for value in shown]
    heads, head_start = _ascii_run(rendered)
    # Slots are filled strongest first: a row's factors end at its first empty slot.
    empty = codes == NO_FACTOR
    head = np.where(empty, -1, inverse.reshape(n, k))
    # What np.round(impact, 6) computes before its division: the impact in millionths.
    micros = np.rint(factors.impacts.astype(np.float64) * 1e6)
    plain = np.isfinite(micros) & (np.abs(micros) < factor_kernel.LARGE)
    small = plain & (np.abs(micros) < factor_kernel.SMALL)
    text = np.full((n, k), -1, dtype=np.int64)
    text[small] = micros[small].astype(np.int64) + factor_kernel.SMALL - 1  # -99 … 99 → 0 … 198
    text[small & np.signbit(micros) & (micros == 0)] = len(_SMALL_IMPACTS) - 1  # -0.0
    specials = list(_SMALL_IMPACTS)
    for row, slot in zip(*np.nonzero(~plain & ~empty), strict=True):  # NaN, ±inf, huge
        text[row, slot] = len(specials)
        specials.append(json.dumps(float(micros[row, slot]) / 1e6))
    texts, text_start = _ascii_run(specials)
    more = np.zeros((n, k), dtype=np.int64)
    more[:, :-1] = ~empty[:, 1:]
    rows: np.ndarray = factor_kernel.rows_json(
        heads,
        head_start,
        head,
        np.where(plain, micros, 0).astype(np.int64),
        texts,
        text_start,
        text,
        layout.tail_bytes,
        layout.tail_start,
        2 * importance_of(factors.impacts).astype(np.int64) + more,
    )
    # JSON text never holds a raw newline (strings are escaped): it ends each row.
    return rows.tobytes().decode("ascii").split("\n")[:-1]


def _ascii_run(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ASCII texts end to end, and where each starts (one more start than texts)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8), starts


# What json.dumps writes for the impacts the compiled loop leaves to Python: -99e-6 …
# 99e-6 (exponents, 0.0) and -0.0, last.
_SMALL_IMPACTS = [repr(m / 1e6) for m in range(-99, 100)] + ["-0.0"]


@dataclass(frozen=True)
class _Layout:
    """How a factor is written: its head is `opening` code `middle` text `closing`, where
    the impact follows; then a tail: its importance, and "," if another factor follows,
    at 2 × importance + another follows (importance 0 is never used)."""

    opening: str
    middle: str
    closing: str
    tail_bytes: np.ndarray
    tail_start: np.ndarray

    @classmethod
    def of(cls, opening: str, middle: str, closing: str, tail: str) -> _Layout:
        names = ["", *(i.name for i in Importance)]
        tails = _ascii_run([tail.format(n) + sep for n in names for sep in ("", ",")])
        return cls(opening, middle, closing, *tails)


_KEYED = _Layout.of('{"code":', ',"text":', ',"impact":', ',"importance":"{}"}}')
_POSITIONAL = _Layout.of("[", ",", ",", ',"{}"]')
