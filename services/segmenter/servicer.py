"""Thin gRPC servicer of the segmenter: convert the request, call the domain, convert back.

Blocking domain work runs in worker threads so the event loop keeps serving
health checks and other RPCs; errors are mapped by the runtime interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from foresight.api.segmenter.v1 import segmenter_pb2 as pb
from foresight.api.segmenter.v1 import segmenter_pb2_grpc
from foresight.convert import events_to_frame
from foresight.progress import Progress
from foresight.runtime import Context
from foresight.runtime.jobs import progress_stream
from services.segmenter import converters as conv
from services.segmenter.domain import Segmenter


class SegmenterServicer(segmenter_pb2_grpc.SegmenterServiceServicer):
    """The segmenter's RPCs."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    # ------------------------------------------------------------ index

    async def BuildIndex(
        self, request: pb.BuildIndexRequest, context: Context
    ) -> AsyncIterator[pb.BuildIndexEvent]:
        def job(report: Progress) -> conv.IndexInfo:
            return self.segmenter.build(
                request.dataset, request.encoder_version, request.m, request.ef_construction, report
            )

        async for event in progress_stream(
            job,
            conv.build_event,
            lambda info: pb.BuildIndexEvent(index=conv.index_info_to_pb(info)),
            context=context,
        ):
            yield event

    async def GetIndexInfo(self, request: pb.GetIndexInfoRequest, context: Context) -> pb.IndexInfo:
        return conv.index_info_to_pb(self.segmenter.info())

    async def UpsertProfiles(
        self, request: pb.UpsertProfilesRequest, context: Context
    ) -> pb.UpsertProfilesResponse:
        profiles = conv.upsert_request(request)
        result = await asyncio.to_thread(self.segmenter.upsert, profiles)
        return conv.upsert_to_pb(result)

    async def RemoveProfiles(
        self, request: pb.RemoveProfilesRequest, context: Context
    ) -> pb.RemoveProfilesResponse:
        removed, missing = await asyncio.to_thread(self.segmenter.remove, list(request.profile_ids))
        return pb.RemoveProfilesResponse(removed=removed, not_found=missing)

    # ------------------------------------------------------------ clusters

    async def DiscoverSegments(
        self, request: pb.DiscoverSegmentsRequest, context: Context
    ) -> AsyncIterator[pb.DiscoverSegmentsEvent]:
        async for event in progress_stream(
            lambda report: self.segmenter.discover(request.clusters, report),
            conv.discover_event,
            lambda d: pb.DiscoverSegmentsEvent(discovery=conv.discovery_to_pb(d)),
            context=context,
        ):
            yield event

    async def ListClusters(
        self, request: pb.ListClustersRequest, context: Context
    ) -> pb.ListClustersResponse:
        d = await asyncio.to_thread(self.segmenter.list_clusters, request.discovery_version)
        return pb.ListClustersResponse(
            clusters=[conv.cluster_to_pb(c) for c in d.clusters], discovery_version=d.version
        )

    async def GetCluster(self, request: pb.GetClusterRequest, context: Context) -> pb.Cluster:
        c = await asyncio.to_thread(
            self.segmenter.get_cluster,
            request.discovery_version,
            request.cluster_id,
            conv.view_from_pb(request.view),
            request.top_n,
        )
        return conv.cluster_to_pb(c)

    async def ListClusterMembers(
        self, request: pb.ListClusterMembersRequest, context: Context
    ) -> pb.ListClusterMembersResponse:
        ids, token, total = await asyncio.to_thread(
            self.segmenter.list_members,
            request.discovery_version,
            request.cluster_id,
            request.page.page_size,
            request.page.page_token,
        )
        return pb.ListClusterMembersResponse(profile_ids=ids, next_page_token=token, total=total)

    async def SaveClusterSegment(
        self, request: pb.SaveClusterSegmentRequest, context: Context
    ) -> pb.SaveClusterSegmentResponse:
        name, size = await asyncio.to_thread(
            self.segmenter.save_cluster_segment,
            request.discovery_version,
            request.cluster_id,
            request.name,
        )
        return pb.SaveClusterSegmentResponse(name=name, size=size)

    # ------------------------------------------------------------ queries

    async def ScoreJourney(
        self, request: pb.ScoreJourneyRequest, context: Context
    ) -> pb.ScoreJourneyResponse:
        which = request.WhichOneof("journey")
        events = events_to_frame(request.events.events) if which == "events" else None
        placement = await asyncio.to_thread(
            self.segmenter.score_journey,
            request.profile_id if which == "profile_id" else None,
            events,
            request.k,
        )
        return conv.placement_to_pb(placement)

    async def FindSimilar(
        self, request: pb.FindSimilarRequest, context: Context
    ) -> pb.FindSimilarResponse:
        neighbors = await asyncio.to_thread(
            self.segmenter.find_similar, request.profile_id, request.k
        )
        return pb.FindSimilarResponse(neighbors=conv.neighbors_to_pb(neighbors))

    async def ExpandSegment(
        self, request: pb.ExpandSegmentRequest, context: Context
    ) -> pb.ExpandSegmentResponse:
        which = request.WhichOneof("seed")
        expansion = await asyncio.to_thread(
            self.segmenter.expand,
            list(request.profile_ids.profile_ids) if which == "profile_ids" else None,
            request.segment if which == "segment" else None,
            request.target_size,
            request.min_similarity,
            request.target_multiple,
        )
        return conv.expansion_to_pb(expansion)

    # ------------------------------------------------------------ map

    async def GetVisualization(
        self, request: pb.GetVisualizationRequest, context: Context
    ) -> pb.Visualization:
        cmap = await asyncio.to_thread(
            self.segmenter.visualization, request.discovery_version, request.sample_size
        )
        return conv.visualization_to_pb(cmap)
