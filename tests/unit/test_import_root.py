"""FORESIGHT_IMPORT_ROOT defaults under FORESIGHT_DATA_DIR, not the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit


def test_import_root_defaults_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORESIGHT_IMPORT_ROOT", raising=False)
    monkeypatch.setenv("FORESIGHT_DATA_DIR", str(tmp_path / "data"))
    assert TrainerSettings().resolved_import_root == tmp_path / "data" / "imports"


def test_explicit_import_root_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORESIGHT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FORESIGHT_IMPORT_ROOT", str(tmp_path / "elsewhere"))
    assert TrainerSettings().resolved_import_root == tmp_path / "elsewhere"
