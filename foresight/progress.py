"""How a long job reports progress: `report(stage, fraction, message)`.

The gRPC runtime turns each report into a stream message
(`foresight.runtime.jobs.progress_stream`); a report may raise `Cancelled`
when the caller has gone, so a job stops at its next report.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, float, str], None]


def no_progress(stage: str, fraction: float, message: str) -> None:
    """The report of a job nobody follows."""
