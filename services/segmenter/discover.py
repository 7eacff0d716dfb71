"""Segment discovery: cluster the journey embeddings and describe each cluster in traits.

The number of clusters is chosen by silhouette: k-means for every k in a
range on a sample, scored on a smaller sample (silhouette is quadratic),
the best k wins; a caller may fix k instead. The final k-means is fitted on
a larger sample and every profile is assigned to its nearest centre, so
discovery over a million profiles stays a few matrix products.

Each cluster is described two ways against the whole population:

- HIGH INFLUENCE: traits most over-represented in the cluster (lift =
  cluster % / population %), among traits a meaningful part of the cluster
  holds;
- HIGH POPULARITY: traits held by the most members (count).

Its name comes from its top influence traits ("Mostly mobile · Browsed
garden"). Discoveries are versioned: rows in the registry, members (profile,
cluster, distance to the centre) as a Parquet bundle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Lifecycle, Status
from foresight.storage.models import ClusterRow, DiscoveryRow
from services.segmenter.index_store import OWNER
from services.segmenter.index_types import IndexSnapshot
from services.segmenter.traits import TraitCatalog

__all__ = [
    "ClusterInfo",
    "DiscoveryInfo",
    "DiscoveryResult",
    "DiscoveryStore",
    "Members",
    "Trait",
    "discover",
]

log = logging.getLogger("foresight.segmenter.discover")

AUTO_K: Final[tuple[int, ...]] = tuple(range(3, 16))
MAX_CLUSTERS: Final[int] = 50
_SELECT_SAMPLE: Final[int] = 20_000
_SILHOUETTE_SAMPLE: Final[int] = 4_000
_FIT_SAMPLE: Final[int] = 100_000
_ASSIGN_CHUNK: Final[int] = 262_144
_TOP_TRAITS: Final[int] = 20
# Influence only counts traits a real part of the cluster holds: a trait of
# 2 % of members with lift 10 describes a handful of people, not the cluster.
_MIN_INFLUENCE_PERCENT: Final[float] = 10.0
_NAME_MIN_LIFT: Final[float] = 1.25
_NAME_MIN_PERCENT: Final[float] = 30.0
MEMBERS_FILE: Final[str] = "members.parquet"
CENTROIDS_FILE: Final[str] = "centroids.npy"
SUMMARY_FILE: Final[str] = "discovery.json"

Progress = Callable[[str, float, str], None]


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class Trait:
    """A trait of a cluster, with both its influence and popularity figures."""

    code: str
    description: str
    cluster_percent: float
    population_percent: float
    lift: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the cluster row)."""
        return {
            "code": self.code,
            "description": self.description,
            "cluster_percent": self.cluster_percent,
            "population_percent": self.population_percent,
            "lift": self.lift,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trait:
        """Inverse of `to_dict`."""
        return cls(
            code=str(d["code"]),
            description=str(d["description"]),
            cluster_percent=float(d["cluster_percent"]),
            population_percent=float(d["population_percent"]),
            lift=float(d["lift"]),
            count=int(d["count"]),
        )


@dataclass(frozen=True)
class ClusterInfo:
    """A discovered cluster."""

    cluster_id: int
    discovery_version: int
    name: str
    size: int
    share: float
    influence: list[Trait]
    popularity: list[Trait]


@dataclass(frozen=True)
class DiscoveryInfo:
    """A versioned clustering."""

    version: int
    index_version: int
    clusters: list[ClusterInfo]
    chosen_by: str
    created_at: datetime


@dataclass(frozen=True)
class DiscoveryResult:
    """What `discover` computes (not yet stored)."""

    profile_ids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    clusters: list[ClusterInfo]
    chosen_by: str
    scores: dict[int, float]


# ---------------------------------------------------------------- clustering


def _single_thread() -> Any:
    """Run scikit-learn's k-means on one OpenMP thread.

    The k-means fits here are small (a sample of at most 100k rows); measured
    on a 2-core host, OpenMP threading made them 5-15x slower (barrier
    overhead), and the work that scales with the population (assigning every
    profile to a centre) is a NumPy matrix product outside this limit.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="openmp")


def _l2(E: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    return unit


def choose_k(
    vectors: np.ndarray, ks: tuple[int, ...], seed: int = 0
) -> tuple[int, dict[int, float]]:
    """The k with the best silhouette on a sample, and every k's score."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > _SELECT_SAMPLE:
        sample = vectors[rng.choice(len(vectors), _SELECT_SAMPLE, replace=False)]
    scores: dict[int, float] = {}
    for k in ks:
        if k >= len(sample):
            break
        with _single_thread():
            labels = KMeans(k, n_init=2, random_state=seed).fit_predict(sample)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(
            silhouette_score(
                sample, labels, sample_size=min(len(sample), _SILHOUETTE_SAMPLE), random_state=seed
            )
        )
    if not scores:
        return 1, {}
    best = max(scores, key=lambda k: scores[k])
    return best, scores


def fit_clusters(
    vectors: np.ndarray, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, cosine distance to own centre, unit centres) with clusters ordered largest first."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > _FIT_SAMPLE:
        sample = vectors[rng.choice(len(vectors), _FIT_SAMPLE, replace=False)]
    k = max(1, min(k, len(sample)))
    with _single_thread():
        km = KMeans(k, n_init=3, random_state=seed).fit(sample)
    centres = km.cluster_centers_.astype(np.float32)
    half_norm = 0.5 * np.sum(centres**2, axis=1)
    labels = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), _ASSIGN_CHUNK):
        block = vectors[start : start + _ASSIGN_CHUNK] @ centres.T - half_norm
        labels[start : start + len(block)] = np.argmax(block, axis=1)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")  # new id i = old id order[i]
    relabel = np.empty(k, dtype=np.int32)
    relabel[order] = np.arange(k, dtype=np.int32)
    labels = relabel[labels]
    unit = _l2(centres[order])
    distances = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), _ASSIGN_CHUNK):
        rows = slice(start, start + _ASSIGN_CHUNK)
        distances[rows] = 1.0 - np.sum(vectors[rows] * unit[labels[rows]], axis=1)
    return labels, distances, unit


# ---------------------------------------------------------------- description


def describe(
    catalog: TraitCatalog,
    snapshot: IndexSnapshot,
    labels: np.ndarray,
    k: int,
    version: int = 0,
) -> list[ClusterInfo]:
    """Each cluster's size, share, influence and popularity traits, and a generated name."""
    thresholds = catalog.thresholds(snapshot.trait_values)
    T = catalog.matrix(snapshot.trait_bits, snapshot.trait_values, thresholds)
    n = len(labels)
    population = T.sum(axis=0).astype(np.int64)
    population_pct = 100.0 * population / max(n, 1)
    clusters: list[ClusterInfo] = []
    for c in range(k):
        members = labels == c
        size = int(members.sum())
        counts = T[members].sum(axis=0).astype(np.int64)
        pct = 100.0 * counts / max(size, 1)
        traits = [
            Trait(
                code=t.code,
                description=t.description,
                cluster_percent=round(float(pct[j]), 2),
                population_percent=round(float(population_pct[j]), 2),
                lift=round(float(pct[j] / population_pct[j]), 3) if population_pct[j] > 0 else 0.0,
                count=int(counts[j]),
            )
            for j, t in enumerate(catalog.traits)
        ]
        influence = sorted(
            (t for t in traits if t.cluster_percent >= _MIN_INFLUENCE_PERCENT and t.lift > 0),
            key=lambda t: (-t.lift, -t.count, t.code),
        )[:_TOP_TRAITS]
        popularity = sorted(
            (t for t in traits if t.count > 0), key=lambda t: (-t.count, -t.lift, t.code)
        )[:_TOP_TRAITS]
        clusters.append(
            ClusterInfo(
                cluster_id=c,
                discovery_version=version,
                name=_name(influence, popularity),
                size=size,
                share=round(size / max(n, 1), 6),
                influence=influence,
                popularity=popularity,
            )
        )
    return _unique_names(clusters)


def _name(influence: list[Trait], popularity: list[Trait]) -> str:
    """Up to two defining traits: over-represented and held by a good part of the cluster."""
    chosen = [
        t.description
        for t in influence
        if t.lift >= _NAME_MIN_LIFT and t.cluster_percent >= _NAME_MIN_PERCENT
    ][:2]
    if chosen:
        return " · ".join(chosen)
    if popularity:
        return f"Broad: {popularity[0].description}"
    return "Unnamed"


def _unique_names(clusters: list[ClusterInfo]) -> list[ClusterInfo]:
    seen: dict[str, int] = {}
    out: list[ClusterInfo] = []
    for c in clusters:
        n = seen.get(c.name, 0) + 1
        seen[c.name] = n
        if n > 1:
            c = ClusterInfo(
                c.cluster_id,
                c.discovery_version,
                f"{c.name} ({n})",
                c.size,
                c.share,
                c.influence,
                c.popularity,
            )
        out.append(c)
    return out


def discover(
    snapshot: IndexSnapshot,
    catalog: TraitCatalog,
    clusters: int = 0,
    progress: Progress | None = None,
    seed: int = 0,
) -> DiscoveryResult:
    """Cluster a snapshot of the index (k chosen automatically when `clusters` is 0)."""
    report = progress or _no_progress
    n = len(snapshot.profile_ids)
    if clusters < 0 or clusters > MAX_CLUSTERS:
        raise InvalidArgument("clusters", f"must be between 0 (automatic) and {MAX_CLUSTERS}")
    if n < 10:
        raise FailedPrecondition(f"too few profiles to discover segments: {n}")
    # The snapshot is our own copy: normalise it in place rather than copying
    # a million rows again (embeddings are stored unit-norm; this is a guard).
    vectors = snapshot.vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, np.maximum(norms, 1e-12), out=vectors)
    began = time.perf_counter()
    scores: dict[int, float] = {}
    if clusters:
        if clusters > n:
            raise InvalidArgument("clusters", f"more clusters than profiles ({n})")
        k, chosen_by = clusters, f"caller: k={clusters}"
        report("choose", 0.4, chosen_by)
    else:
        report("choose", 0.05, f"choosing the number of clusters among {AUTO_K[0]}–{AUTO_K[-1]}")
        k, scores = choose_k(vectors, AUTO_K, seed)
        chosen_by = (
            f"auto: silhouette {scores[k]:.3f} at k={k}" if scores else "auto: too few profiles"
        )
        report("choose", 0.4, chosen_by)
    report("cluster", 0.45, f"k-means with k={k} over {n:,} profiles")
    labels, distances, centres = fit_clusters(vectors, k, seed)
    report("describe", 0.8, "describing clusters by traits")
    infos = describe(catalog, snapshot, labels, k)
    log.info(
        "discovered",
        extra={"k": k, "profiles": n, "seconds": round(time.perf_counter() - began, 1)},
    )
    return DiscoveryResult(
        profile_ids=snapshot.profile_ids,
        labels=labels,
        distances=distances,
        centroids=centres,
        clusters=infos,
        chosen_by=chosen_by,
        scores=scores,
    )


# ---------------------------------------------------------------- storage


@dataclass(frozen=True)
class Members:
    """A discovery's members: per cluster, profile ids closest to the centre first."""

    version: int
    profile_ids: np.ndarray
    offsets: np.ndarray
    """Cluster c's members are profile_ids[offsets[c]:offsets[c+1]]."""
    centroids: np.ndarray
    names: list[str]

    def of(self, cluster_id: int) -> np.ndarray:
        """Member ids of one cluster."""
        if not 0 <= cluster_id < len(self.offsets) - 1:
            raise NotFound(f"discovery v{self.version} has no cluster {cluster_id}")
        return self.profile_ids[self.offsets[cluster_id] : self.offsets[cluster_id + 1]]


class DiscoveryStore:
    """Discoveries: rows in the registry, members in the artifact store (cached in memory)."""

    def __init__(self, db: Database, artifacts: ArtifactStore, cache: int = 2) -> None:
        self.db = db
        self.artifacts = artifacts
        self.lifecycle = Lifecycle(
            db, artifacts, DiscoveryRow, root="discoveries", owner=OWNER, noun="discovery"
        )
        self._cache: OrderedDict[int, Members] = OrderedDict()
        self._cache_size = cache
        self._lock = threading.Lock()

    def run(self, index_version: int, compute: Callable[[], DiscoveryResult]) -> DiscoveryInfo:
        """A RUNNING discovery row while `compute()` clusters; then publish it (READY),
        or end it FAILED / CANCELLED with nothing published."""
        version = self.lifecycle.allocate(index_version=index_version)
        with self.lifecycle.guard(version):
            self._publish(compute(), version, index_version)
        return self.get(version)

    def _publish(self, result: DiscoveryResult, version: int, index_version: int) -> None:
        """Members bundle first, then the rows (READY, with the clusters) in one commit."""
        order = np.lexsort((result.distances, result.labels))
        members = pl.DataFrame(
            {
                "profile_id": pl.Series(result.profile_ids[order].tolist(), dtype=pl.String),
                "cluster_id": result.labels[order].astype(np.int32),
                "distance": result.distances[order].astype(np.float32),
            }
        )
        summary = {
            "version": version,
            "index_version": index_version,
            "chosen_by": result.chosen_by,
            "silhouette_by_k": {str(k): v for k, v in result.scores.items()},
        }
        metadata = {"kind": "discovery", "version": version}
        with self.lifecycle.writing(version, metadata=metadata) as folder:
            members.write_parquet(folder / MEMBERS_FILE)
            np.save(folder / CENTROIDS_FILE, result.centroids)
            (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))

        def add_clusters(s: Session, row: DiscoveryRow) -> None:
            for c in result.clusters:
                s.add(
                    ClusterRow(
                        discovery_version=version,
                        cluster_id=c.cluster_id,
                        name=c.name[:128],
                        size=c.size,
                        share=c.share,
                        traits={
                            "influence": [t.to_dict() for t in c.influence],
                            "popularity": [t.to_dict() for t in c.popularity],
                        },
                    )
                )

        self.lifecycle.mark_ready(version, None, add_clusters, chosen_by=result.chosen_by)

    def latest_version(self) -> int | None:
        """Newest READY discovery, or None."""
        return self.lifecycle.latest_ready()

    def resolve(self, version: int) -> int:
        """`version`, or the latest when 0; NotFound / FailedPrecondition otherwise."""
        if version < 0:
            raise InvalidArgument("discovery_version", "must not be negative")
        if version == 0:
            latest = self.latest_version()
            if latest is None:
                raise FailedPrecondition("no segments discovered yet; call DiscoverSegments")
            return latest
        with self.db.session() as s:
            row = s.scalar(select(DiscoveryRow).where(DiscoveryRow.version == version))
            if row is None or row.status != Status.READY.value:
                raise NotFound(f"discovery v{version} does not exist")
        return version

    def get(self, version: int = 0) -> DiscoveryInfo:
        """A discovery with its clusters (largest first)."""
        version = self.resolve(version)
        with self.db.session() as s:
            row = s.scalar(select(DiscoveryRow).where(DiscoveryRow.version == version))
            assert row is not None
            rows = s.scalars(
                select(ClusterRow)
                .where(ClusterRow.discovery_version == version)
                .order_by(ClusterRow.size.desc(), ClusterRow.cluster_id)
            )
            clusters = [_cluster(r) for r in rows]
            return DiscoveryInfo(
                version=version,
                index_version=row.index_version,
                clusters=clusters,
                chosen_by=row.chosen_by,
                created_at=row.created_at,
            )

    def cluster(self, version: int, cluster_id: int) -> ClusterInfo:
        """One cluster."""
        version = self.resolve(version)
        with self.db.session() as s:
            row = s.scalar(
                select(ClusterRow).where(
                    ClusterRow.discovery_version == version, ClusterRow.cluster_id == cluster_id
                )
            )
            if row is None:
                raise NotFound(f"discovery v{version} has no cluster {cluster_id}")
            return _cluster(row)

    def members(self, version: int = 0) -> Members:
        """The members of a discovery (read once, then cached)."""
        version = self.resolve(version)
        with self._lock:
            cached = self._cache.get(version)
            if cached is not None:
                self._cache.move_to_end(version)
                return cached
        relative = self.lifecycle.bundle_path(version)
        self.artifacts.verify(relative)
        folder = self.artifacts.path(relative)
        frame = pl.read_parquet(folder / MEMBERS_FILE)
        centroids = np.load(folder / CENTROIDS_FILE)
        k = len(centroids)
        counts = np.bincount(frame["cluster_id"].to_numpy(), minlength=k)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        names = [c.name for c in sorted(self.get(version).clusters, key=lambda c: c.cluster_id)]
        members = Members(
            version=version,
            profile_ids=np.asarray(frame["profile_id"].to_list(), dtype=object),
            offsets=offsets,
            centroids=centroids.astype(np.float32),
            names=names,
        )
        with self._lock:
            self._cache[version] = members
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return members


def _cluster(row: ClusterRow) -> ClusterInfo:
    traits = row.traits or {}
    return ClusterInfo(
        cluster_id=row.cluster_id,
        discovery_version=row.discovery_version,
        name=row.name,
        size=int(row.size),
        share=float(row.share),
        influence=[Trait.from_dict(t) for t in traits.get("influence", [])],
        popularity=[Trait.from_dict(t) for t in traits.get("popularity", [])],
    )
