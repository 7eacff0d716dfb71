"""The end-to-end tests are the steps of one mission over running services."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the mission's steps in file order wherever the random order puts them.

    Each step builds on the one before (train → score → restart → SIGTERM), so only
    their position among the other tests is random; `--dist loadscope` keeps the
    module on one worker.
    """
    slots = [n for n, item in enumerate(items) if item.path.parent == HERE]
    steps = sorted((items[n] for n in slots), key=lambda item: (str(item.path), item.location[1]))
    for n, step in zip(slots, steps, strict=True):
        items[n] = step
