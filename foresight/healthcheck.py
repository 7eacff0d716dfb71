"""Container health check: ask a local service over `grpc.health.v1`, exit 0 or 1.

Used by the Dockerfile's HEALTHCHECK and docker-compose.yml instead of the
`grpc_health_probe` binary, so the image needs nothing downloaded at build
time and the check speaks the same protocol the services serve::

    python -m foresight.healthcheck trainer          # port from FORESIGHT_TRAINER_PORT
    python -m foresight.healthcheck --port 50052     # explicit port

Exit status: 0 when the server answers SERVING, 1 otherwise (NOT_SERVING
while models or indexes load and during graceful shutdown, connection
refused, deadline exceeded, unknown service). The one line printed ends up
in `docker inspect`'s health log.

It imports only grpcio and the health stubs (never the service code): the
check runs every few seconds and must start in well under its timeout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Same defaults as the services' settings and foresight.tools.localrun.
DEFAULT_PORTS: Mapping[str, int] = {"trainer": 50051, "scorer": 50052, "segmenter": 50053}


def resolve_ports(service: str | None, env: Mapping[str, str]) -> list[int]:
    """The port(s) to probe, read the way the services' settings read them.

    With a service: `FORESIGHT_<SERVICE>_PORT`, then the generic
    `FORESIGHT_PORT`, then the service's default. Without one (the image's
    own HEALTHCHECK, which does not know which service the container runs):
    `FORESIGHT_PORT`, then the first per-service variable that is set, else
    all three default ports (a container runs one service, so at most one
    answers). Port 0 ("any free port") cannot be probed, so it is an error
    rather than a silent false negative.
    """
    if service:
        candidates = [f"FORESIGHT_{service.upper()}_PORT", "FORESIGHT_PORT"]
    else:
        candidates = ["FORESIGHT_PORT", *(f"FORESIGHT_{s.upper()}_PORT" for s in DEFAULT_PORTS)]
    for var in candidates:
        value = env.get(var)
        if value:
            port = int(value)
            if port == 0:
                raise ValueError(f"{var}=0: the bound port is unknown, pass --port")
            return [port]
    if service is None:
        return list(DEFAULT_PORTS.values())
    if service in DEFAULT_PORTS:
        return [DEFAULT_PORTS[service]]
    raise ValueError(f"unknown service {service!r}")


def open_channel(address: str, env: Mapping[str, str]) -> grpc.Channel:
    """Plain channel, or TLS when the service itself serves TLS.

    With `FORESIGHT_TLS_CERT_FILE` set the server only speaks TLS; we trust
    that certificate and check it against `FORESIGHT_HEALTHCHECK_TLS_NAME`
    (default "localhost"), because the probe connects to 127.0.0.1, which is
    rarely a name the certificate carries.
    """
    cert_file = env.get("FORESIGHT_TLS_CERT_FILE")
    if not cert_file:
        return grpc.insecure_channel(address)
    with open(cert_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    name = env.get("FORESIGHT_HEALTHCHECK_TLS_NAME", "localhost")
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name)])


def check(
    address: str,
    service_name: str = "",
    timeout_s: float = 3.0,
    env: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Ask `address` for the health of `service_name` ("" = the whole server).

    Returns (serving, status text); never raises for RPC failures.
    """
    with open_channel(address, os.environ if env is None else env) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(
                health_pb2.HealthCheckRequest(service=service_name), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call):
                return False, f"{exc.code().name}: {exc.details()}"
            return False, f"ERROR: {exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit status."""
    parser = argparse.ArgumentParser(description="gRPC health check of a Foresight service.")
    parser.add_argument(
        "service",
        nargs="?",
        choices=sorted(DEFAULT_PORTS),
        help="which service (picks its port variable and default)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to probe (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: from the environment)")
    parser.add_argument(
        "--name", default="", help="grpc.health.v1 service name; empty = the whole server"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds")
    args = parser.parse_args(argv)
    try:
        ports = [args.port] if args.port else resolve_ports(args.service, os.environ)
    except ValueError as exc:
        print(f"unhealthy: {exc}")
        return 1
    lines = []
    for port in ports:
        address = f"{args.host}:{port}"
        serving, status = check(address, args.name, args.timeout)
        lines.append(f"{args.service or 'server'} {address}: {status}")
        if serving:
            print(lines[-1])
            return 0
    print("; ".join(lines))
    return 1


if __name__ == "__main__":
    sys.exit(main())
