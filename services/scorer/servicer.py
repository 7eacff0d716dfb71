"""The scorer's gRPC servicer: convert the request, call the domain, convert the response.

Snapshot lookups run on the event loop (a few microseconds of work; a thread
hop would cost more than the lookup). Anything with I/O or real computation
runs in a thread so the loop keeps serving lookups meanwhile. ScoreProfile has
one thread of its own: its work holds the GIL most of the time, so more
threads only fight over it (with four calls in flight, one thread served 348
req/s where the shared pool's six served 265, ~30% of their CPU time spent in
the kernel); more cores are used through more server processes. Errors are
never caught here: the runtime interceptor maps domain errors to status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from foresight.convert import events_to_frame, from_timestamp
from foresight.runtime import Context
from foresight.runtime.jobs import ProgressFn, progress_stream
from services.scorer import converters
from services.scorer.records import InstanceScore, Progress, ScoringRun
from services.scorer.service import Scorer

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"].full_name


class ScorerServicer(scorer_pb2_grpc.ScorerServiceServicer):
    """Implements foresight.scorer.v1.ScorerService over a `Scorer`."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._realtime = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-profile")

    async def RunScoring(
        self, request: scorer_pb2.RunScoringRequest, context: Context
    ) -> AsyncIterator[scorer_pb2.RunScoringEvent]:
        as_of = from_timestamp(request.as_of, request.HasField("as_of"))

        def job(report: ProgressFn) -> ScoringRun:
            return self.scorer.run_scoring(
                request.instance, as_of, lambda p: report(p.stage, p.fraction, p.message)
            )

        async for event in progress_stream(
            job,
            lambda stage, fraction, message: converters.progress_event(
                Progress(stage, fraction, message)
            ),
            converters.run_event,
            context=context,
        ):
            yield event

    async def ListScoringRuns(
        self, request: scorer_pb2.ListScoringRunsRequest, context: Context
    ) -> scorer_pb2.ListScoringRunsResponse:
        runs = await asyncio.to_thread(self.scorer.list_runs, request.instance)
        return scorer_pb2.ListScoringRunsResponse(runs=[converters.scoring_run(r) for r in runs])

    # Lookups answer with their messages encoded (bytes), which the runtime interceptor
    # sends as they are; the generated base class types the message only.
    async def GetProfileScores(  # type: ignore[override]
        self, request: scorer_pb2.GetProfileScoresRequest, context: Context
    ) -> bytes:
        return converters.profile_scores(
            self.scorer.get_profile_scores(request.profile_id, request.instances)
        )

    async def BatchGetProfileScores(  # type: ignore[override]
        self, request: scorer_pb2.BatchGetProfileScoresRequest, context: Context
    ) -> bytes:
        found, missing = self.scorer.batch_get_profile_scores(
            request.profile_ids, request.instances
        )
        return converters.batch_response(found, missing)

    async def ScoreProfile(
        self, request: scorer_pb2.ScoreProfileRequest, context: Context
    ) -> scorer_pb2.ScoreProfileResponse:
        as_of = from_timestamp(request.as_of, request.HasField("as_of"))

        def scored() -> tuple[InstanceScore, list[str]]:
            events = events_to_frame(request.events)
            return self.scorer.score_profile(request.instance, request.profile_id, events, as_of)

        score, warnings = await asyncio.get_running_loop().run_in_executor(self._realtime, scored)
        return scorer_pb2.ScoreProfileResponse(
            score=converters.instance_score(score), warnings=warnings
        )

    async def CreateSegment(
        self, request: scorer_pb2.CreateSegmentRequest, context: Context
    ) -> scorer_pb2.Segment:
        segment_filter = converters.segment_filter(request.filter)
        segment = await asyncio.to_thread(
            self.scorer.create_segment,
            request.name,
            request.instance,
            segment_filter,
            request.run_id,
        )
        return converters.segment(segment)

    async def GetSegment(
        self, request: scorer_pb2.GetSegmentRequest, context: Context
    ) -> scorer_pb2.Segment:
        return converters.segment(await asyncio.to_thread(self.scorer.get_segment, request.name))

    async def ListSegments(
        self, request: scorer_pb2.ListSegmentsRequest, context: Context
    ) -> scorer_pb2.ListSegmentsResponse:
        segments = await asyncio.to_thread(self.scorer.list_segments, request.instance)
        return scorer_pb2.ListSegmentsResponse(segments=[converters.segment(s) for s in segments])

    async def ListSegmentMembers(
        self, request: scorer_pb2.ListSegmentMembersRequest, context: Context
    ) -> scorer_pb2.ListSegmentMembersResponse:
        page = await asyncio.to_thread(
            self.scorer.list_segment_members,
            request.name,
            request.page.page_size,
            request.page.page_token,
        )
        return converters.members_page(page)

    async def ExportScores(
        self, request: scorer_pb2.ExportScoresRequest, context: Context
    ) -> AsyncIterator[scorer_pb2.ExportScoresChunk]:
        parquet = converters.export_parquet(request.format)
        chunks = await asyncio.to_thread(
            self.scorer.export_scores, request.instance, request.run_id, parquet
        )
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield scorer_pb2.ExportScoresChunk(data=chunk)

    async def ExportSegment(
        self, request: scorer_pb2.ExportSegmentRequest, context: Context
    ) -> AsyncIterator[scorer_pb2.ExportSegmentChunk]:
        parquet = converters.export_parquet(request.format)
        chunks = await asyncio.to_thread(self.scorer.export_segment, request.name, parquet)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield scorer_pb2.ExportSegmentChunk(data=chunk)

    async def GetInsights(
        self, request: scorer_pb2.GetInsightsRequest, context: Context
    ) -> scorer_pb2.Insights:
        return converters.insights(
            await asyncio.to_thread(self.scorer.insights, request.instance, request.run_id)
        )

    async def GetModelHealth(
        self, request: scorer_pb2.GetModelHealthRequest, context: Context
    ) -> scorer_pb2.ModelHealth:
        return converters.model_health(
            await asyncio.to_thread(self.scorer.model_health, request.instance, request.max_runs)
        )

    async def GetScorerStatus(
        self, request: scorer_pb2.GetScorerStatusRequest, context: Context
    ) -> scorer_pb2.ScorerStatus:
        return converters.scorer_status(self.scorer.status())
