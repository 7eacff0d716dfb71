"""One small prepared system shared by the CLI, README and browser tests (per session/worker).

The system is prepared by the README itself: the fixture starts the three
services as local processes (what `make up` does, on free ports) and runs
every shell command of the README's "Quick start" and "CLI" sections in a
fresh folder, as a person would: generate 3,000 profiles, import, create the
`churn` instance from `foresight instance init`, train, score, segment,
encoder, index, discovery, lookalikes, map. The commands' results are kept
for `test_readme_commands.py`; the other tests only read this state or create
things under names of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from foresight.cli import app
from foresight.tools import localrun

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_SECTIONS = ("Quick start", "CLI")
# README lines the fixture does itself: the environment is this interpreter's,
# and the services are started on free ports instead of 50051–50053.
DONE_BY_THE_FIXTURE = ("make venv && source .venv/bin/activate", "make up")

# Names the README's commands create.
PROFILES = 3_000
DATASET = "shop"
INSTANCE = "churn"
SEGMENT = "high-churn-risk"
PROFILE_ID = "p0000007"  # active in the last weeks of the generated data, so it is scored


@dataclass(frozen=True)
class System:
    """The running services and where their data lives."""

    root: Path
    env: dict[str, str]
    profile_id: str
    #: Each README command that ran, with its exit code and output, in order.
    readme: list[tuple[str, int, str]]

    @property
    def imports(self) -> Path:
        """The trainer's import root (the default: <data dir>/imports)."""
        return self.root / "var" / "imports"

    def cli(self, *args: str) -> Result:
        """Run `foresight ARGS` in-process against these services."""
        return CliRunner().invoke(app, list(args), env=self.env)

    def output_of(self, prefix: str) -> str:
        """Output of the README command that starts with `prefix`."""
        return next(out for cmd, _, out in self.readme if cmd.startswith(prefix))


def readme_commands(text: str | None = None) -> list[str]:
    """Every shell command in the bash blocks of the README's quick start and CLI sections."""
    text = README.read_text() if text is None else text
    commands: list[str] = []
    for section in README_SECTIONS:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        for block in re.findall(r"```bash\n(.*?)```", text[start:end], re.S):
            for line in block.splitlines():
                command = re.sub(r"\s+#\s.*$", "", line).strip()
                if command and not command.startswith("#"):
                    commands.append(command)
    return commands


def ok(result: Result) -> Result:
    """Assert a CLI run succeeded without a traceback; return it."""
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The prepared system (see the module docstring)."""
    root = tmp_path_factory.mktemp("readme-system")
    services = localrun.start(
        root / "var",
        env={
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
        shell_env = {
            **os.environ,
            **env,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        ran: list[tuple[str, int, str]] = []
        for command in readme_commands():
            if command in DONE_BY_THE_FIXTURE:
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=root,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            ran.append((command, done.returncode, done.stdout + done.stderr))
            assert done.returncode == 0, f"README command failed: {command}\n{ran[-1][2]}"
        yield System(root, env, PROFILE_ID, ran)
    finally:
        codes = localrun.stop(services, grace_s=60)
        assert all(code == 0 for code in codes.values()), codes


def one_line_error(result: Result, status: str, code: int) -> str:
    """Assert a failure printed exactly one `error: STATUS: ...` line and exited `code`."""
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(rf"error: {status}: .+", lines[0]), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_services() -> dict[str, str]:
    """Addresses where nothing listens (port 1 is never a gRPC server)."""
    return {
        "FORESIGHT_TRAINER_ADDR": "127.0.0.1:1",
        "FORESIGHT_SCORER_ADDR": "127.0.0.1:1",
        "FORESIGHT_SEGMENTER_ADDR": "127.0.0.1:1",
    }
