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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from foresight.errors import FailedPrecondition
from foresight.events.partitions import shard_of
from foresight.events.store import EventStore
from foresight.features.featurize import featurize
from foresight.features.labels import eligible_profiles
from foresight.features.spec import format_factor_value
from foresight.storage.artifacts import materialize
from services.scorer.drift import Sketch, sketch_columns
from services.scorer.explain import configure_native_threads
from services.scorer.factors import NO_FACTOR, TopFactors, importance_of, top_factors
from services.scorer.models import LoadedModel, load_bundle
from services.scorer.records import Importance
from services.scorer.snapshot import RunScores

_IMPORTANCE_NAMES = {int(i): i.name for i in Importance}


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


def profiles_of(profiles: pl.DataFrame | None, shard: int, shards: int) -> pl.DataFrame | None:
    """The profile attributes of one shard's profiles (what its task needs, nothing more)."""
    if profiles is None:
        return None
    return profiles.filter(shard_of(profiles.get_column("profile_id"), shards) == shard)


def factor_json(
    scores: RunScores, start: int, stop: int, heads: dict[tuple[int, float], str] | None = None
) -> Iterator[str]:
    """The `profile_scores.factors` JSON of rows [start, stop): code, text, impact, importance.

    Written as text from pieces: each (code, value)'s `{"code":…,"text":…,` is
    rendered once per run (`heads`), the impact with float repr as json does.
    """
    features = scores.features
    heads = {} if heads is None else heads
    codes = scores.factors.codes[start:stop].tolist()
    impacts = scores.factors.impacts[start:stop].astype(np.float64).round(6).tolist()
    values = scores.factors.values[start:stop].tolist()
    importance = importance_of(scores.factors.impacts[start:stop]).tolist()
    dumps = json.dumps
    tails = {i: f',"importance":"{name}"}}' for i, name in _IMPORTANCE_NAMES.items()}
    for row_codes, row_impacts, row_values, row_importance in zip(
        codes, impacts, values, importance, strict=True
    ):
        items = []
        for code, impact, value, imp in zip(
            row_codes, row_impacts, row_values, row_importance, strict=True
        ):
            if code == NO_FACTOR:
                break
            head = heads.get((code, value))
            if head is None:
                feature = features[code]
                text = format_factor_value(feature, value)
                head = f'{{"code":{dumps(feature.code)},"text":{dumps(text)},"impact":'
                if value == value:  # NaN never equals a key: render those every time
                    heads[(code, value)] = head
            items.append(f"{head}{dumps(impact)}{tails[imp]}")
        yield f"[{','.join(items)}]"
