"""One server interceptor: auth, request checks, error mapping, metrics and logs for every RPC.

The bearer token is checked from the call's metadata before the request body
is even decoded: an unauthenticated caller gets UNAUTHENTICATED whatever bytes
it sends. Bodies that do not decode, unknown enum numbers, out-of-range
timestamps and over-long ids are refused as INVALID_ARGUMENT
(`foresight.runtime.requests`) before a servicer runs.

A servicer may answer with the response message already encoded (`bytes`, its
wire format): the serializer sends those as they are. Score lookups build
theirs from cached pieces; turning them into a message only for gRPC to
encode it again cost ~6% of a lookup server's throughput.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

from foresight.errors import ForesightError
from foresight.limits import STATUS_MESSAGE_MAX
from foresight.runtime.context import Context
from foresight.runtime.errors import status_for, trailing_metadata_for
from foresight.runtime.requests import check_request, tolerant

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


class _MethodMetrics:
    """The metric children of one method, bound once per status code (not per call)."""

    def __init__(self, service: str, method: str) -> None:
        self._labels = {"service": service, "method": method}
        self._children: dict[str, tuple[Any, Any]] = {}

    def observe(self, code: str, seconds: float) -> None:
        """Count one call and record its duration."""
        children = self._children.get(code)
        if children is None:
            labels = {**self._labels, "code": code}
            children = (REQUESTS.labels(**labels), LATENCY.labels(**labels))
            self._children[code] = children
        children[0].inc()
        children[1].observe(seconds)


class _Outcome:
    """Records the status code an RPC ended with."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK


async def _abort(context: Context, outcome: _Outcome, exc: BaseException) -> None:
    """Turn an exception into the RPC's status; never leak internals."""
    if isinstance(exc, ForesightError):
        outcome.code = status_for(exc)
        context.set_trailing_metadata(trailing_metadata_for(exc))
        await context.abort(outcome.code, _bounded(exc.message))
    if isinstance(exc, NotImplementedError):
        # The generated base servicer's answer for an RPC this build does not serve.
        outcome.code = grpc.StatusCode.UNIMPLEMENTED
        await context.abort(outcome.code, "method not implemented")
    ref = uuid.uuid4().hex[:12]
    log.exception("unhandled error (ref %s)", ref)
    if isinstance(exc, OSError):
        # A stored file that vanished or cannot be read: the state is wrong, not the
        # server's code. The message names no path; the log (by ref) has it.
        outcome.code = grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(
            outcome.code, f"a stored file is missing or unreadable (ref {ref}, see the log)"
        )
    outcome.code = grpc.StatusCode.INTERNAL
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref})")


def _bounded(message: str) -> str:
    """A status message short enough for any metadata limit (it may echo request values)."""
    if len(message) <= STATUS_MESSAGE_MAX:
        return message
    return message[: STATUS_MESSAGE_MAX - 1] + "…"


@functools.cache
def _encoded_or(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The method's serializer, except for a response the servicer has already encoded
    (`bytes`): that is sent as it is. One per method, made once."""
    if serialize is None:
        return None
    encode = serialize

    def serializer(response: Any) -> bytes:
        return response if type(response) is bytes else encode(response)

    return serializer


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
        self._metrics: dict[str, _MethodMetrics] = {}

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
        metrics = self._metrics.get(details.method)
        if metrics is None:
            service, _, method = details.method.lstrip("/").partition("/")
            metrics = self._metrics.setdefault(details.method, _MethodMetrics(service, method))
        call = _Call(details, handler, self._authorized(details), metrics)

        if handler.unary_unary or handler.stream_unary:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: Context) -> Any:
                outcome, start = _Outcome(), time.perf_counter()
                try:
                    await call.check_auth(context, outcome)
                    return await inner(call.checked(request), context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await _abort(context, outcome, exc)
                finally:
                    call.finish(start, context, outcome)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=call.deserializer,
                response_serializer=_encoded_or(handler.response_serializer),
            )

        inner_stream: Any = handler.unary_stream or handler.stream_stream

        async def stream_response(request: Any, context: Context) -> AsyncIterator[Any]:
            outcome, start = _Outcome(), time.perf_counter()
            try:
                await call.check_auth(context, outcome)
                async for item in inner_stream(call.checked(request), context):
                    yield item
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await _abort(context, outcome, exc)
            finally:
                call.finish(start, context, outcome)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            stream_response,
            request_deserializer=call.deserializer,
            response_serializer=_encoded_or(handler.response_serializer),
        )


class _Call:
    """What the wrappers of one RPC share: auth outcome, request checks, bound metrics."""

    def __init__(
        self,
        details: grpc.HandlerCallDetails,
        handler: grpc.RpcMethodHandler[Any, Any],
        authorized: bool,
        metrics: _MethodMetrics,
    ) -> None:
        self.rpc = details.method
        self.metrics = metrics
        self.authorized = authorized
        self.streaming_request = bool(handler.stream_unary or handler.stream_stream)
        # Unauthenticated bodies are never decoded; authenticated ones decode tolerantly.
        self.deserializer = (
            tolerant(handler.request_deserializer) if authorized else (lambda data: data)
        )

    def checked(self, request: Any) -> Any:
        """The request (or request stream) with every message checked."""
        return _checked_stream(request) if self.streaming_request else check_request(request)

    async def check_auth(self, context: Context, outcome: _Outcome) -> None:
        """Abort UNAUTHENTICATED unless the metadata carried the token."""
        if not self.authorized:
            outcome.code = grpc.StatusCode.UNAUTHENTICATED
            await context.abort(outcome.code, "missing or invalid bearer token")

    def finish(self, start: float, context: Context, outcome: _Outcome) -> None:
        """Record metrics and log slow or failed calls."""
        code = _code_of(context, outcome)
        elapsed = time.perf_counter() - start
        self.metrics.observe(code, elapsed)
        if code != "OK" or elapsed > 1.0:
            log.info("rpc", extra={"rpc": self.rpc, "code": code, "ms": elapsed * 1e3})


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, each message checked as it arrives."""
    async for request in requests:
        yield check_request(request)
