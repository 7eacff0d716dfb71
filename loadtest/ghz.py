"""Run a configuration with ghz (https://ghz.sh) and read its JSON report.

The committed configuration files name neither `proto` nor `protoset`, so
ghz resolves the method through server reflection, which every Foresight
service serves. (Older ghz releases had no reflection and needed
`--proto`; current ones use reflection automatically when no proto is
given — there is no separate `--reflection` switch to pass.) By hand:

    ghz --config loadtest/configs/get_profile_scores.json   # from the repository root

Here the runner writes a temporary copy with the target address, an absolute
data-file path and JSON output, so the committed files stay runnable as they
are.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from loadtest.calls import LoadConfig
from loadtest.result import Result

_NS_PER_MS = 1e6


def run_config(config: LoadConfig, address: str) -> dict[str, Any]:
    """The ghz configuration actually run: the file plus address, paths and output."""
    raw = dict(config.raw)
    raw["host"] = address
    raw["insecure"] = True
    if "data-file" in raw:
        raw["data-file"] = str(config.data_file)
    raw["format"] = "json"
    return raw


def parse_report(report: dict[str, Any], name: str) -> Result:
    """Result from ghz's JSON report (durations in nanoseconds)."""
    latency = {
        int(d["percentage"]): d["latency"] / _NS_PER_MS
        for d in report.get("latencyDistribution") or []
        if d and d.get("percentage")
    }
    result = Result(
        name=name,
        tool="ghz",
        requests=int(report.get("count", 0)),
        seconds=report.get("total", 0) / 1e9,
        rps=float(report.get("rps", 0.0)),
        latency_ms={p: v for p, v in latency.items() if p in (50, 90, 95, 99)},
        mean_ms=report.get("average", 0) / _NS_PER_MS,
        statuses=dict(report.get("statusCodeDistribution") or {}),
        status_note="grpc statuses of every call (ghz)",
    )
    for message, count in (report.get("errorDistribution") or {}).items():
        result.errors.append(f"{count}× {message}")
    return result


def run(config: LoadConfig, address: str) -> Result:
    """Run one configuration with ghz."""
    with tempfile.TemporaryDirectory(prefix="foresight-ghz-") as tmp:
        cfg_file = Path(tmp) / "config.json"
        out_file = Path(tmp) / "report.json"
        raw = run_config(config, address)
        raw["output"] = str(out_file)
        cfg_file.write_text(json.dumps(raw))
        # Bounded by the config's total and max-duration; the timeout only
        # guards a hang.
        proc = subprocess.run(
            ["ghz", f"--config={cfg_file}"], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"ghz exited {proc.returncode}: {proc.stderr[-2000:]}")
        return parse_report(json.loads(out_file.read_text()), config.name)
