"""Thin gRPC servicer of the trainer: convert the request, call the domain, convert back.

Blocking domain work runs in worker threads so the event loop keeps serving
health checks and other RPCs. Errors are mapped by the runtime interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import polars as pl

from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.api.trainer.v1 import trainer_pb2_grpc
from foresight.convert import instance_config
from foresight.encoder.trainer import EncoderTrainer
from foresight.errors import InvalidArgument
from foresight.events.validation import DuplicatePolicy
from foresight.runtime import Context
from foresight.runtime.jobs import progress_stream
from services.trainer import converters as conv
from services.trainer import encoder_converters as econv
from services.trainer import model_converters as mconv
from services.trainer.ingest import Ingestor, IngestSummary, merge_summaries
from services.trainer.instances import Instances
from services.trainer.training import ModelTrainer

# Rows buffered from a client stream before they are validated and written.
_STREAM_CHUNK_ROWS = 200_000


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """The trainer's RPCs."""

    def __init__(
        self,
        ingestor: Ingestor,
        instances: Instances,
        models: ModelTrainer,
        encoders: EncoderTrainer,
    ) -> None:
        self.ingestor = ingestor
        self.instances = instances
        self.models = models
        self.encoders = encoders

    # ------------------------------------------------------------ ingestion

    async def IngestEvents(
        self, request_iterator: AsyncIterator[pb.IngestEventsRequest], context: Context
    ) -> pb.IngestSummary:
        dataset = ""
        policy = DuplicatePolicy.EVENT_ID
        pending: list[pl.DataFrame] = []
        pending_rows = 0
        summaries: list[IngestSummary] = []
        async for batch in request_iterator:
            if not batch.dataset:
                raise InvalidArgument("dataset", "must not be empty")
            if dataset and batch.dataset != dataset:
                raise InvalidArgument("dataset", "must be the same in every batch of a stream")
            dataset = batch.dataset
            if not summaries and not pending:  # the first batch decides for the stream
                policy = conv.duplicate_policy(batch.duplicates)
            frames = conv.batch_frames(batch)
            pending.extend(frames)
            pending_rows += sum(f.height for f in frames)
            if pending_rows >= _STREAM_CHUNK_ROWS:
                summaries.append(await self._ingest_chunk(dataset, pending, summaries, policy))
                pending, pending_rows = [], 0
        if not dataset:
            raise InvalidArgument("dataset", "the stream carried no batch")
        if pending or not summaries:
            summaries.append(await self._ingest_chunk(dataset, pending, summaries, policy))
        return conv.ingest_summary(merge_summaries(summaries))

    async def _ingest_chunk(
        self,
        dataset: str,
        frames: list[pl.DataFrame],
        before: list[IngestSummary],
        policy: DuplicatePolicy,
    ) -> IngestSummary:
        """Validate and store one chunk; rejected row numbers count from the stream's start."""
        first_row = sum(s.rows_read for s in before)
        return await asyncio.to_thread(
            self.ingestor.ingest, dataset, frames, None, first_row, policy
        )

    async def ImportDataset(
        self, request: pb.ImportDatasetRequest, context: Context
    ) -> pb.IngestSummary:
        summary = await asyncio.to_thread(
            self.ingestor.import_dataset,
            request.dataset,
            request.path,
            conv.duplicate_policy(request.duplicates),
        )
        return conv.ingest_summary(summary)

    async def ImportDatasetWithProgress(
        self, request: pb.ImportDatasetRequest, context: Context
    ) -> AsyncIterator[pb.ImportDatasetEvent]:
        policy = conv.duplicate_policy(request.duplicates)
        async for event in progress_stream(
            lambda report: self.ingestor.import_dataset(
                request.dataset, request.path, policy, report
            ),
            conv.import_progress_event,
            conv.import_summary_event,
            context=context,
        ):
            yield event

    async def ImportProfiles(
        self, request: pb.ImportProfilesRequest, context: Context
    ) -> pb.ImportProfilesResponse:
        return conv.profile_summary(
            await asyncio.to_thread(self.ingestor.import_profiles, request.path)
        )

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        infos = await asyncio.to_thread(self.ingestor.list_datasets)
        return pb.ListDatasetsResponse(datasets=[conv.dataset(i) for i in infos])

    async def DescribeDataset(
        self, request: pb.DescribeDatasetRequest, context: Context
    ) -> pb.DatasetDescription:
        if not request.dataset:
            raise InvalidArgument("dataset", "must not be empty")
        return conv.description(await asyncio.to_thread(self.ingestor.describe, request.dataset))

    async def VerifyDataset(
        self, request: pb.VerifyDatasetRequest, context: Context
    ) -> pb.DatasetHealth:
        health = await asyncio.to_thread(self.ingestor.verify_dataset, request.dataset)
        return conv.dataset_health(health)

    async def RepairDataset(
        self, request: pb.RepairDatasetRequest, context: Context
    ) -> pb.DatasetHealth:
        health = await asyncio.to_thread(self.ingestor.repair_dataset, request.dataset)
        return conv.dataset_health(health)

    # ------------------------------------------------------------ instances

    async def CreateInstance(
        self, request: pb.CreateInstanceRequest, context: Context
    ) -> pb.Instance:
        config, dataset = instance_config(request.instance)
        return conv.instance(await asyncio.to_thread(self.instances.create, config, dataset))

    async def GetInstance(self, request: pb.GetInstanceRequest, context: Context) -> pb.Instance:
        return conv.instance(await asyncio.to_thread(self.instances.get, request.name))

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        records = await asyncio.to_thread(self.instances.list)
        return pb.ListInstancesResponse(instances=[conv.instance(r) for r in records])

    async def UpdateInstance(
        self, request: pb.UpdateInstanceRequest, context: Context
    ) -> pb.Instance:
        current = await asyncio.to_thread(self.instances.get, request.instance.name)
        merged = conv.merge_instance(
            conv.instance(current), request.instance, list(request.update_mask.paths)
        )
        config, dataset = instance_config(merged)
        return conv.instance(await asyncio.to_thread(self.instances.update, config, dataset))

    async def DeleteInstance(
        self, request: pb.DeleteInstanceRequest, context: Context
    ) -> pb.DeleteInstanceResponse:
        await asyncio.to_thread(self.instances.delete, request.name)
        return pb.DeleteInstanceResponse()

    async def ValidateGoal(
        self, request: pb.ValidateGoalRequest, context: Context
    ) -> pb.ValidateGoalResponse:
        if request.WhichOneof("target") == "draft":
            config, dataset = instance_config(request.draft)
        else:
            record = await asyncio.to_thread(self.instances.get, request.name)
            config, dataset = record.config, record.dataset
        check = await asyncio.to_thread(self.models.validate_goal, config, dataset)
        return mconv.goal_check_to_pb(check)

    # ------------------------------------------------------------ models

    async def TrainModel(
        self, request: pb.TrainModelRequest, context: Context
    ) -> AsyncIterator[pb.TrainModelEvent]:
        if not request.instance:
            raise InvalidArgument("instance", "must not be empty")
        job = partial(self.models.train, request.instance, request.max_trials)
        async for event in progress_stream(
            lambda report: job(progress=report),
            mconv.progress_event,
            mconv.version_event,
            context=context,
        ):
            yield event

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: Context
    ) -> pb.ModelVersion:
        info = await asyncio.to_thread(self.models.get_version, request.instance, request.version)
        return mconv.model_version_to_pb(info)

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Context
    ) -> pb.ListModelVersionsResponse:
        return mconv.versions_to_pb(
            await asyncio.to_thread(self.models.list_versions, request.instance)
        )

    async def GetEvaluation(
        self, request: pb.GetEvaluationRequest, context: Context
    ) -> pb.Evaluation:
        evaluation = await asyncio.to_thread(
            self.models.get_evaluation, request.instance, request.version
        )
        return mconv.evaluation_to_pb(evaluation)

    # ------------------------------------------------------------ journey encoder

    async def TrainEncoder(
        self, request: pb.TrainEncoderRequest, context: Context
    ) -> AsyncIterator[pb.TrainEncoderEvent]:
        if not request.dataset:
            raise InvalidArgument("dataset", "must not be empty")
        kind = econv.kind_from_pb(request.kind)
        job = partial(
            self.encoders.train, request.dataset, request.dimensions, kind, request.sample_size
        )
        async for event in progress_stream(
            lambda report: job(progress=report),
            econv.encoder_progress_event,
            econv.encoder_version_event,
            context=context,
        ):
            yield event

    async def ListEncoderVersions(
        self, request: pb.ListEncoderVersionsRequest, context: Context
    ) -> pb.ListEncoderVersionsResponse:
        return econv.encoder_versions_to_pb(await asyncio.to_thread(self.encoders.list_versions))
