"""Readers: Parquet, CSV and JSON Lines in bounded raw batches."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from foresight.errors import InvalidArgument, NotFound
from foresight.events.readers import list_input_files, read_batches
from foresight.events.schema import MALFORMED_COLUMN

pytestmark = pytest.mark.unit


def _rows(count: int) -> list[dict[str, object]]:
    return [
        {
            "profile_id": f"p{i}",
            "timestamp": "2024-03-01T10:00:00Z",
            "event_type": "commerce.productViews",
            "value": i * 1.5,
        }
        for i in range(count)
    ]


def test_parquet_is_read_in_bounded_batches(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pl.DataFrame(_rows(25)).write_parquet(path, row_group_size=7)

    batches = list(read_batches(path, batch_rows=10))

    assert [batch.height for batch in batches] == [10, 10, 5]
    assert batches[0]["value"].dtype == pl.Float64  # stored types are kept


def test_csv_columns_arrive_as_text(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    pl.DataFrame(_rows(25)).write_csv(path)

    batches = list(read_batches(path, batch_rows=10))

    assert sum(batch.height for batch in batches) == 25
    assert all(batch.height <= 10 for batch in batches)
    assert all(dtype == pl.String for batch in batches for dtype in batch.dtypes)


def test_jsonl_nested_attributes_and_mixed_types(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {
            "profile_id": "a",
            "timestamp": 1709287200000,
            "event_type": "x",
            "attributes": {"device": "ios"},
        },
        {
            "profile_id": "b",
            "timestamp": "2024-03-01T10:00:00Z",
            "event_type": "x",
            "value": "12.5",
        },
        {"profile_id": "c", "timestamp": "2024-03-01T10:00:00Z", "event_type": "x", "value": 3},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")

    (batch,) = list(read_batches(path))

    assert batch.height == 3
    assert batch["profile_id"].to_list() == ["a", "b", "c"]
    assert "attributes" in batch.columns


def test_jsonl_malformed_lines_are_kept_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"profile_id": "a"}\n{"profile_id": \n[1, 2]\n{"profile_id": "d", "value": [1]}\n'
    )

    (batch,) = list(read_batches(path))

    assert batch.height == 4
    assert batch[MALFORMED_COLUMN].is_not_null().to_list() == [False, True, True, False]
    assert batch["profile_id"].to_list() == ["a", None, None, "d"]


def test_folder_reads_supported_files_sorted(tmp_path: Path) -> None:
    pl.DataFrame(_rows(2)).write_csv(tmp_path / "b.csv")
    pl.DataFrame(_rows(3)).write_parquet(tmp_path / "a.parquet")
    (tmp_path / ".hidden.csv").write_text("junk")
    (tmp_path / "notes.txt").write_text("ignored")

    files = list_input_files(tmp_path)

    assert [file.name for file in files] == ["a.parquet", "b.csv"]
    assert sum(batch.height for batch in read_batches(tmp_path)) == 5


def test_bad_paths_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "events.xlsx"
    path.write_text("x")
    with pytest.raises(InvalidArgument) as error:
        list(read_batches(path))
    assert error.value.field == "path"
    assert str(tmp_path) not in error.value.message


def test_a_missing_file_is_not_found_without_its_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as error:
        list(read_batches(tmp_path / "missing.csv"))
    assert str(tmp_path) not in error.value.message
