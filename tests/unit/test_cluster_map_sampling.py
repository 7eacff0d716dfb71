"""The cluster map samples per cluster: every cluster appears, in proportion to its size."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.segmenter.discovery_store import Members
from services.segmenter.embedding import EmbeddedShard
from services.segmenter.index import JourneyIndex
from services.segmenter.index_types import IndexInfo, IndexParams
from services.segmenter.visualize import cluster_quotas, project

pytestmark = pytest.mark.unit

DIM = 8
SIZES = [500, 300, 150, 40, 10]  # sorted by cluster, the smallest last (the old sampler lost them)


def indexed_members() -> tuple[JourneyIndex, Members]:
    rng = np.random.default_rng(3)
    cluster = np.repeat(np.arange(len(SIZES)), SIZES)
    E = np.eye(DIM)[cluster] * 3 + 0.3 * rng.normal(size=(len(cluster), DIM))
    E = (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)
    ids = np.array([f"c{c}-{i}" for i, c in enumerate(cluster)], dtype=object)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    shard = EmbeddedShard(
        ids, E, np.zeros((len(ids), 1), np.uint8), np.zeros((len(ids), 3), np.float32)
    )
    info = IndexInfo(1, "shop", "cosine", DIM, 16, 100, 64, 1, 0, "", now, now)
    index = JourneyIndex.create(info, [shard], IndexParams(ef=64))
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    members = Members(1, ids, offsets, np.eye(DIM)[: len(SIZES)], [f"c{c}" for c in range(5)])
    return index, members


def test_every_cluster_is_on_the_map_in_proportion() -> None:
    index, members = indexed_members()
    sample = 200
    cmap = project(index, members, [], sample_size=sample)
    counts = Counter(p.cluster_id for p in cmap.points)
    assert sum(counts.values()) == sample
    assert set(counts) == set(range(len(SIZES)))
    total = sum(SIZES)
    for c, size in enumerate(SIZES):
        assert abs(counts[c] - sample * size / total) <= 1, (c, counts[c])
    # Each point is labelled with its own cluster.
    assert all(p.profile_id.startswith(f"c{p.cluster_id}-") for p in cmap.points)


def test_a_sample_larger_than_the_population_shows_everyone() -> None:
    index, members = indexed_members()
    assert len(project(index, members, [], sample_size=5_000).points) == sum(SIZES)


@given(
    sizes=st.lists(st.integers(0, 10_000), min_size=1, max_size=30),
    sample=st.integers(1, 50_000),
)
def test_quotas_sum_bound_and_keep_every_cluster(sizes: list[int], sample: int) -> None:
    quotas = cluster_quotas(np.array(sizes), sample)
    arr = np.array(sizes)
    assert (quotas <= arr).all() and (quotas >= 0).all()
    assert int(quotas.sum()) == min(sample, int(arr.sum()))
    nonempty = int((arr > 0).sum())
    if sample >= nonempty:
        assert ((quotas > 0) == (arr > 0)).all()
