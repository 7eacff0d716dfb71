"""Fault figures from the request fuzzer and the path-escape attempts (`make faults`).

Runs tests/faults/test_fuzz_requests.py with a large example budget and
tests/faults/test_fuzz_paths.py against in-process services, then merges the
counts they report into the results: fuzz_requests, fuzz_internal_or_unknown,
path_escape_attempts_refused and path_escapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Per RPC: up to EXAMPLES random requests plus EXAMPLES // 4 garbage bodies
# (Hypothesis stops early for RPCs whose request has few distinct values, e.g.
# an empty message): at 500, the 44 RPCs got 24,265 requests on 2026-12-03.
EXAMPLES = int(os.environ.get("FORESIGHT_FUZZ_BENCH_EXAMPLES", "500"))


def run(results: dict[str, Any], data: Path | None = None) -> None:
    """Fuzz every RPC and try every path escape; merge the counts into `results`."""
    with tempfile.TemporaryDirectory(prefix="foresight-fuzz-") as report:
        env = {
            **os.environ,
            "FORESIGHT_FUZZ_EXAMPLES": str(EXAMPLES),
            "FORESIGHT_FUZZ_REPORT_DIR": report,
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:randomly",
                "tests/faults/test_fuzz_requests.py",
                "tests/faults/test_fuzz_paths.py",
            ],
            cwd=ROOT,
            env=env,
            check=False,
        )
        requests = json.loads(Path(report, "requests.json").read_text())
        paths = json.loads(Path(report, "paths.json").read_text())
    results["fuzz_requests"] = requests["fuzz_requests"]
    results["fuzz_internal_or_unknown"] = requests["fuzz_internal_or_unknown"]
    results["fuzz_status_codes"] = requests["codes"]
    results["path_escape_attempts_refused"] = paths["path_escape_attempts_refused"]
    results["path_escape_attempts"] = paths["path_escape_attempts"]
    results["path_escapes"] = paths["path_escapes"]
    results["fuzz_tests_passed"] = done.returncode == 0
    if done.returncode != 0:
        # The figures above say what failed; they are recorded, not hidden.
        print(f"warning: the fault tests failed (exit {done.returncode})", file=sys.stderr)
