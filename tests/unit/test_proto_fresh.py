"""The committed generated code must match what `make proto` produces now."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresight.tools.protogen import REPO, generate

pytestmark = pytest.mark.unit


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert generated, "protoc generated nothing"
    stale = [
        str(rel)
        for rel in generated
        if not (REPO / rel).is_file() or (REPO / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
    committed = {
        p.relative_to(REPO)
        for p in (REPO / "foresight" / "api").rglob("*_pb2*")
        if "__pycache__" not in p.parts
    }
    assert committed == set(generated), "generated files were added or removed without `make proto`"


def test_every_enum_starts_with_unspecified() -> None:
    from foresight.api.common.v1 import common_pb2
    from foresight.api.scorer.v1 import scorer_pb2
    from foresight.api.segmenter.v1 import segmenter_pb2
    from foresight.api.trainer.v1 import trainer_pb2

    for module in (common_pb2, trainer_pb2, scorer_pb2, segmenter_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            first = enum.values_by_number[0].name
            assert first.endswith("_UNSPECIFIED"), (enum.full_name, first)
        assert module.DESCRIPTOR.package.endswith(".v1")
