"""The h2load fallback: gRPC over plain HTTP/2 with framed request bodies.

gRPC over HTTP/2 is a POST to `/package.Service/Method` with
`content-type: application/grpc` and `te: trailers`, whose body is a sequence
of length-prefixed messages: one byte compressed-flag (0), four bytes
big-endian length, then the serialized protobuf. h2load sends one such body
per request. It sees only HTTP statuses — a gRPC error still answers
`:status 200` with `grpc-status` in the trailers — so after the run a sample
of the same request goes through `nghttp` (same bytes, same headers; its
verbose output shows the trailers) or, without nghttp, through the Python
gRPC client with the same serialized bytes, and their grpc-status codes are
counted.

h2load sends one body for every request: the first message of the data
file. ghz (when installed) rotates through all of them.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import grpc

from loadtest.calls import LoadConfig
from loadtest.result import Result, percentiles

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_HEADER = struct.Struct(">BI")  # compressed flag, message length
# grpc-status numbers (trailers) to names (what ghz and the client report).
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def frame(payload: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return _HEADER.pack(0, len(payload)) + payload


def unframe(body: bytes) -> list[bytes]:
    """Split a gRPC body into its messages; raises ValueError when malformed."""
    messages = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < _HEADER.size:
            raise ValueError(f"truncated frame header at byte {offset}")
        compressed, length = _HEADER.unpack_from(body, offset)
        if compressed not in (0, 1):
            raise ValueError(f"bad compressed flag {compressed} at byte {offset}")
        if compressed:
            raise ValueError("compressed messages are not used here")
        start = offset + _HEADER.size
        if len(body) < start + length:
            raise ValueError(
                f"frame at byte {offset} wants {length} bytes, {len(body) - start} left"
            )
        messages.append(body[start : start + length])
        offset = start + length
    return messages


def request_body(config: LoadConfig) -> bytes:
    """The framed body h2load sends: the config's first request message."""
    return frame(config.messages()[0].SerializeToString())


def command(config: LoadConfig, body_file: Path, log_file: Path, address: str) -> list[str]:
    """The h2load command line for a configuration."""
    connections = max(1, int(config.raw.get("connections", 1)))
    streams = max(1, config.concurrency // connections)
    cmd = [
        "h2load",
        f"--requests={config.total}",
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        f"--threads={min(connections, 2)}",
        f"--data={body_file}",
        f"--log-file={log_file}",
    ]
    for header in GRPC_HEADERS:
        cmd.append(f"--header={header}")
    cmd.append(f"http://{address}{config.path_header}")
    return cmd


_FINISHED = re.compile(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_output(stdout: str, log_text: str, name: str) -> Result:
    """h2load's summary plus its per-request log (start µs, HTTP status, elapsed µs)."""
    finished = _FINISHED.search(stdout)
    requests = _REQUESTS.search(stdout)
    if finished is None or requests is None:
        raise RuntimeError(f"unexpected h2load output:\n{stdout[-2000:]}")
    seconds = float(finished.group(1)) * _UNITS.get(finished.group(2), 1.0)
    latencies = []
    http: Counter[str] = Counter()
    for line in log_text.splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        http[cols[1]] += 1
        if cols[1] != "-1":  # -1 = no response: no latency to speak of (as ghz)
            latencies.append(int(cols[2]) / 1000.0)
    result = Result(
        name=name,
        tool="h2load",
        requests=int(requests.group(3)),
        seconds=seconds,
        rps=float(finished.group(3)),
        latency_ms=percentiles(latencies),
        mean_ms=sum(latencies) / len(latencies) if latencies else 0.0,
        http_statuses=dict(http),
    )
    failed, errored, timeout = (int(requests.group(i)) for i in (5, 6, 7))
    if failed or errored or timeout:
        result.errors.append(f"h2load: {failed} failed, {errored} errored, {timeout} timeout")
    return result


def sample_statuses_nghttp(body_file: Path, url: str, calls: int) -> Counter[str]:
    """grpc-status of `calls` requests sent by nghttp with exactly h2load's bytes."""
    cmd = ["nghttp", "--null-out", "--verbose", f"--data={body_file}"]
    cmd += [f"--header={h}" for h in GRPC_HEADERS]
    cmd += [f"--multiply={calls}", url]  # one connection, `calls` streams
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, errors="replace")
    counts: Counter[str] = Counter()
    for code in re.findall(r"recv \(stream_id=\d+\) grpc-status: (\d+)", out.stdout):
        counts[_STATUS_NAMES.get(int(code), code)] += 1
    missing = calls - sum(counts.values())
    if missing > 0:
        counts["NO_STATUS"] += missing
    return counts


def sample_statuses_python(config: LoadConfig, address: str, calls: int) -> Counter[str]:
    """grpc-status of `calls` requests sent by the Python client with the same payload."""
    payload = config.messages()[0].SerializeToString()
    counts: Counter[str] = Counter()
    with grpc.insecure_channel(address) as channel:
        # No serializers: the exact bytes h2load frames go on the wire.
        call = channel.unary_unary(
            config.path_header, request_serializer=None, response_deserializer=None
        )
        for _ in range(calls):
            try:
                call(payload, timeout=20)
                counts["OK"] += 1
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                counts[code.name if code is not None else "UNKNOWN"] += 1
    return counts


def run(config: LoadConfig, address: str, sample: int = 50) -> Result:
    """Run one configuration with h2load, then sample gRPC statuses."""
    with tempfile.TemporaryDirectory(prefix="foresight-h2load-") as tmp:
        body_file = Path(tmp) / "body.bin"
        log_file = Path(tmp) / "requests.tsv"
        body_file.write_bytes(request_body(config))
        # Bounded: at most the config's total; the timeout only guards a hang.
        out = subprocess.run(
            command(config, body_file, log_file, address),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"h2load exited {out.returncode}: {out.stderr[-2000:]}")
        result = parse_output(out.stdout, log_file.read_text(), config.name)
        if sample > 0:
            url = f"http://{address}{config.path_header}"
            if shutil.which("nghttp"):
                counts = sample_statuses_nghttp(body_file, url, sample)
                how = "nghttp, same bytes"
            else:
                counts = sample_statuses_python(config, address, sample)
                how = "Python client, same payload"
            result.statuses = dict(counts)
            result.status_note = f"grpc statuses from a sample of {sample} calls ({how})"
    return result
