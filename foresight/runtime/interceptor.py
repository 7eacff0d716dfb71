"""One server interceptor: auth, error mapping, metrics and access logs for every RPC."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

from foresight.errors import ForesightError
from foresight.runtime.context import Context
from foresight.runtime.errors import status_for, trailing_metadata_for

log = logging.getLogger("foresight.rpc")

REQUESTS = Counter("foresight_rpc_requests_total", "RPCs handled", ["service", "method", "code"])
LATENCY = Histogram(
    "foresight_rpc_latency_seconds",
    "RPC handling time",
    ["service", "method", "code"],
    buckets=(
        0.0005,
        0.001,
        0.002,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        120,
    ),
)

# Health and reflection stay open so orchestrators can probe without a token.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class _Outcome:
    """Records the status code an RPC ended with."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK


async def _abort(context: Context, outcome: _Outcome, exc: BaseException) -> None:
    """Turn an exception into the RPC's status; never leak internals."""
    if isinstance(exc, ForesightError):
        outcome.code = status_for(exc)
        context.set_trailing_metadata(trailing_metadata_for(exc))
        await context.abort(outcome.code, exc.message)
    if isinstance(exc, NotImplementedError):
        # The generated base servicer's answer for an RPC this build does not serve.
        outcome.code = grpc.StatusCode.UNIMPLEMENTED
        await context.abort(outcome.code, "method not implemented")
    ref = uuid.uuid4().hex[:12]
    log.exception("unhandled error (ref %s)", ref)
    outcome.code = grpc.StatusCode.INTERNAL
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref})")


def _code_of(context: Context, outcome: _Outcome) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return outcome.code.name


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime class is not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor


class ServiceInterceptor(_ServerInterceptor):
    """Wraps every handler: bearer-token check, domain-error mapping, metrics, logs."""

    def __init__(self, token: str | None) -> None:
        self._token = f"Bearer {token}".encode() if token else None

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if self._token is None or details.method.lstrip("/").startswith(OPEN_SERVICES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._token)
        return False

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, method = details.method.lstrip("/").partition("/")
        authorized = self._authorized(details)

        def labels(code: str) -> dict[str, str]:
            return {"service": service, "method": method, "code": code}

        def finish(start: float, context: Context, outcome: _Outcome) -> None:
            code = _code_of(context, outcome)
            elapsed = time.perf_counter() - start
            REQUESTS.labels(**labels(code)).inc()
            LATENCY.labels(**labels(code)).observe(elapsed)
            if code != "OK" or elapsed > 1.0:
                log.info("rpc", extra={"rpc": details.method, "code": code, "ms": elapsed * 1e3})

        async def check_auth(context: Context, outcome: _Outcome) -> None:
            if not authorized:
                outcome.code = grpc.StatusCode.UNAUTHENTICATED
                await context.abort(outcome.code, "missing or invalid bearer token")

        if handler.unary_unary or handler.stream_unary:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: Context) -> Any:
                outcome, start = _Outcome(), time.perf_counter()
                try:
                    await check_auth(context, outcome)
                    return await inner(request, context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await _abort(context, outcome, exc)
                finally:
                    finish(start, context, outcome)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_stream: Any = handler.unary_stream or handler.stream_stream

        async def stream_response(request: Any, context: Context) -> AsyncIterator[Any]:
            outcome, start = _Outcome(), time.perf_counter()
            try:
                await check_auth(context, outcome)
                async for item in inner_stream(request, context):
                    yield item
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await _abort(context, outcome, exc)
            finally:
                finish(start, context, outcome)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            stream_response,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
