"""Factor groups: near-identical features speak as one reason.

Two features can carry the same signal (the event count and the purchase
count when a dataset has one event type; a 30-day and a 90-day count of a
rare event). Left alone, both would appear among a profile's top reasons,
saying the same thing twice. At training time `fit_factor_groups` joins
features whose rank correlation on a sample of the training rows is at least
`threshold` (missing values rank as their own lowest value) and names each
group's leader: its most important member. The groups travel in the model
bundle (factor_groups.json); `FactorGroups.merge` adds each member's
TreeSHAP contribution to its leader's — contributions are additive, so the
group's total effect is kept exactly and the top-k reasons say k different
things. Pure numpy: the trainer and the scorer both use it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

__all__ = ["CORRELATION_THRESHOLD", "SAMPLE_ROWS", "FactorGroups", "fit_factor_groups"]

CORRELATION_THRESHOLD = 0.95
SAMPLE_ROWS = 20_000
_SEED = 20_240_601


class FactorGroups(BaseModel):
    """For every feature column, the column whose factor speaks for it (itself if alone)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    leader: tuple[int, ...] = ()
    threshold: float = CORRELATION_THRESHOLD

    def merge(self, contributions: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """[n, F] contributions with each group's total on its leader, zero on the others."""
        if not self.leader or all(i == j for i, j in enumerate(self.leader)):
            return contributions
        leader = np.asarray(self.leader, dtype=np.int64)
        if contributions.shape[1] != len(leader):
            raise ValueError(
                f"contributions have {contributions.shape[1]} columns, the groups {len(leader)}"
            )
        merged = np.zeros_like(contributions)
        for column in np.unique(leader):
            members = np.flatnonzero(leader == column)
            merged[:, column] = contributions[:, members].sum(axis=1)
        return merged

    def members(self) -> dict[int, list[int]]:
        """Groups of two or more columns, by leader."""
        out: dict[int, list[int]] = {}
        for column, lead in enumerate(self.leader):
            out.setdefault(lead, []).append(column)
        return {lead: cols for lead, cols in out.items() if len(cols) > 1}


def _ranks(X: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Column-wise ranks (ties share the order they sort in); NaN below every value."""
    filled = np.where(np.isnan(X), -np.inf, X).astype(np.float64)
    order = np.argsort(filled, axis=0, kind="stable")
    ranks = np.empty_like(filled)
    rows = np.arange(filled.shape[0], dtype=np.float64)
    np.put_along_axis(ranks, order, rows[:, None], axis=0)
    # Equal values must share a rank, or a constant pair would look uncorrelated.
    for j in range(filled.shape[1]):
        _, first, inverse = np.unique(filled[:, j], return_index=True, return_inverse=True)
        ranks[:, j] = ranks[first, j][inverse]
    return ranks


def fit_factor_groups(
    X: npt.NDArray[np.floating],
    importance: npt.ArrayLike,
    threshold: float = CORRELATION_THRESHOLD,
) -> FactorGroups:
    """Groups of features with |rank correlation| ≥ threshold, led by the most important."""
    n, f = X.shape
    weight = np.asarray(importance, dtype=np.float64)
    if n < 2 or f < 2:
        return FactorGroups(leader=tuple(range(f)), threshold=threshold)
    rows = np.arange(n)
    if n > SAMPLE_ROWS:
        rows = np.sort(np.random.default_rng(_SEED).choice(n, SAMPLE_ROWS, replace=False))
    ranks = _ranks(np.asarray(X[rows], dtype=np.float64))
    centred = ranks - ranks.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    varies = norm > 0
    corr = np.zeros((f, f))
    safe = np.where(varies, norm, 1.0)
    corr[np.ix_(varies, varies)] = (centred[:, varies].T @ centred[:, varies]) / np.outer(
        safe[varies], safe[varies]
    )
    parent = list(range(f))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(np.abs(corr) >= threshold, k=1)), strict=True):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for column in range(f):
        groups.setdefault(root(column), []).append(column)
    leader = list(range(f))
    for members in groups.values():
        # The most important member leads; ties go to the first column.
        lead = max(members, key=lambda c: (weight[c], -c))
        for column in members:
            leader[column] = lead
    return FactorGroups(leader=tuple(leader), threshold=threshold)
