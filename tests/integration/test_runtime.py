"""The shared runtime: error mapping, metrics, deadlines, message limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from foresight.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from foresight.runtime import ServiceRuntime
from foresight.settings import ServiceSettings

pytestmark = pytest.mark.integration

SERVICE = "test.Toy"


def _identity(b: bytes) -> bytes:
    return b


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _boom(request: bytes, context: Any) -> bytes:
    raise RuntimeError("password=hunter2 in a stack trace")


async def _lost(request: bytes, context: Any) -> bytes:
    raise FileNotFoundError(2, "No such file or directory", "/srv/secret/var/model.txt")


async def _domain(request: bytes, context: Any) -> bytes:
    kind = request.decode()
    if kind == "invalid":
        raise InvalidArgument("profile_ids", "at most 1000 ids")
    if kind == "exhausted":
        raise ResourceExhausted("too many")
    raise FailedPrecondition("500 positives needed, 12 found")


async def _slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(5)
    return b"late"


async def _stream_fail(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"one"
    raise InvalidArgument("k", "must be positive")


@pytest.fixture
async def toy(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    settings = ServiceSettings(data_dir=tmp_path, port=0, max_message_mb=1)
    runtime = ServiceRuntime(settings, [SERVICE])
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )
        for name, fn in {
            "Echo": _echo,
            "Boom": _boom,
            "Lost": _lost,
            "Domain": _domain,
            "Slow": _slow,
        }.items()
    }
    handlers["Stream"] = grpc.unary_stream_rpc_method_handler(
        _stream_fail, request_deserializer=_identity, response_serializer=_identity
    )
    runtime.server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, handlers)]
    )
    port = await runtime.start()
    await runtime.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    await channel.close(None)
    await runtime.stop(0)


def _call(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
    )


async def test_unexpected_errors_are_internal_without_internals(toy: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(toy, "Boom")(b"x")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details() or ""
    assert "hunter2" not in details and "internal error (ref" in details


async def test_missing_stored_files_are_failed_precondition_without_paths(
    toy: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(toy, "Lost")(b"x")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert "/srv" not in details and "FileNotFoundError" not in details and "(ref" in details


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "profile_ids: at most 1000 ids"),
        ("exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED, "too many"),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION, "500 positives needed, 12 found"),
    ],
)
async def test_domain_errors_map_to_status(
    toy: grpc.aio.Channel, kind: str, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(toy, "Domain")(kind.encode())
    assert err.value.code() == code and err.value.details() == text


async def test_streaming_errors_are_mapped_too(toy: grpc.aio.Channel) -> None:
    call = toy.unary_stream(
        f"/{SERVICE}/Stream", request_serializer=_identity, response_deserializer=_identity
    )(b"")
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in call:
            got.append(item)
    assert got == [b"one"] and err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_deadline_is_honoured(toy: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(toy, "Slow")(b"", timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_message_size_limit(toy: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(toy, "Echo")(b"x" * (2 * 1024 * 1024))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_metrics_count_requests_per_method_and_code(toy: grpc.aio.Channel) -> None:
    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "foresight_rpc_requests_total", {"service": SERVICE, "method": "Echo", "code": code}
        )
        return value or 0.0

    before = count("OK")
    for _ in range(3):
        assert await _call(toy, "Echo")(b"hi") == b"hi"
    assert count("OK") == before + 3
    latency = REGISTRY.get_sample_value(
        "foresight_rpc_latency_seconds_count", {"service": SERVICE, "method": "Echo", "code": "OK"}
    )
    assert latency is not None and latency >= 3
