"""Shard work of training: pure functions over one shard of the event store.

All events of a profile live in one shard, so labels and features of a shard
need nothing from the others. These functions take and return plain,
picklable values and import nothing heavy (no LightGBM, no ONNX), so a
process pool starts its workers quickly, and the same functions can run as
Dask tasks at scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from foresight.errors import ForesightError
from foresight.events.store import EventStore
from foresight.features.featurize import featurize
from foresight.features.labels import (
    PopulationFunnel,
    as_utc,
    eligible_profiles,
    goal_labels,
    population_funnel,
)
from foresight.features.spec import FeatureSpec
from foresight.instance import InstanceConfig

__all__ = [
    "AUDIT_PROFILES",
    "LeakageDetected",
    "ShardFeatures",
    "ShardJob",
    "ShardLabels",
    "audit_leakage",
    "shard_features",
    "shard_labels",
]

# Profiles per shard and cutoff whose features the leakage audit recomputes.
AUDIT_PROFILES = 64
SEED = 20_240_601


class LeakageDetected(ForesightError):
    """A feature changed when events at or after the cutoff were hidden: it saw the future."""


@dataclass(frozen=True, slots=True)
class ShardJob:
    """Where one shard's events are: picklable, so it can go to a process or a Dask task."""

    store_root: str
    shards: int
    dataset: str
    shard: int
    parts: tuple[str, ...]

    def read(self) -> pl.DataFrame:
        """All events of the shard."""
        return EventStore(self.store_root, self.shards).read_shard(
            self.dataset, self.shard, self.parts
        )


@dataclass(frozen=True, slots=True)
class ShardLabels:
    """A shard's labels at every cutoff, and its population funnel at the last one."""

    labels: pl.DataFrame  # profile_id, cutoff (Int16 index), label (Int8)
    funnel: PopulationFunnel


def shard_labels(job: ShardJob, cfg: InstanceConfig, cutoffs: Sequence[datetime]) -> ShardLabels:
    """(profile_id, cutoff index, label) of every eligible profile of a shard at every cutoff."""
    events = job.read()
    frames = []
    for i, cutoff in enumerate(cutoffs):
        eligible = eligible_profiles(events, cfg.population, cutoff)
        labels = goal_labels(events, cfg.goal, cutoff, eligible)
        frames.append(labels.with_columns(pl.lit(i, dtype=pl.Int16).alias("cutoff")))
    if not frames:
        empty = pl.DataFrame(schema={"profile_id": pl.String, "cutoff": pl.Int16, "label": pl.Int8})
        return ShardLabels(empty, PopulationFunnel())
    funnel = population_funnel(events, cfg.population, cutoffs[-1])
    return ShardLabels(pl.concat(frames).select("profile_id", "cutoff", "label"), funnel)


@dataclass(frozen=True, slots=True)
class ShardFeatures:
    """Feature rows of one shard over all cutoffs."""

    profile_ids: np.ndarray
    cutoff: np.ndarray  # int16 cutoff index per row
    X: np.ndarray  # float32 [rows, features]
    y: np.ndarray  # int8 labels
    audited: int = 0


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column equality where NaN equals NaN."""
    return np.asarray(np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=0))


def audit_leakage(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    cutoff: datetime,
    spec: FeatureSpec,
    profile_ids: pl.Series,
) -> None:
    """Raise LeakageDetected when a feature depends on events at or after `cutoff`.

    Features of `profile_ids` are computed twice: from all their events and
    from only the events strictly before the cutoff. A featurizer that honours
    the cutoff gives identical matrices.
    """
    if profile_ids.len() == 0:
        return
    cutoff = as_utc(cutoff)
    own = events.filter(pl.col("profile_id").is_in(profile_ids.implode()))
    full = featurize(own, profiles, cutoff, spec, profile_ids=profile_ids)
    past = featurize(
        own.filter(pl.col("timestamp") < cutoff), profiles, cutoff, spec, profile_ids=profile_ids
    )
    if full.X.shape != past.X.shape:
        raise LeakageDetected(
            f"featurization at cutoff {cutoff.isoformat()} changed shape when future events were hidden"
        )
    leaked = [code for code, ok in zip(spec.codes, _same(full.X, past.X), strict=True) if not ok]
    if leaked:
        shown = ", ".join(leaked[:5]) + (" …" if len(leaked) > 5 else "")
        raise LeakageDetected(
            f"leakage: {len(leaked)} feature(s) use events at or after the cutoff "
            f"{cutoff.isoformat()}: {shown}"
        )


def shard_features(
    job: ShardJob,
    feature_spec: FeatureSpec,
    cutoffs: Sequence[datetime],
    labels: pl.DataFrame,
    profiles: pl.DataFrame | None,
    audit_profiles: int = AUDIT_PROFILES,
) -> ShardFeatures:
    """Feature rows of a shard's labelled profiles, each as of its own cutoff, plus the audit."""
    events = job.read()
    ids: list[np.ndarray] = []
    cut: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    audited = 0
    for i, cutoff in enumerate(cutoffs):
        rows = labels.filter(pl.col("cutoff") == i).sort("profile_id")
        if rows.is_empty():
            continue
        pids = rows.get_column("profile_id")
        matrix = featurize(events, profiles, cutoff, feature_spec, profile_ids=pids)
        if matrix.X.shape[0] != rows.height:
            raise RuntimeError("featurize returned a different number of rows than asked for")
        ids.append(np.asarray(matrix.profile_ids, dtype=object))
        cut.append(np.full(rows.height, i, dtype=np.int16))
        xs.append(matrix.X.astype(np.float32, copy=False))
        ys.append(rows.get_column("label").to_numpy().astype(np.int8))
        if audit_profiles > 0:
            sample = pids.sample(min(audit_profiles, pids.len()), seed=SEED + job.shard + i)
            audit_leakage(events, profiles, cutoff, feature_spec, sample)
            audited += sample.len()
    n_features = len(feature_spec.features)
    if not xs:
        return ShardFeatures(
            np.array([], dtype=object),
            np.array([], dtype=np.int16),
            np.zeros((0, n_features), np.float32),
            np.array([], dtype=np.int8),
        )
    return ShardFeatures(
        np.concatenate(ids), np.concatenate(cut), np.vstack(xs), np.concatenate(ys), audited
    )
