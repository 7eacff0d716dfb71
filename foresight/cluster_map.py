"""The cluster map's data: sampled profiles placed in 2-D, and the clusters they belong to.

The segmenter builds a `ClusterMap` from its index (GetVisualization); the
command-line client and the demo rebuild one from the reply and draw it with
`foresight.tools.mapview`. It lives in the core so that both sides share one
type and a service never imports a tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["ClusterMap", "MapCluster", "MapPoint", "MapTrait"]


class MapTrait(Protocol):
    """What the map shows of a trait: the segmenter's `Trait` and the proto's both fit."""

    @property
    def code(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def cluster_percent(self) -> float: ...
    @property
    def population_percent(self) -> float: ...
    @property
    def lift(self) -> float: ...
    @property
    def count(self) -> int: ...


class MapCluster(Protocol):
    """What the map shows of a cluster: the segmenter's `ClusterInfo` and the proto's both fit."""

    @property
    def cluster_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def share(self) -> float: ...
    @property
    def influence(self) -> Sequence[MapTrait]: ...
    @property
    def popularity(self) -> Sequence[MapTrait]: ...


ClusterT = TypeVar("ClusterT", bound=MapCluster, covariant=True)


@dataclass(frozen=True)
class MapPoint:
    """A profile on the map."""

    profile_id: str
    x: float
    y: float
    cluster_id: int


@dataclass(frozen=True)
class ClusterMap(Generic[ClusterT]):
    """What GetVisualization returns and the map writers draw."""

    discovery_version: int
    points: list[MapPoint]
    clusters: Sequence[ClusterT]
    projection: str
