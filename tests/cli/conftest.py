"""One small prepared system shared by the CLI, README and browser tests (per session/worker).

The three services run as local processes (SQLite) over ~1,500 synthetic
profiles; the fixture imports the events and profiles, creates the `churn`
instance from an instance file, trains and scores it, creates a HIGH-churn
segment, trains the encoder, builds the index and discovers clusters — all
through the CLI itself, so a broken command fails the fixture loudly.
Tests only read this state or create things under names of their own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from foresight.cli import app
from foresight.tools import localrun
from foresight.tools.generate import generate

PROFILES = 1_500
DATASET = "shop"
INSTANCE = "churn"
SEGMENT = "churn-high"
# The default label gate (500/500) is for real data; this small set trains with fewer.
INSTANCE_YAML = f"""\
name: {INSTANCE}
dataset: {DATASET}
type: CHURN
goal:
  conditions: event_type = "commerce.purchases"
  window_days: 30
min_positives: 50
min_negatives: 50
"""


@dataclass(frozen=True)
class System:
    """The running services and where their data lives."""

    root: Path
    imports: Path
    env: dict[str, str]
    profile_id: str
    #: The output of each preparation step, by command name (train, score, discover …).
    prepared: dict[str, Result]

    def cli(self, *args: str) -> Result:
        """Run `foresight ARGS` in-process against these services."""
        return CliRunner().invoke(app, list(args), env=self.env)


def ok(result: Result) -> Result:
    """Assert a CLI run succeeded without a traceback; return it."""
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The prepared system (see the module docstring)."""
    root = tmp_path_factory.mktemp("cli-system")
    imports = root / "imports"
    generate(imports / "synthetic", profiles=PROFILES, seed=11)
    services = localrun.start(
        root / "var",
        env={
            "FORESIGHT_IMPORT_ROOT": str(imports),
            "FORESIGHT_SHARDS": "2",
            # Never polled during the tests: scoring right after training must load
            # the new version on demand.
            "FORESIGHT_SCORER_POLL_SECONDS": "3600",
        },
    )
    try:
        config = services.client_config()
        env = {
            "FORESIGHT_TRAINER_ADDR": config.trainer,
            "FORESIGHT_SCORER_ADDR": config.scorer,
            "FORESIGHT_SEGMENTER_ADDR": config.segmenter,
            "COLUMNS": "200",
        }
        system = System(root, imports, env, "", {})
        prepared: dict[str, Result] = {}
        (root / "churn.yaml").write_text(INSTANCE_YAML)
        for args in (
            ("import", "synthetic/events.parquet", "--dataset", DATASET),
            ("import-profiles", "synthetic/profiles.parquet"),
            ("instance", "create", "-f", str(root / "churn.yaml")),
            ("train", INSTANCE),
            ("score", INSTANCE),
            ("segment", SEGMENT, "--instance", INSTANCE, "--bucket", "HIGH"),
            ("train-encoder", DATASET),
            ("build-index", DATASET),
            ("discover",),
        ):
            prepared[args[0] if args[0] != "instance" else "instance create"] = ok(
                system.cli(*args)
            )
        yield System(root, imports, env, _a_profile(imports / "synthetic"), prepared)
    finally:
        codes = localrun.stop(services, grace_s=20)
        assert all(code == 0 for code in codes.values()), codes


def _a_profile(folder: Path) -> str:
    import polars as pl

    return str(pl.read_parquet(folder / "profiles.parquet", columns=["profile_id"])[0, 0])


def one_line_error(result: Result, status: str, code: int) -> str:
    """Assert a failure printed exactly one `error: STATUS: ...` line and exited `code`."""
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(rf"error: {status}: .+", lines[0]), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_services(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Addresses where nothing listens (port 1 is never a gRPC server)."""
    monkeypatch.delenv("FORESIGHT_AUTH_TOKEN", raising=False)
    return {
        "FORESIGHT_TRAINER_ADDR": "127.0.0.1:1",
        "FORESIGHT_SCORER_ADDR": "127.0.0.1:1",
        "FORESIGHT_SEGMENTER_ADDR": "127.0.0.1:1",
        **{k: v for k, v in os.environ.items() if k == "PATH"},
    }
