"""Hostile requests get INVALID_ARGUMENT / UNAUTHENTICATED naming the field (issue 11.1, 11.5, 11.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from foresight.api.segmenter.v1 import segmenter_pb2, segmenter_pb2_grpc
from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.limits import CONDITION_ITEMS_MAX, PROFILE_ID_MAX

if TYPE_CHECKING:
    from tests.faults.inprocess import Suite

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]


def _raw(data: bytes) -> bytes:
    return data


def _field(err: grpc.RpcError) -> str | None:
    trailing: Any = getattr(err, "trailing_metadata")()  # noqa: B009 - grpc.Call at run time
    for key, value in trailing or ():
        if key == "foresight-field":
            return str(value)
    return None


def _refused(
    call: object, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    err = caught.value
    assert err.code() == code, err.details()
    return err


def _instance(suite: Suite, **changes: object) -> trainer_pb2.Instance:
    msg = trainer_pb2.Instance(
        name="hostile",
        type=trainer_pb2.INSTANCE_TYPE_CUSTOM,
        dataset=suite.dataset,
        goal=trainer_pb2.Goal(
            window_days=7,
            conditions=common_pb2.Conditions(text='event_type = "commerce.purchases"'),
        ),
    )
    for key, value in changes.items():
        if key == "goal":
            assert isinstance(value, trainer_pb2.Goal)
            msg.goal.CopyFrom(value)
        else:
            setattr(msg, key, value)
    return msg


def test_path_escaping_instance_names_are_refused(suite: Suite, metadata: Metadata) -> None:
    with suite.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        for name in ("../../../x", "/tmp/x", "a/b", ".."):
            err = _refused(
                lambda n=name: stub.CreateInstance(
                    trainer_pb2.CreateInstanceRequest(instance=_instance(suite, name=n)),
                    metadata=metadata,
                )
            )
            assert _field(err) == "name"
            assert "a-z" in (err.details() or "")
    assert not (suite.data.parent / "x").exists()
    assert not list(suite.data.rglob("hostile*"))


def test_unknown_enum_numbers_are_refused(suite: Suite, metadata: Metadata) -> None:
    with suite.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        goal = trainer_pb2.Goal(window_days=7, occurrence=77)  # type: ignore[arg-type]
        err = _refused(
            lambda: stub.CreateInstance(
                trainer_pb2.CreateInstanceRequest(instance=_instance(suite, goal=goal)),
                metadata=metadata,
            )
        )
        assert _field(err) == "instance.goal.occurrence"
        assert "77" in (err.details() or "")
    with suite.channel("segmenter") as channel:
        seg = segmenter_pb2_grpc.SegmenterServiceStub(channel)
        err = _refused(
            lambda: seg.GetCluster(
                segmenter_pb2.GetClusterRequest(cluster_id=1, view=5),  # type: ignore[arg-type]
                metadata=metadata,
            )
        )
        assert _field(err) == "view"
    with suite.channel("scorer") as channel:
        scorer = scorer_pb2_grpc.ScorerServiceStub(channel)
        err = _refused(
            lambda: scorer.ExportSegment(
                scorer_pb2.ExportSegmentRequest(name="x", format=99),  # type: ignore[arg-type]
                metadata=metadata,
            )
        )
        assert _field(err) == "format"


def test_garbage_bytes_are_unauthenticated_without_a_token_and_invalid_with_one(
    suite: Suite, metadata: Metadata
) -> None:
    garbage = b"\xff\xff\xff\xff\x0f garbage \x00\x01"
    with suite.channel("trainer") as channel:
        call = channel.unary_unary("/foresight.trainer.v1.TrainerService/GetInstance", _raw, _raw)
        _refused(lambda: call(garbage), grpc.StatusCode.UNAUTHENTICATED)
        _refused(lambda: call(garbage, metadata=metadata))
        stream = channel.stream_unary(
            "/foresight.trainer.v1.TrainerService/IngestEvents", _raw, _raw
        )
        _refused(lambda: stream(iter([garbage])), grpc.StatusCode.UNAUTHENTICATED)
        _refused(lambda: stream(iter([garbage]), metadata=metadata))


def test_deep_and_huge_conditions_are_refused(suite: Suite, metadata: Metadata) -> None:
    with suite.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        deep = "(" * 1000 + 'event_type = "x"' + ")" * 1000
        goal = trainer_pb2.Goal(window_days=7, conditions=common_pb2.Conditions(text=deep))
        err = _refused(
            lambda: stub.ValidateGoal(
                trainer_pb2.ValidateGoalRequest(draft=_instance(suite, goal=goal)),
                metadata=metadata,
            )
        )
        assert "limit" in (err.details() or "")
        many = common_pb2.ConditionGroup(mode=common_pb2.GROUP_MODE_ANY_OF)
        for i in range(100_000):
            many.items.add(
                condition=common_pb2.Condition(
                    field="value",
                    op=common_pb2.OPERATOR_EQ,
                    values=[common_pb2.Literal(number_value=i)],
                )
            )
        goal = trainer_pb2.Goal(window_days=7, conditions=common_pb2.Conditions(structured=many))
        err = _refused(
            lambda: stub.ValidateGoal(
                trainer_pb2.ValidateGoalRequest(draft=_instance(suite, goal=goal)),
                metadata=metadata,
            )
        )
        assert f"{CONDITION_ITEMS_MAX}" in (err.details() or "")
        assert _field(err) == "goal.conditions"
        # The service still answers a normal call.
        ok = stub.GetInstance(
            trainer_pb2.GetInstanceRequest(name=suite.instance), metadata=metadata
        )
        assert ok.name == suite.instance


def test_long_ids_are_refused_and_never_echoed(suite: Suite, metadata: Metadata) -> None:
    long_id = "p" * 20_000
    with suite.channel("scorer") as channel:
        scorer = scorer_pb2_grpc.ScorerServiceStub(channel)
        err = _refused(
            lambda: scorer.GetProfileScores(
                scorer_pb2.GetProfileScoresRequest(profile_id=long_id), metadata=metadata
            )
        )
        assert _field(err) == "profile_id"
        assert f"{PROFILE_ID_MAX}" in (err.details() or "")
        assert long_id not in (err.details() or "")
    with suite.channel("segmenter") as channel:
        seg = segmenter_pb2_grpc.SegmenterServiceStub(channel)
        err = _refused(
            lambda: seg.RemoveProfiles(
                segmenter_pb2.RemoveProfilesRequest(profile_ids=["ok", long_id]),
                metadata=metadata,
            )
        )
        assert _field(err) == "profile_ids[1]"
