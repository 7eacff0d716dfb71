"""What segment discovery produces: traits, clusters and versioned discoveries.

Shared by the clustering (`discover`), its store (`discovery_store`), the
map (`visualize`) and the converters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

__all__ = ["ClusterInfo", "DiscoveryInfo", "DiscoveryResult", "Trait"]


@dataclass(frozen=True)
class Trait:
    """A trait of a cluster, with both its influence and popularity figures."""

    code: str
    description: str
    cluster_percent: float
    population_percent: float
    lift: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the cluster row)."""
        return {
            "code": self.code,
            "description": self.description,
            "cluster_percent": self.cluster_percent,
            "population_percent": self.population_percent,
            "lift": self.lift,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trait:
        """Inverse of `to_dict`."""
        return cls(
            code=str(d["code"]),
            description=str(d["description"]),
            cluster_percent=float(d["cluster_percent"]),
            population_percent=float(d["population_percent"]),
            lift=float(d["lift"]),
            count=int(d["count"]),
        )


@dataclass(frozen=True)
class ClusterInfo:
    """A discovered cluster."""

    cluster_id: int
    discovery_version: int
    name: str
    size: int
    share: float
    influence: list[Trait]
    popularity: list[Trait]


@dataclass(frozen=True)
class DiscoveryInfo:
    """A versioned clustering."""

    version: int
    index_version: int
    clusters: list[ClusterInfo]
    chosen_by: str
    created_at: datetime


@dataclass(frozen=True)
class DiscoveryResult:
    """What `discover` computes (not yet stored)."""

    profile_ids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    clusters: list[ClusterInfo]
    chosen_by: str
    scores: dict[int, float]
