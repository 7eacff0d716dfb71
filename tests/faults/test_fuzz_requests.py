"""Request fuzzer: every RPC of the three services, the condition parser, garbage bytes.

Requests are drawn from each RPC's request descriptor (random and hostile
field values: huge strings, path escapes, unknown enum numbers, NaN, extreme
integers and timestamps, long id lists) and sent to in-process servers. No
answer may be UNKNOWN or INTERNAL, and every service still answers a normal
call afterwards. The budget is small in `make test`; `make faults` (bench
stage `fuzz`) sets FORESIGHT_FUZZ_EXAMPLES high and collects the counts
(FORESIGHT_FUZZ_REPORT_DIR).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.conditions import parse
from foresight.errors import InvalidArgument

if TYPE_CHECKING:
    from tests.faults.inprocess import Suite

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FORESIGHT_FUZZ_EXAMPLES", "6"))
REPORT = os.environ.get("FORESIGHT_FUZZ_REPORT_DIR")
FORBIDDEN = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=REPORT is None,  # reproducible in `make test`, exploring in `make faults`
    suppress_health_check=list(HealthCheck),
)

# Names the suite knows (so requests reach past "not found") and hostile ones.
HOSTILE_STRINGS = [
    "fuzzdata",
    "fuzzchurn",
    "../../../x",
    "/etc/passwd",
    "..",
    "a/../../b",
    "x" * 70_000,
    "\x00",
    "p" * 129,
    "' or 1=1 --",
    "é" * 300,
]


SERVICES = {
    "trainer": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    "scorer": scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"],
    "segmenter": segmenter_pb2.DESCRIPTOR.services_by_name["SegmenterService"],
}
METHODS = [(name, method) for name, svc in SERVICES.items() for method in svc.methods]


# ------------------------------------------------------------------ strategies


def _int_range(field: FieldDescriptor) -> tuple[int, int]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 0, 2**32 - 1
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 0, 2**64 - 1
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return -(2**63), 2**63 - 1
    return -(2**31), 2**31 - 1


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if field.enum_type is not None:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-1000, 1000))
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.text(max_size=12), st.sampled_from(HOSTILE_STRINGS), st.text(min_size=200)
        )
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.floats(allow_nan=True, allow_infinity=True, width=32)
        return st.floats(allow_nan=True, allow_infinity=True)
    low, high = _int_range(field)
    return st.one_of(st.integers(-3, 120), st.sampled_from([low, high, 0, -1, 1_000_000]))


def _timestamp() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "seconds": st.one_of(
                st.integers(0, 2_000_000_000), st.sampled_from([-(2**62), 2**62, 253402300800])
            ),
            "nanos": st.integers(0, 999_999_999),
        }
    )


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    message = field.message_type
    if message is None:
        return _scalar(field)
    if message.full_name == "google.protobuf.Timestamp":
        return _timestamp()
    if message.full_name == "google.protobuf.Struct":
        values = st.one_of(st.text(max_size=8), st.floats(allow_nan=False), st.booleans())
        return st.dictionaries(st.text(max_size=8), values, max_size=4).map(
            lambda d: {"__struct__": d}
        )
    if message.full_name == "google.protobuf.FieldMask":
        names = st.one_of(st.sampled_from([f.name for f in _instance_fields()]), st.text())
        return st.lists(names, max_size=3).map(lambda paths: {"paths": paths})
    if depth >= 4:
        return st.just({})
    return _fields(message, depth + 1)


def _instance_fields() -> list[FieldDescriptor]:
    return list(trainer_pb2.Instance.DESCRIPTOR.fields)


def _field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _scalar(field.message_type.fields_by_name["key"])
        value = _value(field.message_type.fields_by_name["value"], depth)
        return st.dictionaries(key, value, max_size=3)
    one = _value(field, depth)
    if field.is_repeated:
        small = st.lists(one, max_size=3)
        if field.message_type is None and field.type == FieldDescriptor.TYPE_STRING:
            many = st.integers(1_000, 3_000).map(lambda n: [f"p{i}" for i in range(n)])
            return st.one_of(small, many)
        return small
    return one


def _fields(descriptor: Descriptor, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {}, optional={f.name: _field_strategy(f, depth) for f in descriptor.fields}
    )


def _fill(message: Message, values: dict[str, Any]) -> Message:
    """Set drawn values on a message (nested dicts become nested messages)."""
    if "__struct__" in values:
        struct: Any = message  # a google.protobuf.Struct
        struct.update(values["__struct__"])
        return message
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if inner.message_type is None:
                    target[key] = item
                else:
                    _fill(target[key], item)
        elif field.message_type is not None and field.is_repeated:
            for item in value:
                _fill(target.add(), item)
        elif field.message_type is not None:
            _fill(target, value)
            target.SetInParent()
        elif field.is_repeated:
            target.extend(value)
        else:
            setattr(message, name, value)
    return message


def requests(method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Serialized random requests of a method's input type."""
    cls = GetMessageClass(method.input_type)
    return _fields(method.input_type, 0).map(lambda d: _fill(cls(), d).SerializeToString())


GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=256),
    st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # a length far past the end
    st.just(b"\x08" + b"\xff" * 11),  # an over-long varint
    st.just(b"\x0a\x02" * 200),  # deep nesting that never closes
)


# ------------------------------------------------------------------ calling


class Tally:
    """What the fuzzer sent and what came back."""

    def __init__(self) -> None:
        self.requests = 0
        self.codes: Counter[str] = Counter()
        self.forbidden: list[str] = []

    def record(self, where: str, code: grpc.StatusCode) -> None:
        self.requests += 1
        self.codes[code.name] += 1
        if code in FORBIDDEN:
            self.forbidden.append(f"{where}: {code.name}")


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    """Counts for the whole module; written under FORESIGHT_FUZZ_REPORT_DIR when set."""
    counts = Tally()
    yield counts
    if REPORT:
        Path(REPORT, "requests.json").write_text(
            json.dumps(
                {
                    "fuzz_requests": counts.requests,
                    "fuzz_internal_or_unknown": len(counts.forbidden),
                    "codes": dict(counts.codes),
                },
                indent=2,
            )
        )


def _call(suite: Suite, service: str, method: MethodDescriptor, body: bytes) -> grpc.StatusCode:
    """Send raw bytes to one RPC (with the token); the status it ended with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", "Bearer fuzz-token"),)
    raw = lambda b: b  # noqa: E731 - identity (de)serializer
    channel = suite.channels[service]
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, raw, raw)(
                iter([body, body]), metadata=metadata, timeout=120
            ):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, raw, raw)(iter([body, body]), metadata=metadata, timeout=120)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, raw, raw)(body, metadata=metadata, timeout=120):
                pass
        else:
            channel.unary_unary(path, raw, raw)(body, metadata=metadata, timeout=120)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.full_name for _, m in METHODS])
def test_random_requests_never_end_unknown_or_internal(
    suite: Suite, tally: Tally, service: str, method: MethodDescriptor
) -> None:
    @SETTINGS
    @given(body=requests(method))
    def check(body: bytes) -> None:
        code = _call(suite, service, method, body)
        tally.record(method.full_name, code)
        assert code not in FORBIDDEN, f"{method.full_name} answered {code.name}"

    check()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.full_name for _, m in METHODS])
def test_garbage_bytes_are_invalid_argument(
    suite: Suite, tally: Tally, service: str, method: MethodDescriptor
) -> None:
    @settings(SETTINGS, max_examples=max(2, EXAMPLES // 4))
    @given(body=GARBAGE)
    def check(body: bytes) -> None:
        code = _call(suite, service, method, body)
        tally.record(f"{method.full_name} (garbage)", code)
        assert code not in FORBIDDEN, f"{method.full_name} answered {code.name} to garbage"

    check()


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet='()"= andorexists\\x', max_size=400)))
def test_condition_parser_answers_only_with_invalid_argument(text: str) -> None:
    try:
        parse(text)
    except InvalidArgument as exc:
        assert exc.field == "conditions"


def test_services_stay_healthy_and_answer_a_normal_call(suite: Suite, tally: Tally) -> None:
    """Runs last in file order; in random order it still proves the services serve."""
    for name, service in (
        ("trainer", "foresight.trainer.v1.TrainerService"),
        ("scorer", "foresight.scorer.v1.ScorerService"),
        ("segmenter", "foresight.segmenter.v1.SegmenterService"),
    ):
        health = health_pb2_grpc.HealthStub(suite.channels[name])
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = trainer_pb2_grpc.TrainerServiceStub(suite.channels["trainer"])
    datasets = stub.ListDatasets(
        trainer_pb2.ListDatasetsRequest(),
        metadata=(("authorization", "Bearer fuzz-token"),),
        timeout=30,
    )
    assert "fuzzdata" in {d.name for d in datasets.datasets}
    assert not tally.forbidden, tally.forbidden
