"""The lookup snapshot: compact arrays, id lookup, Parquet copy, atomic swaps."""

from __future__ import annotations

import mmap
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from foresight.api.scorer.v1 import scorer_pb2
from foresight.features.spec import FeatureDef, Unit
from services.scorer import converters, lookups
from services.scorer.factors import TopFactors
from services.scorer.records import Bucket, ProfileScores
from services.scorer.snapshot import IdIndex, RunScores, SnapshotStore, id_hashes, sidecar_of
from tests.fixtures.scores import AS_OF, FEATURES, make_scores

pytestmark = pytest.mark.unit


def test_find_every_id_and_miss_unknown_ones() -> None:
    scores = make_scores(5000)
    for row in (0, 1, 2500, 4999):
        assert scores.find(f"profile-{row:07d}") == row
    assert scores.find("profile-9999999") == -1
    assert scores.find("") == -1


def test_instance_score_of_a_row() -> None:
    scores = make_scores(100)
    s = scores.instance_score(0)
    assert (
        s.instance == "churn"
        and s.run_id == "run-1"
        and s.model_version == 3
        and s.scored_at == AS_OF
    )
    assert s.probability == pytest.approx(float(scores.probability[0]))
    assert s.bucket is Bucket(int(scores.bucket[0]))
    assert len(s.factors) == 2  # empty slots are not factors
    assert s.factors[0].text.startswith("Events in the last")


def test_parquet_copy_round_trips(tmp_path: Path) -> None:
    scores = make_scores(1000)
    path = tmp_path / "scores" / "run.parquet"
    scores.write_parquet(path)
    back = RunScores.read_parquet(path)
    assert (back.run_id, back.instance, back.model_version, back.as_of) == (
        "run-1",
        "churn",
        3,
        AS_OF,
    )
    assert back.features == FEATURES
    assert back.ids.to_pylist() == scores.ids.to_pylist()
    np.testing.assert_array_equal(back.probability, scores.probability)
    np.testing.assert_array_equal(back.percentile, scores.percentile)
    np.testing.assert_array_equal(back.factors.codes, scores.factors.codes)
    np.testing.assert_array_equal(back.factors.impacts, scores.factors.impacts)
    np.testing.assert_array_equal(back.factors.values, scores.factors.values)
    assert back.find("profile-0000999") == 999


def test_compact_memory_per_profile() -> None:
    scores = make_scores(100_000)
    # ids (15 B + 8 B offset, and 15 B for the lookup compare), hash + row (8 B),
    # probability 4 B, 3 B score / percentile / bucket, 5 × (2 + 4 + 4) B factors: ~103 B.
    assert scores.nbytes() / len(scores) < 106


def test_empty_run() -> None:
    scores = make_scores(0)
    assert len(scores) == 0 and scores.find("x") == -1


def test_swap_is_atomic_and_never_goes_back_in_time() -> None:
    store = SnapshotStore()
    first, second = make_scores(10, run_id="a"), make_scores(10, run_id="b")
    t = datetime(2025, 1, 1, tzinfo=UTC)
    assert store.swap(first, t)
    held = store.current()
    assert store.swap(second, t + timedelta(seconds=1))
    assert held["churn"].run_id == "a"  # a reader keeps its consistent mapping
    assert store.get("churn") is second
    assert not store.swap(first, t)  # a slow reload of an older run loses
    assert store.get("churn") is second
    store.swap(make_scores(10, instance="purchase"), t)
    store.drop(["churn"])
    assert set(store.current()) == {"purchase"}


def test_sidecar_round_trips_and_is_preferred(tmp_path: Path) -> None:
    scores = make_scores(3000)
    path = tmp_path / "run.parquet"
    scores.write(path)
    assert sidecar_of(path).is_file()
    back = RunScores.load(path)
    assert back.ids.to_pylist() == scores.ids.to_pylist() and back.features == FEATURES
    np.testing.assert_array_equal(back.factors.codes, scores.factors.codes)
    np.testing.assert_array_equal(back.probability, scores.probability)
    assert back.find("profile-0002999") == 2999 and back.as_of == AS_OF
    sidecar_of(path).unlink()
    assert RunScores.load(path).find("profile-0000007") == 7  # falls back to the Parquet copy
    empty = make_scores(0)
    empty.write(tmp_path / "empty.parquet")
    assert len(RunScores.load(tmp_path / "empty.parquet")) == 0
    assert RunScores.load(tmp_path / "empty.parquet").find("profile-0000000") == -1


def test_a_loaded_sidecar_is_mapped_not_copied(tmp_path: Path) -> None:
    scores = make_scores(3000)
    path = tmp_path / "run.parquet"
    scores.write(path)
    back = RunScores.load(path)
    # Read-only views into the file's pages, the id index included (no heap copies).
    for column in (back.probability, back.score, back.factors.codes, back.factors.values):
        assert not column.flags.owndata and not column.flags.writeable
    assert isinstance(back.index.text, mmap.mmap) and not back.index.hashes.flags.writeable
    assert back.nbytes() <= scores.nbytes() - len(scores.index.text)  # no id copy held
    np.testing.assert_array_equal(back.index.hashes, scores.index.hashes)
    np.testing.assert_array_equal(back.index.rows, scores.index.rows)
    # The file may be removed (a pruned run) or replaced while it is served.
    sidecar_of(path).unlink()
    assert back.find("profile-0001234") == 1234
    assert back.instance_score(1234).factors == scores.instance_score(1234).factors


# Two profile ids with the same CRC-32 (the hash the id index sorts), found by search.
TWINS = ("p-fqb17i228u", "p-hh578ntdii")


@pytest.mark.parametrize("mapped", [False, True])
def test_ids_with_the_same_hash_find_their_own_rows(tmp_path: Path, mapped: bool) -> None:
    a, b = TWINS
    assert zlib.crc32(a.encode()) == zlib.crc32(b.encode())
    base = make_scores(50)
    ids = base.ids.to_pylist()
    ids[10], ids[40] = a, b
    scores = RunScores(
        run_id="run-1",
        instance="churn",
        model_version=3,
        as_of=AS_OF,
        features=FEATURES,
        ids=pa.array(ids, pa.large_string()),
        probability=base.probability,
        score=base.score,
        percentile=base.percentile,
        factors=base.factors,
    )
    if mapped:
        scores.write(tmp_path / "run.parquet")
        scores = RunScores.load(tmp_path / "run.parquet")
    assert (scores.find(a), scores.find(b)) == (10, 40)
    assert scores.find(a + "x") == -1


def test_a_damaged_sidecar_is_an_error_not_a_wrong_answer(tmp_path: Path) -> None:
    scores = make_scores(100)
    path = tmp_path / "run.parquet"
    scores.write(path)
    sidecar = sidecar_of(path)
    sidecar.write_bytes(sidecar.read_bytes()[:-100])  # cut short
    with pytest.raises(ValueError):
        RunScores.read_sidecar(sidecar)
    scores.write_parquet(sidecar)  # a Parquet file where the sidecar should be
    with pytest.raises(ValueError):
        RunScores.read_sidecar(sidecar)


def _reference(scores: ProfileScores) -> scorer_pb2.ProfileScores:
    """The response built field by field from rendered domain records (the old converter)."""
    out = scorer_pb2.ProfileScores(profile_id=scores.profile_id)
    for row in scores.scores:
        out.scores.append(converters.instance_score(row.instance_score()))
    return out


@pytest.mark.parametrize("cached_factors", [converters.MAX_CACHED_FACTORS, 7])
def test_lookup_wire_bytes_equal_the_field_by_field_message(
    cached_factors: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a small cap most factors are encoded uncached: both paths write the same bytes.
    monkeypatch.setattr(converters, "MAX_CACHED_FACTORS", cached_factors)
    features = (*FEATURES, FeatureDef("days_since_x", "Days since x", Unit.DAYS))
    scores = make_scores(2000)
    scores = RunScores(
        run_id="run-1",
        instance="churn",
        model_version=0,  # default values are left out of the wire format, as upb does
        as_of=AS_OF,
        features=features,
        ids=scores.ids,
        probability=np.where(np.arange(2000) % 7 == 0, 0.0, scores.probability).astype(np.float32),
        score=scores.score,
        percentile=scores.percentile,
        factors=TopFactors(
            np.where(scores.factors.codes == 3, 20, scores.factors.codes).astype(np.int16),
            np.where(np.arange(5) == 4, 0.0, scores.factors.impacts).astype(np.float32),
            np.where(np.arange(5) == 1, np.nan, scores.factors.values).astype(np.float32),
        ),
    )
    other = make_scores(2000, instance="purchase", run_id="", seed=1)
    store = SnapshotStore()
    store.swap(scores, AS_OF)
    store.swap(other, AS_OF)
    for i in range(0, 2000, 3):
        result = lookups.get_profile_scores(store, f"profile-{i:07d}", [])
        # Bit for bit what upb writes for the message built field by field.
        assert converters.profile_scores(result) == _reference(result).SerializeToString()
    found, missing = lookups.batch_get_profile_scores(store, ["profile-0000001", "nope"], [])
    batch = scorer_pb2.BatchGetProfileScoresResponse.FromString(
        converters.batch_response(found, missing)
    )
    assert list(batch.not_found) == ["nope"]
    assert batch.profiles[0] == _reference(found[0])
    assert batch.profiles[0].scores[0].factors[1].text.endswith(": unknown")


def test_id_hashes_are_zlibs_crc32_and_the_index_takes_them() -> None:
    ids = ["", "a", "p-0001", "é漢字🙂", "x" * 300, *TWINS, *(f"p-{i:09d}" for i in range(5000))]
    array = pa.array(ids, pa.large_string())
    expected = np.array([zlib.crc32(i.encode()) for i in ids], dtype=np.uint32)
    np.testing.assert_array_equal(id_hashes(array), expected)
    np.testing.assert_array_equal(id_hashes(array.slice(3, 100)), expected[3:103])
    assert id_hashes(array.slice(0, 0)).dtype == np.uint32
    # An index given the shards' hashes is the index that hashes the ids itself.
    given = IdIndex.of(array, id_hashes(array))
    built = IdIndex.of(array)
    np.testing.assert_array_equal(given.hashes, built.hashes)
    np.testing.assert_array_equal(given.rows, built.rows)
    assert given.text == built.text
    with pytest.raises(ValueError, match="2 id hashes for"):
        IdIndex.of(array, expected[:2])
