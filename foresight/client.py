"""A small typed client over the generated stubs.

Used by the CLI, the demo and the tests. It sets channel options (message
sizes, keepalive), a default deadline on every call, the bearer token and TLS
when configured, and retries with exponential backoff on UNAVAILABLE only —
through gRPC's own retry policy, so non-idempotent failures are never replayed
by hand.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2_grpc
from foresight.api.segmenter.v1 import segmenter_pb2_grpc
from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from foresight.runtime.server import channel_options

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],  # every method
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


# The stubs make these generic; the runtime classes are not subscriptable.
class _Defaults(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the default deadline and the bearer token to every call."""

    def __init__(self, timeout: float, token: str | None, stream_timeout: float) -> None:
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.token = token

    def _details(self, details: Any, streaming: bool) -> _CallDetails:
        metadata = list(details.metadata or [])
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        timeout = details.timeout
        if timeout is None:
            timeout = self.stream_timeout if streaming else self.timeout
        return _CallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, False), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, True), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details, True), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(details, True), request_iterator)


@dataclass(frozen=True)
class ClientConfig:
    """Where the services are and how to reach them."""

    trainer: str = "127.0.0.1:50051"
    scorer: str = "127.0.0.1:50052"
    segmenter: str = "127.0.0.1:50053"
    token: str | None = None
    tls_ca_file: Path | None = None
    timeout_s: float = 30.0
    stream_timeout_s: float = 3600.0
    max_message_mb: int = 64


def open_channel(address: str, config: ClientConfig) -> grpc.Channel:
    """A channel with our options, retry policy, deadline and credentials."""
    options: list[tuple[str, Any]] = [
        *channel_options(config.max_message_mb),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
    ]
    if config.tls_ca_file is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=config.tls_ca_file.read_bytes())
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    defaults = _Defaults(config.timeout_s, config.token, config.stream_timeout_s)
    return grpc.intercept_channel(channel, defaults)


T = TypeVar("T")


class ForesightClient:
    """Typed stubs of the three services plus a few conveniences."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self._channels = {
            "trainer": open_channel(self.config.trainer, self.config),
            "scorer": open_channel(self.config.scorer, self.config),
            "segmenter": open_channel(self.config.segmenter, self.config),
        }
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels["trainer"])
        self.scorer = scorer_pb2_grpc.ScorerServiceStub(self._channels["scorer"])
        self.segmenter = segmenter_pb2_grpc.SegmenterServiceStub(self._channels["segmenter"])

    def close(self) -> None:
        """Close the channels."""
        for ch in self._channels.values():
            ch.close()

    def __enter__(self) -> ForesightClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, service: str, name: str = "") -> str:
        """Health status name ("SERVING", "NOT_SERVING", …) of one service."""
        stub = health_pb2_grpc.HealthStub(self._channels[service])
        resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def ingest_file(
        self,
        dataset: str,
        path: Path,
        on_rows: Callable[[int], None] | None = None,
        batch_rows: int = 5_000,
    ) -> trainer_pb2.IngestSummary:
        """Stream a local Parquet / CSV / JSON Lines file (or folder) as raw rows.

        Rows travel as read (Arrow IPC), so the trainer parses timestamps and
        attributes, validates and quarantines them exactly as ImportDataset does.
        `on_rows` is told how many rows each sent batch held.
        """
        from foresight.events.readers import read_batches

        def batches() -> Iterator[trainer_pb2.IngestEventsRequest]:
            for frame in read_batches(path, batch_rows):
                buffer = io.BytesIO()
                frame.write_ipc_stream(buffer)
                yield trainer_pb2.IngestEventsRequest(dataset=dataset, rows=buffer.getvalue())
                if on_rows is not None:
                    on_rows(frame.height)

        return self.trainer.IngestEvents(batches())

    @staticmethod
    def follow(
        stream: Iterable[Any], on_progress: Callable[[common_pb2.Progress], None] | None = None
    ) -> Any:
        """Consume a progress stream (TrainModel, RunScoring, BuildIndex, …); return the last result."""
        result = None
        for event in stream:
            kind = event.WhichOneof("event")
            if kind == "progress":
                if on_progress is not None:
                    on_progress(event.progress)
            else:
                result = getattr(event, kind)
        if result is None:
            raise RuntimeError("the stream ended without a result")
        return result


# ---------------------------------------------------------------- typed values


def to_plain(message: Message) -> dict[str, Any]:
    """A message as plain typed values: every field (zeros included), int64 as int,
    enums by their short name (``BUCKET_HIGH`` → ``"HIGH"``), timestamps as ISO 8601,
    unset messages and optional scalars as None.

    Unlike protobuf's JSON mapping (int64 as strings, zero fields left out) this
    is what tables, ``--json`` output and charts are built from.
    """
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _plain_value(value_fd, v) for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_plain_value(fd, v) for v in value]
        elif fd.has_presence and not message.HasField(fd.name):
            out[fd.name] = None
        else:
            out[fd.name] = _plain_value(fd, value)
    return out


def _plain_value(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        name = fd.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return value.ToDatetime(tzinfo=UTC).isoformat()
        if name in ("google.protobuf.Struct", "google.protobuf.Value"):
            return json_format.MessageToDict(value)
        return to_plain(value)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return enum_name(fd.enum_type, value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def enum_name(enum: EnumDescriptor | Any, number: int) -> str:
    """Short name of an enum value: the type's prefix cut off (VERSION_STATUS_READY → READY)."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return value.name.removeprefix(prefix)
