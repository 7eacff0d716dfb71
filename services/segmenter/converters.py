"""All protobuf ↔ domain conversion of the segmenter (the domain never sees *_pb2)."""

from __future__ import annotations

from typing import Literal

from foresight.api.segmenter.v1 import segmenter_pb2 as pb
from foresight.cluster_map import ClusterMap
from foresight.convert import events_to_frame, progress_to_pb, to_timestamp
from services.segmenter.discovery_types import ClusterInfo, DiscoveryInfo, Trait
from services.segmenter.domain import ProfileEvents, UpsertResult
from services.segmenter.index_types import IndexInfo
from services.segmenter.queries import Expansion, Neighbor, Placement

__all__ = [
    "IndexInfo",
    "build_event",
    "cluster_to_pb",
    "discover_event",
    "discovery_to_pb",
    "expansion_to_pb",
    "index_info_to_pb",
    "neighbors_to_pb",
    "placement_to_pb",
    "upsert_request",
    "upsert_to_pb",
    "view_from_pb",
    "visualization_to_pb",
]


def build_event(stage: str, fraction: float, message: str) -> pb.BuildIndexEvent:
    """A progress message of the BuildIndex stream."""
    return pb.BuildIndexEvent(progress=progress_to_pb(stage, fraction, message))


def discover_event(stage: str, fraction: float, message: str) -> pb.DiscoverSegmentsEvent:
    """A progress message of the DiscoverSegments stream."""
    return pb.DiscoverSegmentsEvent(progress=progress_to_pb(stage, fraction, message))


def index_info_to_pb(info: IndexInfo) -> pb.IndexInfo:
    """IndexInfo message from the sidecar data."""
    return pb.IndexInfo(
        version=info.version,
        dataset=info.dataset,
        space=info.space,
        dimensions=info.dimensions,
        m=info.m,
        ef_construction=info.ef_construction,
        ef=info.ef,
        encoder_version=info.encoder_version,
        count=info.count,
        checksum=info.checksum,
        built_at=to_timestamp(info.built_at),
    )


def upsert_request(request: pb.UpsertProfilesRequest) -> list[ProfileEvents]:
    """Profiles to upsert; no events = use the stored ones."""
    return [
        ProfileEvents(
            profile_id=p.profile_id,
            events=events_to_frame(p.events) if len(p.events) else None,
        )
        for p in request.profiles
    ]


def upsert_to_pb(result: UpsertResult) -> pb.UpsertProfilesResponse:
    """UpsertProfilesResponse."""
    return pb.UpsertProfilesResponse(
        upserted=result.upserted, count=result.count, skipped=result.skipped
    )


def trait_to_pb(t: Trait) -> pb.Trait:
    """Trait message."""
    return pb.Trait(
        code=t.code,
        description=t.description,
        cluster_percent=t.cluster_percent,
        population_percent=t.population_percent,
        lift=t.lift,
        count=t.count,
    )


def cluster_to_pb(c: ClusterInfo) -> pb.Cluster:
    """Cluster message."""
    return pb.Cluster(
        cluster_id=c.cluster_id,
        discovery_version=c.discovery_version,
        name=c.name,
        size=c.size,
        share=c.share,
        influence=[trait_to_pb(t) for t in c.influence],
        popularity=[trait_to_pb(t) for t in c.popularity],
    )


def discovery_to_pb(d: DiscoveryInfo) -> pb.Discovery:
    """Discovery message."""
    return pb.Discovery(
        version=d.version,
        index_version=d.index_version,
        clusters=[cluster_to_pb(c) for c in d.clusters],
        chosen_by=d.chosen_by,
        created_at=to_timestamp(d.created_at),
    )


def view_from_pb(view: int) -> Literal["both", "influence", "popularity"]:
    """ClusterView → the domain's view name."""
    if view == pb.CLUSTER_VIEW_INFLUENCE:
        return "influence"
    if view == pb.CLUSTER_VIEW_POPULARITY:
        return "popularity"
    return "both"


def neighbors_to_pb(neighbors: list[Neighbor]) -> list[pb.Neighbor]:
    """Neighbor messages."""
    return [pb.Neighbor(profile_id=n.profile_id, similarity=n.similarity) for n in neighbors]


def placement_to_pb(p: Placement) -> pb.ScoreJourneyResponse:
    """ScoreJourneyResponse."""
    return pb.ScoreJourneyResponse(
        cluster_id=p.cluster_id,
        cluster_name=p.cluster_name,
        distance=p.distance,
        nearest=neighbors_to_pb(p.nearest),
    )


def expansion_to_pb(e: Expansion) -> pb.ExpandSegmentResponse:
    """ExpandSegmentResponse."""
    return pb.ExpandSegmentResponse(
        lookalikes=neighbors_to_pb(e.lookalikes),
        reach=[
            pb.ReachPoint(similarity=r.similarity, audience_size=r.audience_size) for r in e.reach
        ],
        unknown_seed_ids=e.unknown_seed_ids,
        seed_size=e.seed_size,
        query_points=e.query_points,
    )


def visualization_to_pb(m: ClusterMap[ClusterInfo]) -> pb.Visualization:
    """Visualization message."""
    return pb.Visualization(
        discovery_version=m.discovery_version,
        points=[
            pb.MapPoint(profile_id=p.profile_id, x=p.x, y=p.y, cluster_id=p.cluster_id)
            for p in m.points
        ],
        clusters=[cluster_to_pb(c) for c in m.clusters],
        projection=m.projection,
    )
