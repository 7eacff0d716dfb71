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


@pytest.mark.parametrize(
    ("old", "new", "read"),
    [
        ("FORESIGHT_WORKERS", "FORESIGHT_SHARD_PROCESSES", "trainer"),
        ("FORESIGHT_SCORER_WORKERS", "FORESIGHT_SCORER_SERVER_PROCESSES", "scorer"),
    ],
)
def test_renamed_process_counts_keep_their_old_names_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    old: str,
    new: str,
    read: str,
) -> None:
    from services.scorer.settings import ScorerSettings

    monkeypatch.setenv("FORESIGHT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FORESIGHT_SCORER_PORT", "6002")  # several server processes need one
    monkeypatch.setenv(old, "3")

    def value() -> int:
        if read == "trainer":
            return load_settings(TrainerSettings).shard_processes
        return load_settings(ScorerSettings).server_processes

    with caplog.at_level("WARNING", logger="foresight.settings"):
        assert value() == 3
    assert f"{old} is deprecated: set {new} instead" in caplog.text
    monkeypatch.delenv(old)
    monkeypatch.setenv(new, "2")
    caplog.clear()
    assert value() == 2 and "deprecated" not in caplog.text
