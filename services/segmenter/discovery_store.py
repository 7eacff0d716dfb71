"""Discoveries as versions: rows in the registry, members in the artifact store.

A discovery is published through the shared `Lifecycle` (RUNNING → members
bundle → READY with its cluster rows in one commit); members are read once
and cached in memory, closest to the centre first per cluster.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Lifecycle, Status
from foresight.storage.models import ClusterRow, DiscoveryRow
from services.segmenter.discovery_types import ClusterInfo, DiscoveryInfo, DiscoveryResult, Trait
from services.segmenter.index_store import OWNER

__all__ = ["DiscoveryStore", "Members"]

MEMBERS_FILE: Final[str] = "members.parquet"
CENTROIDS_FILE: Final[str] = "centroids.npy"
SUMMARY_FILE: Final[str] = "discovery.json"


@dataclass(frozen=True)
class Members:
    """A discovery's members: per cluster, profile ids closest to the centre first."""

    version: int
    profile_ids: np.ndarray
    offsets: np.ndarray
    """Cluster c's members are profile_ids[offsets[c]:offsets[c+1]]."""
    centroids: np.ndarray
    names: list[str]

    def of(self, cluster_id: int) -> np.ndarray:
        """Member ids of one cluster."""
        if not 0 <= cluster_id < len(self.offsets) - 1:
            raise NotFound(f"discovery v{self.version} has no cluster {cluster_id}")
        return self.profile_ids[self.offsets[cluster_id] : self.offsets[cluster_id + 1]]


class DiscoveryStore:
    """Discoveries: rows in the registry, members in the artifact store (cached in memory)."""

    def __init__(self, db: Database, artifacts: ArtifactStore, cache: int = 2) -> None:
        self.db = db
        self.artifacts = artifacts
        self.lifecycle = Lifecycle(
            db, artifacts, DiscoveryRow, root="discoveries", owner=OWNER, noun="discovery"
        )
        self._cache: OrderedDict[int, Members] = OrderedDict()
        self._cache_size = cache
        self._lock = threading.Lock()

    def run(self, index_version: int, compute: Callable[[], DiscoveryResult]) -> DiscoveryInfo:
        """A RUNNING discovery row while `compute()` clusters; then publish it (READY),
        or end it FAILED / CANCELLED with nothing published."""
        version = self.lifecycle.allocate(index_version=index_version)
        with self.lifecycle.guard(version):
            self._publish(compute(), version, index_version)
        return self.get(version)

    def _publish(self, result: DiscoveryResult, version: int, index_version: int) -> None:
        """Members bundle first, then the rows (READY, with the clusters) in one commit."""
        order = np.lexsort((result.distances, result.labels))
        members = pl.DataFrame(
            {
                "profile_id": pl.Series(result.profile_ids[order].tolist(), dtype=pl.String),
                "cluster_id": result.labels[order].astype(np.int32),
                "distance": result.distances[order].astype(np.float32),
            }
        )
        summary = {
            "version": version,
            "index_version": index_version,
            "chosen_by": result.chosen_by,
            "silhouette_by_k": {str(k): v for k, v in result.scores.items()},
        }
        metadata = {"kind": "discovery", "version": version}
        with self.lifecycle.writing(version, metadata=metadata) as folder:
            members.write_parquet(folder / MEMBERS_FILE)
            np.save(folder / CENTROIDS_FILE, result.centroids)
            (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))

        def add_clusters(s: Session, row: DiscoveryRow) -> None:
            for c in result.clusters:
                s.add(
                    ClusterRow(
                        discovery_version=version,
                        cluster_id=c.cluster_id,
                        name=c.name[:128],
                        size=c.size,
                        share=c.share,
                        traits={
                            "influence": [t.to_dict() for t in c.influence],
                            "popularity": [t.to_dict() for t in c.popularity],
                        },
                    )
                )

        self.lifecycle.mark_ready(version, None, add_clusters, chosen_by=result.chosen_by)

    def latest_version(self) -> int | None:
        """Newest READY discovery, or None."""
        return self.lifecycle.latest_ready()

    def resolve(self, version: int) -> int:
        """`version`, or the latest when 0; NotFound / FailedPrecondition otherwise."""
        if version < 0:
            raise InvalidArgument("discovery_version", "must not be negative")
        if version == 0:
            latest = self.latest_version()
            if latest is None:
                raise FailedPrecondition("no segments discovered yet; call DiscoverSegments")
            return latest
        with self.db.session() as s:
            row = s.scalar(select(DiscoveryRow).where(DiscoveryRow.version == version))
            if row is None or row.status != Status.READY.value:
                raise NotFound(f"discovery v{version} does not exist")
        return version

    def get(self, version: int = 0) -> DiscoveryInfo:
        """A discovery with its clusters (largest first)."""
        version = self.resolve(version)
        with self.db.session() as s:
            row = s.scalar(select(DiscoveryRow).where(DiscoveryRow.version == version))
            assert row is not None
            rows = s.scalars(
                select(ClusterRow)
                .where(ClusterRow.discovery_version == version)
                .order_by(ClusterRow.size.desc(), ClusterRow.cluster_id)
            )
            clusters = [_cluster(r) for r in rows]
            return DiscoveryInfo(
                version=version,
                index_version=row.index_version,
                clusters=clusters,
                chosen_by=row.chosen_by,
                created_at=row.created_at,
            )

    def cluster(self, version: int, cluster_id: int) -> ClusterInfo:
        """One cluster."""
        version = self.resolve(version)
        with self.db.session() as s:
            row = s.scalar(
                select(ClusterRow).where(
                    ClusterRow.discovery_version == version, ClusterRow.cluster_id == cluster_id
                )
            )
            if row is None:
                raise NotFound(f"discovery v{version} has no cluster {cluster_id}")
            return _cluster(row)

    def members(self, version: int = 0) -> Members:
        """The members of a discovery (read once, then cached)."""
        version = self.resolve(version)
        with self._lock:
            cached = self._cache.get(version)
            if cached is not None:
                self._cache.move_to_end(version)
                return cached
        relative = self.lifecycle.bundle_path(version)
        self.artifacts.verify(relative)
        folder = self.artifacts.path(relative)
        frame = pl.read_parquet(folder / MEMBERS_FILE)
        centroids = np.load(folder / CENTROIDS_FILE)
        k = len(centroids)
        counts = np.bincount(frame["cluster_id"].to_numpy(), minlength=k)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        names = [c.name for c in sorted(self.get(version).clusters, key=lambda c: c.cluster_id)]
        members = Members(
            version=version,
            profile_ids=np.asarray(frame["profile_id"].to_list(), dtype=object),
            offsets=offsets,
            centroids=centroids.astype(np.float32),
            names=names,
        )
        with self._lock:
            self._cache[version] = members
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return members


def _cluster(row: ClusterRow) -> ClusterInfo:
    traits = row.traits or {}
    return ClusterInfo(
        cluster_id=row.cluster_id,
        discovery_version=row.discovery_version,
        name=row.name,
        size=int(row.size),
        share=float(row.share),
        influence=[Trait.from_dict(t) for t in traits.get("influence", [])],
        popularity=[Trait.from_dict(t) for t in traits.get("popularity", [])],
    )
