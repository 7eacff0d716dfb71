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

import numpy as np
import polars as pl
import pyarrow as pa

from foresight.errors import FailedPrecondition
from foresight.events.partitions import shard_of
from foresight.events.store import EventStore
from foresight.features.featurize import featurize
from foresight.features.labels import eligible_profiles
from foresight.features.spec import FeatureDef, format_factor_values
from foresight.storage.artifacts import materialize
from foresight.storage.db import Database
from foresight.storage.models import ProfileScoreRow
from services.scorer.drift import Sketch, sketch_columns
from services.scorer.explain import configure_native_threads
from services.scorer.factors import NO_FACTOR, TopFactors, importance_of, top_factors
from services.scorer.models import LoadedModel, load_bundle
from services.scorer.records import Bucket, Importance

_ROW_END = "]\n"
_IMPORTANCE_TAILS = [f',"importance":"{i.name}"}}' for i in Importance]
# What follows a factor's impact: its importance, then "," if another factor follows, else
# the row's end. Indexed [importance code, another factor follows]; an empty slot adds nothing.
_TAILS = np.array(
    [["", ""], *([f"{tail}{_ROW_END}", f"{tail},"] for tail in _IMPORTANCE_TAILS)],
    dtype=object,
)
_json_string = json.encoder.encode_basestring_ascii  # json.dumps of a str, without its overhead


@dataclass(frozen=True)
class ShardScores:
    """Scores of one shard's eligible profiles, and the seconds each stage took."""

    profile_ids: np.ndarray
    probability: np.ndarray
    factors: TopFactors
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
            np.array([], dtype=object),
            np.zeros(0, dtype=np.float32),
            TopFactors.empty(k),
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
    return ShardScores(matrix.profile_ids, probability, factors, seconds, sketches)


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


@functools.lru_cache(maxsize=4)
def _worker_model(bundle: str, instance: str, version: int) -> LoadedModel:
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
    return load_bundle(folder, instance, version)


def score_job(job: ShardJob, profiles: pl.DataFrame | None) -> ShardScores:
    """Read one shard and score it (what a worker process or a Dask task runs)."""
    t0 = time.perf_counter()
    model = _worker_model(job.bundle, job.instance, job.version)
    events = EventStore(job.store_root, job.shards).read_shard(job.dataset, job.shard, job.parts)
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


_LOAD_COLUMNS = ("run_id", "profile_id", "probability", "score", "percentile", "bucket", "factors")
_BUCKET_NAMES = {int(b): b.name for b in Bucket}


@functools.lru_cache(maxsize=2)
def _worker_database(url: str) -> Database:
    return Database(url)  # one engine per worker process, kept for the following chunks


def load_job(job: LoadJob) -> int:
    """Render a chunk's factor JSON and bulk load its rows (COPY on PostgreSQL)."""
    rows = list(
        zip(
            [job.run_id] * len(job.ids),
            job.ids.to_pylist(),
            job.probability.astype(np.float64).tolist(),
            job.score.tolist(),
            job.percentile.tolist(),
            [_BUCKET_NAMES[b] for b in job.bucket.tolist()],
            factor_json(job.features, job.factors),
            strict=True,
        )
    )
    table = ProfileScoreRow.__table__
    return _worker_database(job.database_url).bulk_load(table, _LOAD_COLUMNS, rows)  # type: ignore[arg-type]


def profiles_of(profiles: pl.DataFrame | None, shard: int, shards: int) -> pl.DataFrame | None:
    """The profile attributes of one shard's profiles (what its task needs, nothing more)."""
    if profiles is None:
        return None
    return profiles.filter(shard_of(profiles.get_column("profile_id"), shards) == shard)


def factor_json(features: Sequence[FeatureDef], factors: TopFactors) -> list[str]:
    """The `profile_scores.factors` JSON of each row: code, text, impact, importance.

    The text `json.dumps` of the factor dicts writes, built from pieces: the
    `{"code":…,"text":…,"impact":` of each distinct (code, value) is rendered
    once, feature by feature, the impact with float repr as json does, the
    importance and what follows it (`,` or the row's end) from a small table.
    Every row's pieces are joined in one call and split at the row ends.
    """
    n, k = factors.codes.shape
    if n == 0:
        return []
    codes = factors.codes.astype(np.int64)
    # Distinct (code, value bits), sorted by code: each feature's values are one run.
    keys = (codes << 32) | factors.values.view(np.uint32).astype(np.int64)
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
        head = f'{{"code":{json.dumps(feature.code)},"text":'
        texts = format_factor_values(feature, distinct_values[lo:hi].tolist())
        rendered += [f'{head}{_json_string(text)},"impact":' for text in texts]
    impacts = factors.impacts.astype(np.float64).round(6).reshape(-1)
    as_json = float.__repr__ if np.isfinite(impacts).all() else json.dumps  # NaN, Infinity
    # Slots are filled strongest first: a row's factors end at its first empty slot.
    empty = codes == NO_FACTOR
    more = np.zeros((n, k), dtype=np.int64)
    more[:, :-1] = ~empty[:, 1:]
    tails = _TAILS[np.where(empty, 0, importance_of(factors.impacts)), more]
    tails[:, 0] = np.where(empty[:, 0], _ROW_END, tails[:, 0])  # no factor at all: "[]"
    pieces = np.empty((n, 3 * k + 1), dtype=object)
    pieces[:, 0] = "["
    pieces[:, 1::3] = np.array(rendered, dtype=object)[inverse].reshape(n, k)
    pieces[:, 2::3] = np.array(list(map(as_json, impacts.tolist())), dtype=object).reshape(n, k)
    pieces[:, 3::3] = tails
    pieces[:, 2::3][empty] = ""
    # JSON text never holds a raw newline (strings are escaped): it ends each row.
    return "".join(pieces.reshape(-1).tolist()).split("\n")[:-1]
