"""Fixtures: the three services in-process for the request fuzzer and the bounded-input tests.

A pytest plugin (registered in tests/conftest.py) rather than part of
tests/faults/conftest.py, whose fixtures run the services as processes.

They run on one asyncio loop in a background thread (bound to port 0, with a
bearer token), so synchronous tests (Hypothesis) call them over real gRPC
channels. A small dataset and one instance exist, so lookups by those names
go past "not found".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from foresight.api.common.v1 import common_pb2
from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.runtime import ServiceRuntime
from services.scorer.main import build_scorer, start_scorer
from services.scorer.settings import ScorerSettings
from services.segmenter.main import SERVICE_NAME as SEGMENTER
from services.segmenter.main import make_setup
from services.segmenter.settings import SegmenterSettings
from services.trainer.main import SERVICE_NAME as TRAINER
from services.trainer.main import build_servicer
from services.trainer.settings import TrainerSettings

TOKEN = "fuzz-token"
DATASET = "fuzzdata"
INSTANCE = "fuzzchurn"


@dataclass
class Suite:
    """Ports of the running services and the thread that runs them."""

    data: Path
    dataset: str = DATASET
    instance: str = INSTANCE
    ports: dict[str, int] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    stops: list[Any] = field(default_factory=list)
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the services' loop and wait for its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=300)

    def channel(self, service: str) -> grpc.Channel:
        """A synchronous channel to one service."""
        return grpc.insecure_channel(f"127.0.0.1:{self.ports[service]}")


def _common(data: Path) -> dict[str, Any]:
    return {
        "data_dir": data,
        "port": 0,
        "host": "127.0.0.1",
        "shards": 2,
        "auth_token": TOKEN,
        "log_json": False,
        "log_level": "ERROR",
        "max_message_mb": 4,
    }


async def _start(suite: Suite) -> None:
    imports = suite.data / "imports"
    imports.mkdir(parents=True, exist_ok=True)
    trainer_settings = TrainerSettings(**_common(suite.data), import_root=imports, workers=1)
    runtime = ServiceRuntime(trainer_settings, [TRAINER])
    servicer, recover = build_servicer(trainer_settings)
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, runtime.server)
    runtime.on_shutdown(servicer.models.close)
    suite.ports["trainer"] = await runtime.start()
    await recover()
    await runtime.set_serving(True)
    suite.stops.append(runtime.stop)

    scorer_settings = ScorerSettings(**_common(suite.data), scoring_threads=1)
    scorer = build_scorer(scorer_settings, servicer.ingestor.db)
    running = await start_scorer(scorer_settings, scorer, follow=False)
    suite.ports["scorer"] = running.port
    suite.stops.append(running.stop)

    segmenter_settings = SegmenterSettings(**_common(suite.data), workers=1, snapshot_interval_s=0)
    seg_runtime = ServiceRuntime(segmenter_settings, [SEGMENTER])
    ready = await make_setup(segmenter_settings)(seg_runtime)
    suite.ports["segmenter"] = await seg_runtime.start()
    await ready()
    await seg_runtime.set_serving(True)
    suite.stops.append(seg_runtime.stop)


def _seed(suite: Suite) -> None:
    """A tiny dataset and one instance, through the public RPCs."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i in range(200):
        event = common_pb2.Event(
            event_id=f"e{i}",
            profile_id=f"p{i % 20}",
            event_type="commerce.purchases" if i % 4 == 0 else "web.webpagedetails.pageViews",
            channel="web",
        )
        event.timestamp.FromDatetime(start + timedelta(hours=i))
        events.append(event)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with suite.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        stub.IngestEvents(
            iter([trainer_pb2.IngestEventsRequest(dataset=DATASET, events=events)]),
            metadata=metadata,
        )
        stub.CreateInstance(
            trainer_pb2.CreateInstanceRequest(
                instance=trainer_pb2.Instance(
                    name=INSTANCE,
                    type=trainer_pb2.INSTANCE_TYPE_CHURN,
                    dataset=DATASET,
                    goal=trainer_pb2.Goal(window_days=7),
                )
            ),
            metadata=metadata,
        )


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """Trainer, scorer and segmenter on one background loop, seeded with a little data."""
    suite = Suite(tmp_path_factory.mktemp("suite") / "var")
    thread = threading.Thread(target=suite.loop.run_forever, name="fuzz-services", daemon=True)
    thread.start()
    try:
        suite.run(_start(suite))
        _seed(suite)
        suite.channels = {name: suite.channel(name) for name in suite.ports}
        yield suite
    finally:
        for channel in suite.channels.values():
            channel.close()
        for stop in reversed(suite.stops):
            suite.run(stop(0))
        suite.loop.call_soon_threadsafe(suite.loop.stop)
        thread.join(timeout=30)
        suite.loop.close()


@pytest.fixture
def metadata() -> tuple[tuple[str, str], ...]:
    """The bearer token the suite's services require."""
    return (("authorization", f"Bearer {TOKEN}"),)
