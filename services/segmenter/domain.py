"""The segmenter's domain facade: one object the servicer calls for every RPC.

The index served, its journaled writes, builds and snapshots are
`live.LiveIndex`'s; this facade validates requests, embeds profiles and
answers queries, discoveries and the map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import polars as pl

from foresight.cluster_map import ClusterMap
from foresight.encoder.model import Encoder, behaviour_as_of
from foresight.encoder.registry import get_encoder_version
from foresight.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from foresight.events.partitions import parts_by_shard, shard_for_profile
from foresight.events.profile_events import validate_profile_events
from foresight.events.store import EventStore
from foresight.progress import Progress
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.paths import slug
from foresight.storage.segments import SegmentSource, SegmentTables
from services.segmenter import discover as disc
from services.segmenter import queries, visualize
from services.segmenter.discovery_store import DiscoveryStore, Members
from services.segmenter.discovery_types import ClusterInfo, DiscoveryInfo
from services.segmenter.embedding import EmbeddedShard, cached_encoder, embed_events
from services.segmenter.index import JourneyIndex
from services.segmenter.index_types import IndexInfo, IndexParams
from services.segmenter.live import LiveIndex
from services.segmenter.traits import trait_catalog

__all__ = ["ProfileEvents", "Segmenter", "UpsertResult"]

log = logging.getLogger("foresight.segmenter")

MAX_UPSERT: Final[int] = 10_000
MAX_REMOVE: Final[int] = 100_000
MAX_SEED: Final[int] = 1_000_000
DEFAULT_PAGE: Final[int] = 100
MAX_PAGE: Final[int] = 10_000

View = Literal["both", "influence", "popularity"]


@dataclass(frozen=True)
class ProfileEvents:
    """A profile to upsert: its id and raw request events (None = read its stored events)."""

    profile_id: str
    events: pl.DataFrame | None


@dataclass(frozen=True)
class UpsertResult:
    """Outcome of an upsert."""

    upserted: int
    count: int
    skipped: list[str]


class Segmenter:
    """Index, discoveries and queries of Segment AI."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        event_store_root: Path | str,
        shards: int = 16,
        workers: int = 0,
        scheduler: str | None = None,
        ef: int = 128,
        rebuild_corrupt: bool = True,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.store_root = event_store_root
        self.events = EventStore(event_store_root, shards)
        self.workers = workers
        self.ef = ef
        self.rebuild_corrupt = rebuild_corrupt
        self.live = LiveIndex(
            db, artifacts, self.events.url, self._embed, workers, ef, scheduler=scheduler
        )
        self.indexes = self.live.store
        self.discoveries = DiscoveryStore(db, artifacts)
        self.segments = SegmentTables(db)

    # ---------------------------------------------------------------- index lifecycle

    @property
    def index(self) -> JourneyIndex:
        """The index served now, or FailedPrecondition."""
        return self.live.index

    def recover_interrupted(self) -> dict[str, list[int]]:
        """At segmenter start: index builds and discoveries a killed segmenter left RUNNING
        become FAILED "interrupted"; their files and its temporary folders are removed."""
        return {
            "indexes": self.indexes.recover_interrupted(),
            "discoveries": [v for _scope, v in self.discoveries.lifecycle.recover()],
        }

    def load(self) -> IndexInfo | None:
        """Start-up: fail interrupted builds, load the newest READY index and replay the journal.

        A corrupt index is rebuilt or refused, never fatal.
        """
        interrupted = self.recover_interrupted()
        if any(interrupted.values()):
            log.warning("work interrupted by a restart", extra={"versions": interrupted})
        return self.live.load(self.rebuild_corrupt)

    def build(
        self,
        dataset: str,
        encoder_version: int = 0,
        m: int = 0,
        ef_construction: int = 0,
        progress: Progress | None = None,
    ) -> IndexInfo:
        """Build a new index and swap it in; the journal is replayed onto it first."""
        if not dataset:
            raise InvalidArgument("dataset", "is required")
        if encoder_version < 0:
            raise InvalidArgument("encoder_version", "must not be negative")
        params = IndexParams(m=m, ef_construction=ef_construction, ef=self.ef).check()
        return self.live.build(dataset, encoder_version, params, progress)

    def info(self) -> IndexInfo:
        """The served index's parameters and size."""
        index = self.index
        return replace(index.info, count=index.count)

    def _encoder(self, index: JourneyIndex) -> Encoder:
        version = get_encoder_version(self.db, index.info.encoder_version)
        if version.status is not Status.READY or not version.artifact_path:
            raise FailedPrecondition(f"encoder v{version.version} of the index is not READY")
        return cached_encoder(str(self.artifacts.path(version.artifact_path)), threads=0)

    def _as_of(self, index: JourneyIndex, events: pl.DataFrame) -> datetime:
        """The index's reference time, moved past the newest event sent (else it would be ignored)."""
        as_of = index.info.as_of
        if not events.is_empty():
            latest = events["timestamp"].max()
            if isinstance(latest, datetime) and latest >= as_of:
                as_of = behaviour_as_of(latest)
        return as_of

    # ---------------------------------------------------------------- writes

    def upsert(self, profiles: Sequence[ProfileEvents]) -> UpsertResult:
        """Embed and add (or re-embed) profiles from request events or their stored events."""
        if not profiles:
            raise InvalidArgument("profiles", "is empty")
        if len(profiles) > MAX_UPSERT:
            raise ResourceExhausted(f"profiles: at most {MAX_UPSERT:,} per request")
        _ = self.index  # FailedPrecondition before any work when there is no index
        sent: list[pl.DataFrame] = []
        stored_ids: list[str] = []
        for i, p in enumerate(profiles):
            if not p.profile_id:
                raise InvalidArgument(f"profiles[{i}].profile_id", "is required")
            if p.events is not None and p.events.height:
                events, _ = validate_profile_events(
                    p.events, p.profile_id, datetime.now(UTC), f"profiles[{i}].events"
                )
                sent.append(events)
            else:
                stored_ids.append(p.profile_id)
        sent_events = pl.concat(sent) if sent else None
        embedded, upserted, count = self.live.upsert(sent_events, stored_ids)
        wanted = list(dict.fromkeys(p.profile_id for p in profiles))
        got = {str(pid) for pid in embedded.profile_ids}
        skipped = [pid for pid in wanted if pid not in got]
        return UpsertResult(upserted=upserted, count=count, skipped=skipped)

    def _embed(
        self, index: JourneyIndex, sent: pl.DataFrame | None, stored_ids: Sequence[str]
    ) -> EmbeddedShard:
        """Embed request events plus the stored events of `stored_ids` for `index`."""
        frames = [] if sent is None else [sent]
        if stored_ids:
            frames.append(self._stored_events(index.info.dataset, list(stored_ids)))
        events = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        if not events.height:
            return EmbeddedShard(
                np.array([], dtype=object),
                np.zeros((0, index.dimensions), np.float32),
                np.zeros((0, 1), np.uint8),
                np.zeros((0, 1), np.float32),
            )
        return embed_events(self._encoder(index), events, self._as_of(index, events))

    def _stored_events(self, dataset: str, profile_ids: list[str]) -> pl.DataFrame:
        parts = catalog.catalogued_parts(self.db, dataset)
        by_shard: dict[int, list[str]] = {}
        for pid in profile_ids:
            by_shard.setdefault(shard_for_profile(pid, self.events.shards), []).append(pid)
        frames = []
        parts_of = parts_by_shard(parts)
        for shard, ids in by_shard.items():
            mine = parts_of.get(shard, [])
            if mine:
                frames.append(
                    self.events.scan(dataset, mine)
                    .filter(pl.col("profile_id").is_in(ids))
                    .collect()
                )
        return pl.concat(frames) if frames else pl.DataFrame()

    def remove(self, profile_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Remove profiles from the index; returns (removed, ids not in it)."""
        if not profile_ids:
            raise InvalidArgument("profile_ids", "is empty")
        if len(profile_ids) > MAX_REMOVE:
            raise ResourceExhausted(f"profile_ids: at most {MAX_REMOVE:,} per request")
        return self.live.remove(list(profile_ids))

    def snapshot_if_dirty(self) -> IndexInfo | None:
        """Save upserts and removals as a new index version (None when nothing changed)."""
        return self.live.snapshot()

    # ---------------------------------------------------------------- discovery

    def discover(self, clusters: int = 0, progress: Progress | None = None) -> DiscoveryInfo:
        """Cluster the served index and store the discovery."""
        index = self.index
        if clusters < 0:
            raise InvalidArgument("clusters", "must not be negative")
        snapshot = index.snapshot()
        catalog_ = trait_catalog(self._encoder(index).spec)
        return self.discoveries.run(
            index.info.version, lambda: disc.discover(snapshot, catalog_, clusters, progress)
        )

    def list_clusters(self, version: int = 0) -> DiscoveryInfo:
        """A discovery with its clusters."""
        return self.discoveries.get(version)

    def get_cluster(
        self, version: int, cluster_id: int, view: View = "both", top_n: int = 0
    ) -> ClusterInfo:
        """One cluster with up to top_n traits in the chosen view(s)."""
        top_n = top_n or 10
        if not 1 <= top_n <= 100:
            raise InvalidArgument("top_n", "must be between 1 and 100")
        c = self.discoveries.cluster(version, cluster_id)
        return replace(
            c,
            influence=c.influence[:top_n] if view != "popularity" else [],
            popularity=c.popularity[:top_n] if view != "influence" else [],
        )

    def list_members(
        self, version: int, cluster_id: int, page_size: int = 0, token: str = ""
    ) -> tuple[list[str], str, int]:
        """(a page of member ids closest first, next page token or "", total members)."""
        page_size = page_size or DEFAULT_PAGE
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument("page.page_size", f"must be between 1 and {MAX_PAGE:,}")
        offset = 0
        if token:
            if not token.isdigit():
                raise InvalidArgument("page.page_token", "is not a token from a previous page")
            offset = int(token)
        ids = self.discoveries.members(version).of(cluster_id)
        page = [str(p) for p in ids[offset : offset + page_size]]
        end = offset + len(page)
        return page, (str(end) if end < len(ids) else ""), len(ids)

    def save_cluster_segment(self, version: int, cluster_id: int, name: str) -> tuple[str, int]:
        """Store a cluster's members as a segment (source "cluster")."""
        slug("name", name)
        version = self.discoveries.resolve(version)
        ids = self.discoveries.members(version).of(cluster_id)
        stored = self.segments.create(
            name,
            SegmentSource.CLUSTER,
            [[(str(pid),) for pid in ids]],
            size=len(ids),
            filter={"discovery_version": version, "cluster_id": cluster_id},
        )
        return stored.name, stored.size

    def _latest_members(self) -> Members | None:
        if self.discoveries.latest_version() is None:
            return None
        return self.discoveries.members(0)

    # ---------------------------------------------------------------- queries

    def score_journey(
        self, profile_id: str | None, events: pl.DataFrame | None, k: int = 0
    ) -> queries.Placement:
        """Place a stored profile or a journey sent as events."""
        k = queries.check_k(k)
        index = self.index
        if profile_id:
            _known, vectors, unknown = index.vectors_of([profile_id])
            if unknown:
                raise NotFound(f"profile {profile_id!r} is not in the index")
            return queries.place(index, vectors[0], k, self._latest_members(), exclude=profile_id)
        if events is None or events.is_empty():
            raise InvalidArgument("journey", "send a profile_id or at least one event")
        # An anonymous journey may leave profile_id out; it is never stored.
        events = events.with_columns(pl.col("profile_id").fill_null("~journey"))
        valid, _ = validate_profile_events(events, "", datetime.now(UTC), "events.events")
        embedded = embed_events(self._encoder(index), valid, self._as_of(index, valid))
        if embedded.count == 0:
            raise InvalidArgument("events.events", "no event within the behaviour horizon")
        return queries.place(index, embedded.embeddings[0], k, self._latest_members())

    def find_similar(self, profile_id: str, k: int) -> list[queries.Neighbor]:
        """The k most similar profiles to a stored one (itself excluded)."""
        if not profile_id:
            raise InvalidArgument("profile_id", "is required")
        k = queries.check_k(k)
        index = self.index
        _known, vectors, unknown = index.vectors_of([profile_id])
        if unknown:
            raise NotFound(f"profile {profile_id!r} is not in the index")
        return queries.place(index, vectors[0], k, None, exclude=profile_id).nearest

    def expand(
        self,
        seed_ids: Sequence[str] | None,
        segment: str | None,
        target_size: int = 0,
        min_similarity: float = 0.0,
        target_multiple: float = 0.0,
    ) -> queries.Expansion:
        """Lookalikes of explicit seed ids or of a stored segment's members."""
        ids = self.segments.member_ids(segment) if segment else list(seed_ids or [])
        if not ids:
            raise InvalidArgument("seed", "is empty")
        if len(ids) > MAX_SEED:
            raise ResourceExhausted(f"seed: at most {MAX_SEED:,} profiles")
        return queries.expand(self.index, ids, target_size, min_similarity, target_multiple)

    def visualization(self, version: int = 0, sample_size: int = 0) -> ClusterMap[ClusterInfo]:
        """The 2-D cluster map of a discovery."""
        if sample_size < 0:
            raise InvalidArgument("sample_size", "must not be negative")
        info = self.discoveries.get(version)
        members = self.discoveries.members(info.version)
        return visualize.project(self.index, members, info.clusters, sample_size)
