"""In-process gRPC tests of ValidateGoal, TrainModel (streamed), versions and evaluation."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from foresight.api.common.v1 import common_pb2
from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.tools.generate import generate
from tests.fixtures.trainer import Trainer, start_trainer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, profiles=3_000, seed=5)
    return out


@pytest.fixture
async def trainer(tmp_path: Path, synthetic: Path) -> AsyncIterator[Trainer]:
    t = await start_trainer(tmp_path)
    try:
        shutil.copytree(synthetic, t.imports / "synthetic")  # a symlink out of the root is refused
        await t.stub.ImportDataset(
            pb.ImportDatasetRequest(dataset="shop", path="synthetic/events.parquet")
        )
        yield t
    finally:
        await t.channel.close(None)
        await t.runtime.stop(0)


def _purchase_instance(name: str, **extra: int) -> pb.Instance:
    return pb.Instance(
        name=name,
        type=pb.INSTANCE_TYPE_CONVERSION,
        dataset="shop",
        goal=pb.Goal(
            conditions=common_pb2.Conditions(text='event_type = "commerce.purchases"'),
            window_days=30,
        ),
        min_positives=extra.get("min_positives", 100),
        min_negatives=extra.get("min_negatives", 100),
    )


async def test_validate_train_version_and_evaluation(trainer: Trainer) -> None:
    await trainer.stub.CreateInstance(
        pb.CreateInstanceRequest(instance=_purchase_instance("buyers"))
    )
    check = await trainer.stub.ValidateGoal(pb.ValidateGoalRequest(name="buyers"))
    assert check.eligible > 0 and check.positives > 0 and check.negatives > 0
    assert check.positives + check.negatives == check.eligible and check.enough_data

    stages, final = [], None
    async for event in trainer.stub.TrainModel(
        pb.TrainModelRequest(instance="buyers", max_trials=2)
    ):
        if event.WhichOneof("event") == "progress":
            stages.append(event.progress.stage)
        else:
            final = event.version
    assert final is not None and final.status == common_pb2.JOB_STATUS_READY and final.current
    assert {"labels", "features", "train", "export"} <= set(stages)
    assert final.auc > 0.6 and final.feature_count > 10

    got = await trainer.stub.GetModelVersion(pb.GetModelVersionRequest(instance="buyers"))
    assert got.version == final.version
    evaluation = await trainer.stub.GetEvaluation(pb.GetEvaluationRequest(instance="buyers"))
    assert len(evaluation.deciles) == 10 and evaluation.global_factors
    assert evaluation.quality in (pb.QUALITY_GOOD, pb.QUALITY_POOR)
    assert (trainer.data / "artifacts" / got.artifact_path / "model.onnx").is_file()


async def test_data_gate_is_failed_precondition_with_counts(trainer: Trainer) -> None:
    await trainer.stub.CreateInstance(
        pb.CreateInstanceRequest(instance=_purchase_instance("greedy", min_positives=10**8))
    )
    check = await trainer.stub.ValidateGoal(pb.ValidateGoalRequest(name="greedy"))
    assert not check.enough_data and str(check.positives) in check.message
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in trainer.stub.TrainModel(pb.TrainModelRequest(instance="greedy")):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(check.positives) in (err.value.details() or "")
    versions = await trainer.stub.ListModelVersions(pb.ListModelVersionsRequest(instance="greedy"))
    assert [v.status for v in versions.versions] == [common_pb2.JOB_STATUS_FAILED]


async def test_unknown_instance_is_not_found(trainer: Trainer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await trainer.stub.GetModelVersion(pb.GetModelVersionRequest(instance="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
