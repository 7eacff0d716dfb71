"""`python -m foresight.healthcheck` (the containers' health check) against a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from foresight import healthcheck
from foresight.runtime import ServiceRuntime
from foresight.settings import ServiceSettings

pytestmark = pytest.mark.integration


async def test_exit_status_follows_grpc_health(tmp_path: Path) -> None:
    runtime = ServiceRuntime(ServiceSettings(data_dir=tmp_path, port=0), ["foresight.Test"])
    port = await runtime.start()
    argv = ["--port", str(port), "--timeout", "2"]
    try:
        # The probe is synchronous; run it off the loop that serves it.
        assert await asyncio.to_thread(healthcheck.main, argv) == 1  # NOT_SERVING at start
        await runtime.set_serving(True)
        assert await asyncio.to_thread(healthcheck.main, argv) == 0
        assert await asyncio.to_thread(healthcheck.main, [*argv, "--name", "foresight.Test"]) == 0
        assert await asyncio.to_thread(healthcheck.main, [*argv, "--name", "nope"]) == 1
    finally:
        await runtime.stop(0)
    assert await asyncio.to_thread(healthcheck.main, argv) == 1  # connection refused


def test_port_resolution() -> None:
    env = {"FORESIGHT_SCORER_PORT": "6000", "FORESIGHT_PORT": "7000"}
    assert healthcheck.resolve_ports("scorer", env) == [6000]
    assert healthcheck.resolve_ports("trainer", env) == [7000]
    assert healthcheck.resolve_ports("segmenter", {}) == [50053]
    assert healthcheck.resolve_ports(None, {"FORESIGHT_SEGMENTER_PORT": "1234"}) == [1234]
    assert healthcheck.resolve_ports(None, {}) == [50051, 50052, 50053]
    with pytest.raises(ValueError, match="FORESIGHT_TRAINER_PORT=0"):
        healthcheck.resolve_ports("trainer", {"FORESIGHT_TRAINER_PORT": "0"})
