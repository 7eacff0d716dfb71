"""Load-test figures for `make bench` (stage "loadtest"): every RPC a caller hits in a loop.

Runs `python -m loadtest.run --start --tool h2load`: local trainer, scorer and
segmenter on a small synthetic data set (FORESIGHT_BENCH_LOADTEST_PROFILES,
default 5,000) with models, scores, a segment and an index, then each load-test
configuration (loadtest/configs) with h2load. Records, per configuration,
`loadtest_<name>_rps`, `_p50_ms` and `_p99_ms`; any failed call fails the stage.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from loadtest import run as loadtest_run


def run(results: dict[str, Any], workdir: Path) -> None:
    """The loadtest stage of `make bench`."""
    profiles = int(os.environ.get("FORESIGHT_BENCH_LOADTEST_PROFILES", "5000"))
    with tempfile.TemporaryDirectory(prefix="bench-loadtest-") as tmp:
        out = Path(tmp) / "results.json"
        status = loadtest_run.main(
            ["--start", "--tool", "h2load", "--profiles", str(profiles), "--json", str(out)]
        )
        measured = json.loads(out.read_text())
    if status != 0:
        raise RuntimeError("a load test had failed calls (see the table above)")
    results["loadtest_profiles"] = profiles
    for entry in measured:
        name = str(entry["name"])
        latency = {int(k): float(v) for k, v in entry["latency_ms"].items()}
        results[f"loadtest_{name}_rps"] = round(float(entry["rps"]), 1)
        results[f"loadtest_{name}_p50_ms"] = round(latency[50], 2)
        results[f"loadtest_{name}_p99_ms"] = round(latency[99], 2)
