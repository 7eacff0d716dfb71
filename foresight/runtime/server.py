"""Server bootstrap shared by the three services.

`ServiceRuntime` builds a grpc.aio server with the one interceptor (auth,
error mapping, metrics), standard health (NOT_SERVING until the service says
it is ready, NOT_SERVING again on shutdown), reflection, message-size limits,
optional TLS and a Prometheus endpoint. `run_service` is the process entry:
it wires SIGTERM/SIGINT to a graceful stop whose grace comes from settings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from sqlalchemy.exc import SQLAlchemyError

from foresight.runtime.interceptor import ServiceInterceptor
from foresight.runtime.logs import configure_logging
from foresight.settings import ServiceSettings
from foresight.storage.artifacts import atomic_write_bytes

log = logging.getLogger("foresight.runtime")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Message-size and keepalive options shared by servers and clients."""
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", 60_000),
    ]


class ServiceRuntime:
    """A gRPC server with health, reflection, metrics and graceful shutdown."""

    def __init__(
        self, settings: ServiceSettings, service_names: Sequence[str], reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.service_names = list(service_names)
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        options = [
            *channel_options(settings.max_message_mb),
            ("grpc.so_reuseport", int(reuse_port)),
        ]
        self.server = grpc.aio.server(interceptors=[ServiceInterceptor(token)], options=options)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._background: set[asyncio.Task[None]] = set()

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a loop: registry follower, snapshots) until the server stops."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Run `hook` after the server stopped (release worker pools, close files)."""
        self._shutdown_hooks.append(hook)

    async def start(self) -> int:
        """Bind and start (health NOT_SERVING); returns the bound port."""
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls_cert_file and self.settings.tls_key_file:
            creds = grpc.ssl_server_credentials(
                [
                    (
                        self.settings.tls_key_file.read_bytes(),
                        self.settings.tls_cert_file.read_bytes(),
                    )
                ]
            )
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        await self.set_serving(False)
        await self.server.start()
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.host)
        log.info("listening", extra={"port": self.port, "services": self.service_names})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Publish readiness for the whole server and each service."""
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new RPCs, let running ones finish within the grace."""
        await self.health.enter_graceful_shutdown()
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        for hook in self._shutdown_hooks:
            try:
                await asyncio.to_thread(hook)
            except Exception:
                log.exception("shutdown hook failed")


Setup = Callable[[ServiceRuntime], Awaitable[Callable[[], Awaitable[None]] | None]]


async def serve(
    settings: ServiceSettings,
    service_names: Sequence[str],
    setup: Setup,
    reuse_port: bool = False,
) -> None:
    """Run a service until SIGTERM/SIGINT.

    `setup` registers servicers on `runtime.server` and may return an async
    `ready` hook (load models, indexes); health turns SERVING once it returns.
    `reuse_port`: several processes serve one port (SO_REUSEPORT).
    """
    runtime = ServiceRuntime(settings, service_names, reuse_port=reuse_port)
    try:
        on_ready = await setup(runtime)
        await runtime.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            await on_ready()
    except BaseException:
        # Stop the server inside the loop, so nothing is left for interpreter exit.
        await runtime.server.stop(None)
        raise
    await runtime.set_serving(True)
    if settings.port_file is not None:
        atomic_write_bytes(settings.port_file, str(runtime.port).encode())
    log.info("serving", extra={"port": runtime.port})
    await stop.wait()
    log.info("stopping", extra={"grace_s": settings.grace_seconds})
    await runtime.stop()
    log.info("stopped")


def run_service(
    name: str,
    settings: ServiceSettings,
    service_names: Sequence[str],
    setup: Setup,
    reuse_port: bool = False,
) -> None:
    """Process entry point shared by the three services."""
    configure_logging(name, settings.log_level, settings.log_json)
    with fatal_startup_errors(name):
        asyncio.run(serve(settings, service_names, setup, reuse_port))


@contextmanager
def fatal_startup_errors(name: str) -> Iterator[None]:
    """Turn an unusable database (or file, or port) into one line on stderr and exit 3."""
    try:
        yield
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        reason = str(orig if orig is not None else exc).strip().splitlines() or ["unknown error"]
        sys.stderr.write(
            f"{name}: cannot use the database (FORESIGHT_DATABASE_URL): {reason[0][:300]}\n"
        )
        raise SystemExit(3) from None
    except OSError as exc:  # e.g. the SQLite folder does not exist, the port is taken
        sys.stderr.write(f"{name}: cannot start: {exc}\n")
        raise SystemExit(3) from None
