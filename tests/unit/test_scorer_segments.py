"""Segment filters: validation, selection and the stored form."""

from __future__ import annotations

import numpy as np
import pytest

from foresight.errors import InvalidArgument
from services.scorer.records import Bucket, SegmentFilter
from services.scorer.segments import (
    _decode_token,
    _encode_token,
    filter_from_dict,
    filter_to_dict,
    select_rows,
    validate_filter,
)
from tests.fixtures.scores import FEATURES, make_scores

pytestmark = pytest.mark.unit

CODES = {f.code for f in FEATURES}


@pytest.mark.parametrize(
    ("segment_filter", "field"),
    [
        (SegmentFilter(min_percentile=101), "filter.min_percentile"),
        (SegmentFilter(max_percentile=-1), "filter.max_percentile"),
        (SegmentFilter(min_percentile=80, max_percentile=20), "filter.min_percentile"),
        (SegmentFilter(min_probability=-0.1), "filter.min_probability"),
        (SegmentFilter(max_probability=1.01), "filter.max_probability"),
        (SegmentFilter(min_probability=0.8, max_probability=0.2), "filter.min_probability"),
        (SegmentFilter(factor_code="nope"), "filter.factor_code"),
    ],
)
def test_impossible_filters_are_invalid(segment_filter: SegmentFilter, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_filter(segment_filter, CODES)
    assert info.value.field == field


def test_possible_filters_pass() -> None:
    validate_filter(SegmentFilter(), CODES)
    validate_filter(
        SegmentFilter(min_percentile=100, max_percentile=100, min_probability=1.0), CODES
    )
    validate_filter(SegmentFilter(factor_code="count_3d", buckets=(Bucket.HIGH,)), CODES)


def test_selection_combines_every_part_and_orders_by_probability() -> None:
    scores = make_scores(2000)
    f = SegmentFilter(
        buckets=(Bucket.MEDIUM, Bucket.HIGH),
        min_percentile=40,
        max_percentile=90,
        max_probability=0.8,
    )
    rows = select_rows(scores, f)
    p = scores.probability[rows]
    assert len(rows) > 0 and np.all(np.diff(p) <= 0)
    expected = (
        (scores.bucket >= 2)
        & (scores.percentile >= 40)
        & (scores.percentile <= 90)
        & (scores.probability.astype(np.float64) <= 0.8)
    )
    assert sorted(rows.tolist()) == np.flatnonzero(expected).tolist()


def test_factor_filter_keeps_profiles_with_the_factor_in_their_top_factors() -> None:
    scores = make_scores(500)
    rows = select_rows(scores, SegmentFilter(factor_code="count_7d"))
    assert sorted(rows.tolist()) == np.flatnonzero((scores.factors.codes == 7).any(axis=1)).tolist()


def test_a_filter_that_selects_nobody_is_empty_not_an_error() -> None:
    scores = make_scores(100)
    assert select_rows(scores, SegmentFilter(min_probability=1.0)).size == 0


def test_filter_dict_round_trip_and_tokens() -> None:
    f = SegmentFilter((Bucket.HIGH,), 10, 90, 0.2, None, "count_3d")
    assert filter_from_dict(filter_to_dict(f)) == f
    assert filter_from_dict(None) == SegmentFilter()
    assert _decode_token(_encode_token(0.123456789, "p/1")) == (0.123456789, "p/1")
    with pytest.raises(InvalidArgument):
        _decode_token("not-a-token")
