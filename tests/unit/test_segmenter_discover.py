"""Discovery: automatic cluster count, traits both ways, names, versioned storage, members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.features.journey import BehaviourSpec
from foresight.storage import ArtifactStore, Database
from services.segmenter.discover import discover
from services.segmenter.discovery_store import DiscoveryStore
from services.segmenter.index_types import IndexSnapshot
from services.segmenter.traits import trait_catalog

pytestmark = pytest.mark.unit

SPEC = BehaviourSpec(
    event_types=("application.launch", "commerce.purchases", "commerce.productViews"),
    channels=("mobile", "web"),
    categories=("appliances", "garden", "tools"),
)
# (category, channel, event type) of each planted group.
GROUPS = [
    ("appliances", "web", "commerce.productViews"),
    ("garden", "mobile", "application.launch"),
    ("tools", "web", "commerce.purchases"),
    ("appliances", "mobile", "commerce.purchases"),
]


def planted(n_per: int = 150, seed: int = 0) -> tuple[IndexSnapshot, np.ndarray]:
    """Behaviour vectors of four planted groups; embeddings = noisy group directions."""
    rng = np.random.default_rng(seed)
    names = SPEC.names
    pos = {name: i for i, name in enumerate(names)}
    rows, truth = [], []
    for g, (cat, ch, et) in enumerate(GROUPS):
        X = np.zeros((n_per, SPEC.dim), np.float32)
        X[:, pos[f"category_share__{cat}"]] = 0.8
        X[:, pos["category_share__other"]] = 0.2
        X[:, pos[f"channel_share__{ch}"]] = 0.9
        X[:, pos[f"type_share__{et}"]] = 0.7
        X[:, pos["log_recency_days"]] = np.log1p(rng.uniform(1, 200, n_per))
        X[:, pos["log_monetary"]] = rng.uniform(0, 8, n_per) * (g == 2)
        X[:, pos["log_frequency"]] = np.log1p(rng.integers(1, 40, n_per))
        rows.append(X)
        truth += [g] * n_per
    X = np.vstack(rows)
    truth_arr = np.array(truth)
    centres = rng.normal(size=(len(GROUPS), 12))
    E = centres[truth_arr] + 0.15 * rng.normal(size=(len(X), 12))
    E = (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)
    catalog = trait_catalog(SPEC)
    snap = IndexSnapshot(
        profile_ids=np.array([f"p{i}" for i in range(len(X))], dtype=object),
        vectors=E,
        trait_bits=catalog.fixed_bits(X),
        trait_values=catalog.relative_values(X),
    )
    return snap, truth_arr


def test_auto_count_finds_the_planted_groups_and_describes_them() -> None:
    from sklearn.metrics import adjusted_rand_score

    snap, truth = planted()
    stages: list[str] = []
    result = discover(snap, trait_catalog(SPEC), progress=lambda s, f, m: stages.append(s))
    assert len(result.clusters) == 4, result.chosen_by
    assert result.chosen_by.startswith("auto: silhouette")
    assert adjusted_rand_score(truth, result.labels) > 0.95
    assert {"choose", "cluster", "describe"} <= set(stages)
    sizes = [c.size for c in result.clusters]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == len(truth)
    assert sum(c.share for c in result.clusters) == pytest.approx(1.0)
    for c in result.clusters:
        members = result.labels == c.cluster_id
        (group,) = set(truth[members].tolist())
        cat, ch, _et = GROUPS[group]
        # Influence: over-represented traits, lift = cluster % / population %.
        top = c.influence[0]
        assert top.lift == pytest.approx(top.cluster_percent / top.population_percent, rel=1e-2)
        assert all(a.lift >= b.lift for a, b in zip(c.influence, c.influence[1:], strict=False))
        # Popularity: the most held traits, by count.
        assert all(a.count >= b.count for a, b in zip(c.popularity, c.popularity[1:], strict=False))
        assert {f"category:{cat}", f"channel:{ch}"} <= {t.code for t in c.popularity[:6]}
        assert c.name and c.name != "Unnamed"
    assert len({c.name for c in result.clusters}) == 4
    spenders = next(
        c
        for c in result.clusters
        if GROUPS[int(np.bincount(truth[result.labels == c.cluster_id]).argmax())][0] == "tools"
    )
    assert "value:high_spender" in {t.code for t in spenders.influence}


def test_caller_override_and_bad_counts() -> None:
    snap, _ = planted(40)
    result = discover(snap, trait_catalog(SPEC), clusters=6)
    assert len(result.clusters) == 6 and result.chosen_by == "caller: k=6"
    with pytest.raises(InvalidArgument):
        discover(snap, trait_catalog(SPEC), clusters=-1)
    tiny = IndexSnapshot(
        snap.profile_ids[:5], snap.vectors[:5], snap.trait_bits[:5], snap.trait_values[:5]
    )
    with pytest.raises(FailedPrecondition):
        discover(tiny, trait_catalog(SPEC))


def test_store_versions_clusters_and_members(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    db.migrate()
    store = DiscoveryStore(db, ArtifactStore(tmp_path / "artifacts"))
    with pytest.raises(FailedPrecondition):
        store.get(0)
    snap, _ = planted(60)
    first = store.run(3, lambda: discover(snap, trait_catalog(SPEC), clusters=4))
    second = store.run(3, lambda: discover(snap, trait_catalog(SPEC), clusters=2))
    assert (first.version, second.version) == (1, 2)
    assert store.get(0).version == 2 and len(store.get(1).clusters) == 4
    c = store.cluster(1, 0)
    assert c.influence and c.popularity and c.discovery_version == 1
    members = store.members(1)
    ids = members.of(0)
    assert len(ids) == c.size
    assert sum(len(members.of(i)) for i in range(4)) == 240
    with pytest.raises(NotFound):
        store.cluster(1, 99)
    with pytest.raises(NotFound):
        store.get(7)
