"""One load test's outcome, whichever tool measured it, and the printed table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Result:
    """Throughput, latency and status counts of one run.

    `statuses` counts gRPC status codes when the tool reports them (ghz) or
    from a sample of calls (h2load); `http_statuses` counts HTTP/2 `:status`
    values (h2load only: a gRPC error still answers HTTP 200).
    """

    name: str
    tool: str
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[int, float] = field(default_factory=dict)  # percentile → ms
    mean_ms: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    http_statuses: dict[str, int] = field(default_factory=dict)
    status_note: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every counted gRPC status is OK and nothing errored."""
        bad = sum(n for code, n in self.statuses.items() if code != "OK")
        http_bad = sum(n for code, n in self.http_statuses.items() if code != "200")
        return self.requests > 0 and bad == 0 and http_bad == 0 and not self.errors


def percentiles(
    values_ms: Sequence[float], points: Iterable[int] = PERCENTILES
) -> dict[int, float]:
    """Nearest-rank percentiles of latencies (ms)."""
    ordered = sorted(values_ms)
    if not ordered:
        return {}
    out = {}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * n), at least 1
        out[p] = ordered[min(rank, len(ordered)) - 1]
    return out


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def format_table(results: Sequence[Result]) -> str:
    """A fixed-width table, one row per load test, then notes on statuses."""
    header = (
        f"{'load test':24s} {'tool':6s} {'requests':>8s} {'req/s':>9s} {'mean ms':>8s} "
        + " ".join(f"{'p' + str(p) + ' ms':>8s}" for p in PERCENTILES)
        + "  status counts"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lat = " ".join(
            f"{r.latency_ms[p]:8.2f}" if p in r.latency_ms else f"{'-':>8s}" for p in PERCENTILES
        )
        status = f"grpc {_counts(r.statuses)}"
        if r.http_statuses:
            status += f" | http {_counts(r.http_statuses)}"
        lines.append(
            f"{r.name:24s} {r.tool:6s} {r.requests:8d} {r.rps:9.1f} {r.mean_ms:8.2f} {lat}  {status}"
        )
    for r in results:
        if r.status_note:
            lines.append(f"{r.name}: {r.status_note}")
        for err in r.errors:
            lines.append(f"{r.name}: ERROR {err}")
    return "\n".join(lines)
