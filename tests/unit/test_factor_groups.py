"""Factor groups: near-identical features become one reason, with their total effect."""

from __future__ import annotations

import numpy as np
import pytest

from foresight.factor_groups import FactorGroups, fit_factor_groups
from services.scorer.factors import top_factors

pytestmark = pytest.mark.unit


def _features(seed: int = 0) -> np.ndarray:
    """Column 1 = 2 × column 0 (event count vs purchase count with one event type);
    column 3 is column 2 with gaps; column 4 is independent noise."""
    rng = np.random.default_rng(seed)
    events = rng.poisson(3.0, 5_000).astype(np.float32)
    spend = rng.gamma(2.0, 30.0, 5_000).astype(np.float32)
    noise = rng.normal(size=5_000).astype(np.float32)
    spend_with_gaps = spend.copy()
    return np.column_stack([events, 2 * events, spend, spend_with_gaps, noise])


def test_identical_signals_are_grouped_under_the_most_important_feature() -> None:
    X = _features()
    groups = fit_factor_groups(X, importance=[1.0, 5.0, 3.0, 2.0, 1.0])
    assert groups.leader == (1, 1, 2, 2, 4)
    assert groups.members() == {1: [0, 1], 2: [2, 3]}
    # Independent features stay alone.
    alone = fit_factor_groups(np.random.default_rng(1).normal(size=(500, 3)), [1, 1, 1])
    assert alone.leader == (0, 1, 2) and alone.members() == {}


def test_missing_values_rank_below_every_value() -> None:
    X = _features()
    X[::100, 3] = np.nan  # a few gaps where spend is unknown
    groups = fit_factor_groups(X, importance=[1, 1, 3, 2, 1])
    assert groups.leader[3] == 2  # still the same signal


def test_merge_keeps_the_total_and_top_reasons_are_distinct() -> None:
    groups = FactorGroups(leader=(1, 1, 2, 2, 4))
    contributions = np.array([[0.4, 0.5, 0.3, 0.2, 0.01]])
    merged = groups.merge(contributions)
    np.testing.assert_allclose(merged, [[0.0, 0.9, 0.5, 0.0, 0.01]])
    assert merged.sum() == pytest.approx(contributions.sum())
    # Without groups the top 3 repeat the same two signals; with them, three things.
    X = np.ones((1, 5), dtype=np.float32)
    before = top_factors(contributions, X, 3).codes[0].tolist()
    after = top_factors(merged, X, 3).codes[0].tolist()
    assert sorted(before) == [0, 1, 2] and after == [1, 2, 4]


def test_no_groups_is_the_identity_and_shapes_are_checked() -> None:
    contributions = np.arange(6.0).reshape(2, 3)
    assert FactorGroups().merge(contributions) is contributions
    with pytest.raises(ValueError, match="columns"):
        FactorGroups(leader=(0, 0)).merge(contributions)
