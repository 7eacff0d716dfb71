"""Lookalike expansion and placement on a synthetic index."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from foresight.errors import InvalidArgument
from services.segmenter.discovery_store import Members
from services.segmenter.embedding import EmbeddedShard
from services.segmenter.index import JourneyIndex
from services.segmenter.index_types import IndexInfo, IndexParams
from services.segmenter.queries import (
    expand,
    expansion_target,
    place,
    query_points,
    reach_curve,
)

pytestmark = pytest.mark.unit

DIM = 8


def blobs(n_per: int = 200, k: int = 4, seed: int = 0) -> tuple[JourneyIndex, np.ndarray]:
    """An index of k well separated groups; returns it and each profile's group."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM)[:k] * 3
    group = np.repeat(np.arange(k), n_per)
    E = centres[group] + 0.3 * rng.normal(size=(len(group), DIM))
    E = (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)
    ids = np.array([f"g{g}-{i}" for i, g in enumerate(group)], dtype=object)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    shard = EmbeddedShard(
        ids, E, np.zeros((len(ids), 1), np.uint8), np.zeros((len(ids), 3), np.float32)
    )
    info = IndexInfo(1, "shop", "cosine", DIM, 16, 100, 64, 1, 0, "", now, now)
    return JourneyIndex.create(info, [shard], IndexParams(ef=64)), group


def test_tight_seed_is_one_query_point_and_lookalikes_share_its_group() -> None:
    index, _group = blobs()
    seed = [f"g1-{i}" for i in range(200, 220)]
    result = expand(index, seed, target_size=100)
    assert result.query_points == 1 and result.seed_size == 20
    assert len(result.lookalikes) == 100
    assert not {lk.profile_id for lk in result.lookalikes} & set(seed)
    assert all(lk.profile_id.startswith("g1-") for lk in result.lookalikes)
    sims = [lk.similarity for lk in result.lookalikes]
    assert sims == sorted(sims, reverse=True) and 0.0 <= sims[-1] <= sims[0] <= 1.0


def test_spread_seed_uses_several_points_and_keeps_its_mix() -> None:
    index, _ = blobs()
    seed = [f"g0-{i}" for i in range(0, 30)] + [f"g3-{i}" for i in range(600, 630)]
    result = expand(index, seed, target_size=120)
    assert result.query_points >= 2
    groups = [lk.profile_id.split("-")[0] for lk in result.lookalikes]
    # A single centroid between g0 and g3 would resemble neither; both halves stay.
    assert groups.count("g0") >= 50 and groups.count("g3") >= 50


def test_default_target_min_similarity_unknown_ids_and_empty_seed() -> None:
    index, _ = blobs(50)
    result = expand(index, ["g2-100", "g2-101", "ghost"])
    assert result.unknown_seed_ids == ["ghost"]
    assert len(result.lookalikes) == 10  # 5 × the known seed (under a tenth of 198)
    assert result.reach[-1].audience_size == 10  # the curve ends at the target
    assert len(expand(index, ["g2-100", "g2-101"], target_multiple=3.5).lookalikes) == 7
    strict = expand(index, ["g2-100"], target_size=150, min_similarity=0.97)
    assert strict.lookalikes and all(lk.similarity >= 0.97 for lk in strict.lookalikes)
    assert expand(index, ["ghost"]).lookalikes == []
    with pytest.raises(InvalidArgument):
        expand(index, [])
    with pytest.raises(InvalidArgument):
        expand(index, ["g2-100"], min_similarity=1.5)


def test_default_target_is_capped_at_a_tenth_of_the_candidates() -> None:
    assert expansion_target(seed_size=500, candidates=1_000) == 100
    assert expansion_target(seed_size=3, candidates=1_000) == 15
    assert expansion_target(seed_size=3, candidates=1_000, target_size=2_000) == 1_000
    assert expansion_target(seed_size=3, candidates=1_000, target_multiple=10) == 30
    assert expansion_target(seed_size=1, candidates=5) == 1


def test_target_multiple_must_be_sane() -> None:
    index, _ = blobs(20)
    with pytest.raises(InvalidArgument):
        expand(index, ["g2-40"], target_multiple=-1)


def test_reach_curve_is_monotone() -> None:
    sims = np.linspace(0.2, 0.99, 500)
    curve = reach_curve(sims, 0.5)
    thresholds = [p.similarity for p in curve]
    sizes = [p.audience_size for p in curve]
    assert thresholds == sorted(thresholds, reverse=True)
    assert sizes == sorted(sizes) and sizes[-1] == int((sims >= 0.5).sum())
    assert reach_curve(np.array([]), 0.0) == []


def test_query_points_of_one_profile() -> None:
    points, shares = query_points(np.eye(DIM, dtype=np.float32)[:1])
    assert points.shape == (1, DIM) and shares.tolist() == [1.0]


def test_place_reports_cluster_and_distance() -> None:
    index, _ = blobs(30)
    centroids = (np.eye(DIM)[:4]).astype(np.float32)
    members = Members(
        1, np.array([], dtype=object), np.zeros(5, np.int64), centroids, ["a", "b", "c", "d"]
    )
    _, v, _ = index.vectors_of(["g2-70"])
    placement = place(index, v[0], 3, members, exclude="g2-70")
    assert placement.cluster_id == 2 and placement.cluster_name == "c"
    assert 0.0 <= placement.distance < 0.3
    assert len(placement.nearest) == 3 and all(n.profile_id != "g2-70" for n in placement.nearest)
    assert place(index, v[0], 3, None).cluster_id == -1
