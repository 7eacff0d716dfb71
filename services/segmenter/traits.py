"""Interpretable binary traits of profiles, read off their behaviour vectors.

Clusters are described by traits a marketer understands ("Browsed
appliances", "Mostly mobile", "High spender") rather than by embedding
coordinates. Every trait is a function of the behaviour vector alone, so it
is computed in the same shard pass that embeds a profile and needs no second
read of the events.

Two kinds:

- fixed traits: a threshold on one component (a share, a recency), stored as
  bits per profile;
- relative traits ("High spender" = top 20 % of spenders): thresholds depend
  on the population, so the raw values are stored and the thresholds are
  taken when a discovery runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from foresight.features.journey import BehaviourSpec

__all__ = [
    "RELATIVE_TRAITS",
    "TraitCatalog",
    "TraitDef",
    "trait_catalog",
]

# A mix component counts when it is at least this share of the profile's
# (decayed) activity: one stray event should not make a trait.
_MIN_TYPE_SHARE: Final[float] = 0.05
_MIN_CATEGORY_SHARE: Final[float] = 0.20
_MOSTLY: Final[float] = 0.5

_TYPE_TEXT: Final[dict[str, str]] = {
    "commerce.purchases": "Purchased",
    "commerce.productViews": "Viewed products",
    "commerce.productListAdds": "Added to cart",
    "web.webpagedetails.pageViews": "Visited web pages",
    "application.launch": "Used the app",
    "message.opened": "Opened emails",
    "message.clicked": "Clicked emails",
}


@dataclass(frozen=True)
class TraitDef:
    """One trait: a stable code and a human description."""

    code: str
    description: str


@dataclass(frozen=True)
class RelativeTrait:
    """A trait held by the top share of profiles with a positive value of one scalar."""

    code: str
    description: str
    scalar: str
    top_share: float


#: Population-relative traits, from the scalar block of the behaviour vector.
RELATIVE_TRAITS: Final[tuple[RelativeTrait, ...]] = (
    RelativeTrait("value:high_spender", "High spender (top 20% by spend)", "log_monetary", 0.2),
    RelativeTrait(
        "value:big_basket", "Big baskets (top 20% by order value)", "log_mean_basket", 0.2
    ),
    RelativeTrait(
        "frequency:frequent", "Frequent visitor (top 25% by events)", "log_frequency", 0.25
    ),
)


def _words(name: str) -> str:
    return name.replace("_", " ")


class TraitCatalog:
    """The traits of one behaviour spec, and how to compute them from vectors."""

    def __init__(self, spec: BehaviourSpec) -> None:
        self.spec = spec
        names = spec.names
        position = {name: i for i, name in enumerate(names)}
        self._position = position
        fixed: list[tuple[TraitDef, int, str, float]] = []  # trait, column, op, threshold
        for et in spec.event_types:
            text = _TYPE_TEXT.get(et, f"Did {et}")
            fixed.append(
                (
                    TraitDef(f"event:{et}", text),
                    position[f"type_share__{et}"],
                    ">=",
                    _MIN_TYPE_SHARE,
                )
            )
        for ch in spec.channels:
            fixed.append(
                (
                    TraitDef(f"channel:{ch}", f"Mostly {_words(ch)}"),
                    position[f"channel_share__{ch}"],
                    ">=",
                    _MOSTLY,
                )
            )
        for cat in spec.categories:
            fixed.append(
                (
                    TraitDef(f"category:{cat}", f"Browsed {_words(cat)}"),
                    position[f"category_share__{cat}"],
                    ">=",
                    _MIN_CATEGORY_SHARE,
                )
            )
        recency = position["log_recency_days"]
        fixed += [
            (TraitDef("recency:7d", "Active in the last 7 days"), recency, "<=", math.log1p(7)),
            (TraitDef("recency:30d", "Active in the last 30 days"), recency, "<=", math.log1p(30)),
            (TraitDef("recency:lapsed_90d", "Inactive for 90+ days"), recency, ">", math.log1p(90)),
            (
                TraitDef("purchase:any", "Purchased in the last year"),
                position["purchase_share"],
                ">",
                0.0,
            ),
            (
                TraitDef("activity:one_visit", "Three events or fewer"),
                position["log_frequency"],
                "<=",
                math.log1p(3),
            ),
        ]
        self._fixed = fixed
        self.relative = RELATIVE_TRAITS
        self.traits: list[TraitDef] = [t for t, *_ in fixed] + [
            TraitDef(r.code, r.description) for r in RELATIVE_TRAITS
        ]

    def fixed_bits(self, X: np.ndarray) -> np.ndarray:
        """Packed bits [n, ceil(fixed/8)] of the fixed traits of behaviour vectors X."""
        held = np.zeros((len(X), len(self._fixed)), dtype=bool)
        for j, (_trait, column, op, threshold) in enumerate(self._fixed):
            values = X[:, column]
            held[:, j] = (
                values >= threshold
                if op == ">="
                else values <= threshold
                if op == "<="
                else values > threshold
            )
        return np.packbits(held, axis=1)

    def relative_values(self, X: np.ndarray) -> np.ndarray:
        """float32 [n, len(RELATIVE_TRAITS)]: the scalars relative traits threshold."""
        columns = [self._position[r.scalar] for r in self.relative]
        return np.ascontiguousarray(X[:, columns], dtype=np.float32)

    def thresholds(self, values: np.ndarray) -> np.ndarray:
        """Population thresholds of the relative traits (quantiles over positive values)."""
        out = np.full(len(self.relative), np.inf, dtype=np.float32)
        for j, trait in enumerate(self.relative):
            positive = values[:, j][values[:, j] > 0]
            if len(positive):
                out[j] = float(np.quantile(positive, 1.0 - trait.top_share))
        return out

    def matrix(self, bits: np.ndarray, values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """bool [n, len(traits)]: every trait of every profile."""
        fixed = np.unpackbits(bits, axis=1, count=len(self._fixed)).astype(bool)
        relative = (values >= thresholds[None, :]) & (values > 0)
        return np.hstack([fixed, relative])


def trait_catalog(spec: BehaviourSpec) -> TraitCatalog:
    """The trait catalog of a behaviour spec."""
    return TraitCatalog(spec)
