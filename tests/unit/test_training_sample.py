"""The bounded stratified training sample."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from services.trainer.sampling import sample_training_rows

pytestmark = pytest.mark.unit

VALIDATION = 3


def _labels(profiles: int, seed: int = 1) -> pl.DataFrame:
    """Every profile at cutoffs 0..3, about 10 % positives (more at later cutoffs)."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i:07d}" for i in range(profiles)]
    frames = []
    for cutoff in range(VALIDATION + 1):
        frames.append(
            pl.DataFrame(
                {
                    "profile_id": ids,
                    "cutoff": np.full(profiles, cutoff, dtype=np.int16),
                    "label": (rng.random(profiles) < 0.05 + 0.03 * cutoff).astype(np.int8),
                }
            )
        )
    return pl.concat(frames)


def _split(labels: pl.DataFrame, shards: int) -> list[pl.DataFrame]:
    bucket = pl.col("profile_id").str.slice(1).cast(pl.Int64) % shards
    return [labels.filter(bucket == s) for s in range(shards)]


def test_under_the_bound_nothing_is_cut() -> None:
    frames = _split(_labels(500), 3)
    kept, summary = sample_training_rows(frames, VALIDATION, max_rows=10_000)
    assert summary.kept_rows == summary.training_rows == 1_500 and summary.fraction == 1.0
    assert all(a.equals(b) for a, b in zip(frames, kept, strict=True))


def test_training_rows_are_bounded_and_stratified_validation_is_whole() -> None:
    labels = _labels(20_000)
    kept, summary = sample_training_rows(_split(labels, 4), VALIDATION, max_rows=6_000)
    sample = pl.concat(kept)
    train = sample.filter(pl.col("cutoff") != VALIDATION)
    strata = 2 * VALIDATION
    assert summary.training_rows == 60_000
    assert 6_000 - strata <= train.height == summary.kept_rows <= 6_000
    # The validation cutoff is never sampled.
    full_val = labels.filter(pl.col("cutoff") == VALIDATION).sort("profile_id")
    assert sample.filter(pl.col("cutoff") == VALIDATION).sort("profile_id").equals(full_val)
    # Each (cutoff, label) stratum keeps the same share: positive rates and the
    # weight of each cutoff are those of the population.
    whole = labels.filter(pl.col("cutoff") != VALIDATION)
    for cutoff in range(VALIDATION):
        mine = train.filter(pl.col("cutoff") == cutoff)
        theirs = whole.filter(pl.col("cutoff") == cutoff)
        assert mine.height == pytest.approx(theirs.height * 0.1, abs=2)
        assert mine["label"].mean() == pytest.approx(theirs["label"].mean(), abs=2 / mine.height)
    # Rows keep their shard and their order within it.
    for frame, part in zip(kept, _split(labels, 4), strict=True):
        assert frame.join(part, on=["profile_id", "cutoff"], how="anti").is_empty()
        assert frame.equals(part.join(frame, on=frame.columns, how="semi", maintain_order="left"))


def test_the_sample_does_not_depend_on_how_profiles_are_sharded() -> None:
    labels = _labels(5_000, seed=3)
    one = pl.concat(sample_training_rows(_split(labels, 1), VALIDATION, 2_000)[0])
    many = pl.concat(sample_training_rows(_split(labels, 7), VALIDATION, 2_000)[0])
    key = ["cutoff", "profile_id"]
    assert one.sort(key).equals(many.sort(key))
    again = pl.concat(sample_training_rows(_split(labels, 7), VALIDATION, 2_000)[0])
    assert many.equals(again)


def test_a_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        sample_training_rows(_split(_labels(10), 1), VALIDATION, 0)


def test_the_validation_cutoff_can_be_sampled_at_the_training_rate() -> None:
    labels = _labels(20_000)
    kept, summary = sample_training_rows(
        _split(labels, 4), VALIDATION, max_rows=6_000, sample_validation=True
    )
    sample = pl.concat(kept)
    # The training cutoffs are cut exactly as without it.
    alone = pl.concat(sample_training_rows(_split(labels, 4), VALIDATION, max_rows=6_000)[0])
    training = pl.col("cutoff") != VALIDATION
    assert sample.filter(training).equals(alone.filter(training))
    assert summary.kept_rows == sample.filter(training).height
    # The validation cutoff keeps the training cutoffs' share, stratum by stratum.
    mine = sample.filter(~training)
    theirs = labels.filter(~training)
    assert mine.height == pytest.approx(theirs.height * 0.1, abs=2)
    assert mine["label"].mean() == pytest.approx(theirs["label"].mean(), abs=2 / mine.height)


def test_a_validation_cutoff_larger_than_the_bound_is_cut_to_it() -> None:
    labels = _labels(1_000).filter(
        (pl.col("cutoff") == VALIDATION)
        | ((pl.col("cutoff") == 0) & (pl.col("profile_id") < "p0000200"))
    )
    frames = _split(labels, 2)
    kept, summary = sample_training_rows(frames, VALIDATION, max_rows=300, sample_validation=True)
    sample = pl.concat(kept)
    assert summary.kept_rows == summary.training_rows == 200
    assert 300 - 2 <= sample.filter(pl.col("cutoff") == VALIDATION).height <= 300
    # Below the bound nothing is cut.
    kept, _ = sample_training_rows(frames, VALIDATION, max_rows=1_000, sample_validation=True)
    assert all(a.equals(b) for a, b in zip(frames, kept, strict=True))
