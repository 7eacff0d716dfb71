"""Settings are read from FORESIGHT_* variables and validated at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresight.settings import load_settings
from services.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORESIGHT_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("FORESIGHT_TRAINER_PORT", "6001")
    monkeypatch.setenv("FORESIGHT_GRACE_SECONDS", "3.5")
    s = load_settings(TrainerSettings)
    assert (s.port, s.grace_seconds, s.data_dir) == (6001, 3.5, tmp_path / "d")
    assert s.resolved_database_url.startswith("sqlite:///") and s.data_dir.is_dir()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FORESIGHT_TRAINER_PORT", "70000"),
        ("FORESIGHT_GRACE_SECONDS", "soon"),
        ("FORESIGHT_LOG_LEVEL", "LOUD"),
        ("FORESIGHT_TLS_CERT_FILE", "/nonexistent.pem"),
        ("FORESIGHT_DATABASE_URL", "not a url at all"),
        ("FORESIGHT_DATABASE_URL", "mysql://someone:secret@localhost/db"),
    ],
)
def test_bad_value_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    var: str,
    value: str,
) -> None:
    monkeypatch.setenv("FORESIGHT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exit_info:
        load_settings(TrainerSettings)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    name = var.removeprefix("FORESIGHT_").removeprefix("TRAINER_")
    assert name in err or var in err
    assert "secret" not in err
