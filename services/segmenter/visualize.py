"""The cluster map: a 2-D projection of a sample of profiles of a discovery.

`project` samples profiles of a discovery, stratified by cluster, projects
their embeddings onto the first two principal components (fitted on the
sample) and labels each point with its cluster. The result is a
`foresight.cluster_map.ClusterMap`; drawing it (PNG, self-contained HTML
page) is the client's job (`foresight.tools.mapview`), never the service's.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from foresight.cluster_map import ClusterMap, MapPoint
from foresight.errors import InvalidArgument
from services.segmenter.discovery_store import Members
from services.segmenter.discovery_types import ClusterInfo
from services.segmenter.index import JourneyIndex

__all__ = ["cluster_quotas", "project"]

DEFAULT_SAMPLE: Final[int] = 5_000
MAX_SAMPLE: Final[int] = 50_000


def cluster_quotas(sizes: np.ndarray, sample_size: int) -> np.ndarray:
    """Points per cluster: proportional to its size (largest remainders), at least one
    for every non-empty cluster, never more than it has, summing to the sample size
    (or to every member when there are fewer)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total <= sample_size:
        return sizes.copy()
    exact = sizes * (sample_size / total)
    quotas: np.ndarray = np.minimum(
        np.maximum(np.floor(exact).astype(np.int64), (sizes > 0).astype(np.int64)), sizes
    )
    left = sample_size - int(quotas.sum())
    if left > 0:
        room = quotas < sizes
        order = [c for c in np.argsort(-(exact - np.floor(exact)), kind="stable") if room[c]]
        for c in order[:left]:
            quotas[c] += 1
    while int(quotas.sum()) > sample_size:  # the minimum of one pushed it over: trim the largest
        quotas[int(np.argmax(quotas))] -= 1
    return quotas


def project(
    index: JourneyIndex,
    members: Members,
    clusters: list[ClusterInfo],
    sample_size: int = 0,
    seed: int = 0,
) -> ClusterMap[ClusterInfo]:
    """Sample members of a discovery still in the index, stratified by cluster (every
    cluster in proportion to its size), and project them to 2-D (PCA)."""
    from sklearn.decomposition import PCA

    sample_size = sample_size or DEFAULT_SAMPLE
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise InvalidArgument("sample_size", f"must be between 1 and {MAX_SAMPLE:,}")
    rng = np.random.default_rng(seed)
    quotas = cluster_quotas(np.diff(members.offsets), sample_size)
    ids: list[str] = []
    cluster_ids: list[int] = []
    vector_parts: list[np.ndarray] = []
    for c, quota in enumerate(quotas):
        cluster_members = members.of(c)
        # Over-draw a little: some members may have been removed from the index since.
        take = min(len(cluster_members), int(quota * 1.2) + 10)
        drawn = rng.choice(len(cluster_members), take, replace=False)
        known, vectors, _unknown = index.vectors_of([str(p) for p in cluster_members[drawn]])
        ids.extend(known[:quota])
        cluster_ids.extend([c] * min(quota, len(known)))
        vector_parts.append(vectors[:quota])
    vectors = np.concatenate(vector_parts) if vector_parts else np.zeros((0, 2), np.float32)
    if len(ids) >= 3:
        xy = PCA(n_components=2, random_state=seed).fit_transform(vectors)
    else:
        xy = np.zeros((len(ids), 2))
    points = [
        MapPoint(pid, float(xy[j, 0]), float(xy[j, 1]), cluster_ids[j]) for j, pid in enumerate(ids)
    ]
    return ClusterMap(members.version, points, clusters, "pca")
