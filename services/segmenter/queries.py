"""Queries on the journey index: place a journey, find similar profiles, expand a seed.

Similarities are cosine similarities mapped to 0–1 ((1 + cos) / 2), the
scale the API promises.

Expansion summarises the seed into query points: a tight seed is one point
(its mean direction); a spread-out seed is clustered and each cluster is a
point, so a seed mixing two audiences does not collapse into a centroid that
lies between them and resembles neither. A candidate's similarity blends its
cosine to the nearest query point (every part of a spread seed keeps its
lookalikes) with its cosine to the seed's mean direction (what the whole seed
shares, e.g. recent, frequent activity across personas). The blend is
measured, not guessed: on generated data (50k profiles, a 1 % seed of future
purchasers, 10x lookalikes) nearest point alone gave a conversion lift of
1.6-1.9x, the mean direction alone 3.0x, the even blend 2.9x while still
separating a two-group seed (see the unit tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from foresight.errors import InvalidArgument
from services.segmenter.discovery_store import Members
from services.segmenter.index import JourneyIndex

__all__ = [
    "Expansion",
    "Neighbor",
    "Placement",
    "ReachPoint",
    "expand",
    "place",
    "query_points",
    "similarity01",
]

MAX_K: Final[int] = 1_000
MAX_QUERY_POINTS: Final[int] = 32
# Mean cosine of seed members to their mean direction above which the seed
# counts as one audience (one query point).
TIGHT_SEED: Final[float] = 0.9
_SEED_FIT_SAMPLE: Final[int] = 20_000
_REACH_POINTS: Final[int] = 21
#: Default lookalikes per seed profile (capped at a tenth of the other profiles).
DEFAULT_TARGET_MULTIPLE: Final[int] = 5
#: Weight of the seed's mean direction in a lookalike's similarity (see above).
CENTRE_WEIGHT: Final[float] = 0.5


def similarity01(cosine: np.ndarray) -> np.ndarray:
    """Cosine (−1…1) → 0…1."""
    return np.clip((np.asarray(cosine, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)


class Neighbor(NamedTuple):
    """A profile and its similarity (0–1).

    A named tuple, not a frozen dataclass: expansion creates 100k of them and
    tuple construction is several times cheaper.
    """

    profile_id: str
    similarity: float


@dataclass(frozen=True)
class Placement:
    """Where a journey lands: its cluster (or -1), distance to the centre, nearest profiles."""

    cluster_id: int
    cluster_name: str
    distance: float
    nearest: list[Neighbor]


@dataclass(frozen=True)
class ReachPoint:
    """Lookalikes at or above a similarity."""

    similarity: float
    audience_size: int


@dataclass(frozen=True)
class Expansion:
    """Ranked lookalikes of a seed with the reach curve."""

    lookalikes: list[Neighbor]
    reach: list[ReachPoint]
    unknown_seed_ids: list[str]
    seed_size: int
    query_points: int


def check_k(k: int, default: int = 10) -> int:
    """k or its default, within 1…MAX_K."""
    k = k or default
    if not 1 <= k <= MAX_K:
        raise InvalidArgument("k", f"must be between 1 and {MAX_K:,}")
    return k


def place(
    index: JourneyIndex,
    vector: np.ndarray,
    k: int,
    members: Members | None,
    exclude: str | None = None,
) -> Placement:
    """Nearest cluster centre of the latest discovery and the k nearest profiles."""
    v = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    hits = index.knn(v, k, exclude={exclude} if exclude else None)[0]
    nearest = [Neighbor(pid, float(similarity01(np.array(cos)))) for pid, cos in hits]
    if members is None or len(members.centroids) == 0:
        return Placement(-1, "", 0.0, nearest)
    sims = members.centroids @ v[0]
    c = int(np.argmax(sims))
    return Placement(c, members.names[c], float(1.0 - sims[c]), nearest)


def query_points(seed: np.ndarray, seed_rng: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(unit query points, share of the seed each stands for)."""
    n = len(seed)
    mean = seed.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    centre = mean / max(norm, 1e-12)
    tightness = float(np.mean(seed @ centre))
    if n == 1 or tightness >= TIGHT_SEED:
        return centre.reshape(1, -1).astype(np.float32), np.ones(1)
    q = int(min(MAX_QUERY_POINTS, n, max(2, round(math.sqrt(n / 4)))))
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed_rng)
    sample = seed if n <= _SEED_FIT_SAMPLE else seed[rng.choice(n, _SEED_FIT_SAMPLE, replace=False)]
    from threadpoolctl import threadpool_limits

    # A small fit: OpenMP threading costs more than it saves here.
    with threadpool_limits(1, user_api="openmp"):
        km = KMeans(q, n_init=2, random_state=seed_rng).fit(sample)
    labels = km.predict(seed)
    points = km.cluster_centers_.astype(np.float32)
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    shares = np.bincount(labels, minlength=q) / n
    keep = shares > 0
    return points[keep], shares[keep] / shares[keep].sum()


def expansion_target(
    seed_size: int, candidates: int, target_size: int = 0, target_multiple: float = 0.0
) -> int:
    """How many lookalikes to return: the explicit size, else the multiple of the seed,
    else DEFAULT_TARGET_MULTIPLE × seed but at most a tenth of the candidates; never
    more than there are candidates."""
    if target_size:
        target = target_size
    elif target_multiple:
        target = math.ceil(target_multiple * seed_size)
    else:
        target = min(DEFAULT_TARGET_MULTIPLE * seed_size, max(1, candidates // 10))
    return min(target, candidates)


def expand(
    index: JourneyIndex,
    seed_ids: list[str],
    target_size: int = 0,
    min_similarity: float = 0.0,
    target_multiple: float = 0.0,
) -> Expansion:
    """Lookalikes of a seed (seed excluded), ranked, with the reach curve up to the target."""
    if not seed_ids:
        raise InvalidArgument("seed", "is empty")
    if target_size < 0:
        raise InvalidArgument("target_size", "must not be negative")
    if not 0.0 <= target_multiple <= 1000.0 or math.isnan(target_multiple):
        raise InvalidArgument("target_multiple", "must be between 0 and 1,000")
    if not 0.0 <= min_similarity <= 1.0:
        raise InvalidArgument("min_similarity", "must be between 0 and 1")
    known, seed, unknown = index.vectors_of(seed_ids)
    if not known:
        return Expansion([], [], unknown, 0, 0)
    points, _shares = query_points(seed)
    centre = seed.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    ids, score, _which = index.exact_scan(points, known, centre, CENTRE_WEIGHT)
    best = similarity01(score)
    target = expansion_target(len(known), len(ids), target_size, target_multiple)
    if target < len(ids):
        picked = np.argpartition(-best, target - 1)[:target] if target else np.zeros(0, np.int64)
    else:
        picked = np.arange(len(ids))
    picked = picked[np.argsort(-best[picked], kind="stable")]
    if min_similarity > 0:
        picked = picked[best[picked] >= min_similarity]
    lookalikes = list(map(Neighbor, ids[picked].tolist(), best[picked].tolist()))
    return Expansion(
        lookalikes=lookalikes,
        reach=reach_curve(best, float(best[picked[-1]])) if len(picked) else [],
        unknown_seed_ids=unknown,
        seed_size=len(known),
        query_points=len(points),
    )


def reach_curve(similarities: np.ndarray, floor: float = 0.0) -> list[ReachPoint]:
    """Audience size at evenly spaced similarity thresholds, from the best down to the floor.

    Counted over every candidate; `expand` puts the floor at its last returned
    lookalike, so the curve ends at the target.
    """
    if len(similarities) == 0:
        return []
    ordered = np.sort(similarities)
    top = float(ordered[-1])
    low = max(floor, float(ordered[0]))
    if top <= low:
        return [ReachPoint(round(top, 4), len(ordered))]
    out: list[ReachPoint] = []
    for t in np.linspace(top, low, _REACH_POINTS):
        size = len(ordered) - int(np.searchsorted(ordered, t, side="left"))
        out.append(ReachPoint(round(float(t), 4), size))
    return out
