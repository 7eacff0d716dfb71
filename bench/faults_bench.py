"""The `faults` stage: run the kill -9 / SIGTERM fault suite and record what it found.

The suite (tests/faults) writes its tallies to the file named by
FORESIGHT_FAULTS_REPORT: distinct kill points tried, acknowledged writes
missing after a restart, processes that outlived a killed service. The
stage fails when the suite does, so a figure never comes from a broken run.
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


def run(results: dict[str, Any]) -> None:
    """Run tests/faults in a subprocess; merge its tallies into `results`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"],
            cwd=ROOT,
            env={**os.environ, "FORESIGHT_FAULTS_REPORT": str(report)},
            check=False,
        )
        if not report.exists():
            raise RuntimeError(f"the fault suite wrote no report (exit code {proc.returncode})")
        tallies = json.loads(report.read_text())
    results["kill9_cases"] = tallies["kill9_cases"]
    results["lost_acknowledged_writes"] = tallies["lost_acknowledged_writes"]
    results["orphan_processes_after_kill"] = tallies["orphan_processes_after_kill"]
    results["fault_suite_exit_code"] = proc.returncode
