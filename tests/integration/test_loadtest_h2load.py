"""The h2load fallback end to end against a real gRPC server (no Foresight domain).

A grpc.aio server with generic handlers for the four loaded methods records
what it receives: h2load's framed bodies must reach the handler as the
config's first request message, every request must answer HTTP 200, and the
sampled grpc-status (nghttp, same bytes) must be OK.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message

from loadtest import calls, h2load

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _require_h2load() -> None:
    if shutil.which("h2load") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("h2load is required in CI (apt-get install nghttp2-client)")
        pytest.skip("h2load not installed")


Received = dict[str, list[Message]]


def _handler(method: Any, received: Received) -> Callable[[Message, grpc.aio.ServicerContext], Any]:
    response_cls = message_factory.GetMessageClass(method.output_type)

    async def handle(request: Message, context: grpc.aio.ServicerContext) -> Message:
        received[method.full_name].append(request)
        return response_cls()

    return handle


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[int, Received]]:
    """A gRPC server answering the loaded methods with empty responses."""
    received: Received = defaultdict(list)
    server = grpc.aio.server()
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = defaultdict(dict)
    for config in calls.load_configs():
        method = config.method
        by_service[method.containing_service.full_name][method.name] = (
            grpc.unary_unary_rpc_method_handler(
                _handler(method, received),
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
        )
    for service, handlers in by_service.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, received
    await server.stop(0)


async def test_h2load_requests_reach_a_grpc_server_as_the_request(
    fake_server: tuple[int, Received],
) -> None:
    _require_h2load()
    port, received = fake_server
    for config in calls.load_configs():
        small = replace(config, raw={**config.raw, "total": 40, "concurrency": 4})
        result = await asyncio.to_thread(h2load.run, small, f"127.0.0.1:{port}", 5)
        assert result.requests == 40, result
        assert result.http_statuses == {"200": 40}
        assert set(result.latency_ms) == {50, 90, 95, 99}
        assert result.statuses == {"OK": 5}, result.statuses  # nghttp or the client
        got = received[config.method.full_name]
        assert len(got) == 45  # h2load's 40 plus the 5 sampled calls
        assert all(m == config.messages()[0] for m in got)


async def test_python_sample_counts_grpc_statuses(fake_server: tuple[int, Received]) -> None:
    port, _ = fake_server
    config = calls.load_configs(["score_profile"])[0]
    ok = await asyncio.to_thread(h2load.sample_statuses_python, config, f"127.0.0.1:{port}", 3)
    assert ok == {"OK": 3}
    # A method the server does not have: UNIMPLEMENTED, counted, not raised.
    missing = replace(
        config,
        raw={"call": "foresight.scorer.v1.ScorerService.GetInsights", "data": {"instance": "x"}},
    )
    bad = await asyncio.to_thread(h2load.sample_statuses_python, missing, f"127.0.0.1:{port}", 2)
    assert bad == {"UNIMPLEMENTED": 2}
