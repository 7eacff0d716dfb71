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
garden"). Storing discoveries as versions is `discovery_store`'s job; the
records they are made of live in `discovery_types`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import numpy as np

from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.progress import Progress, no_progress
from services.segmenter.discovery_types import ClusterInfo, DiscoveryResult, Trait
from services.segmenter.index_types import IndexSnapshot
from services.segmenter.traits import TraitCatalog

__all__ = ["choose_k", "describe", "discover", "fit_clusters"]

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
    report = progress or no_progress
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
