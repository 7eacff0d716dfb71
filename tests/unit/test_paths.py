"""Names that become paths are slugs; derived paths never leave their root (issue 11.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresight.conditions import ConditionGroup
from foresight.errors import InvalidArgument, PermissionDenied
from foresight.events.store import EventStore
from foresight.instance import Goal, InstanceConfig, validate_config
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.paths import SLUG_MAX, confined, slug

pytestmark = pytest.mark.unit

HOSTILE_NAMES = [
    "../../../x",
    "..",
    ".",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "x\x00y",
    "",
    " churn",
    "Churn",
    "-lead",
    "_lead",
    "a" * (SLUG_MAX + 1),
    "café",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_slug_refuses_names_that_could_leave_a_folder(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        slug("name", name)
    assert caught.value.field == "name"
    assert "a-z" in caught.value.reason


@pytest.mark.parametrize("name", ["churn", "likely-churn_30d", "a", "0" * SLUG_MAX])
def test_slug_accepts_plain_names(name: str) -> None:
    assert slug("name", name) == name


def test_confined_refuses_dot_dot_absolute_and_the_root_itself(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for parts in (("..", "x"), ("/etc",), ("a/../../x",), ()):
        with pytest.raises(PermissionDenied) as caught:
            confined(root, *parts)
        assert str(tmp_path) not in caught.value.message
    assert confined(root, "a", "b.txt") == (root / "a" / "b.txt").resolve()


def test_confined_follows_symlinks_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "models").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PermissionDenied):
        confined(root, "models", "churn")


def test_instance_name_is_a_slug() -> None:
    config = InstanceConfig(name="../../../x", goal=Goal(conditions=ConditionGroup()))
    with pytest.raises(InvalidArgument) as caught:
        validate_config(config)
    assert caught.value.field == "name"


def test_artifact_store_never_writes_outside_its_root(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with (
        pytest.raises(PermissionDenied),
        store.publish("models/../../../escaped/v1", owner="trainer"),
    ):
        pass
    assert not (tmp_path / "escaped").exists()
    (tmp_path / "artifacts" / "models").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PermissionDenied), store.publish("models/churn/v1", owner="trainer"):
        pass
    assert not (tmp_path / "churn").exists()
    assert store.remove("models/../..") is False
    assert tmp_path.exists()


def test_event_store_dataset_names_are_slugs(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events")
    for name in ("../x", "..", "a/b"):
        with pytest.raises(InvalidArgument):
            store.dataset_dir(name)
    store.delete_dataset("clicks")  # a valid name that does not exist is fine
    with pytest.raises(InvalidArgument):
        store.delete_dataset("../../")
    assert tmp_path.exists()
