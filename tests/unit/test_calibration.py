"""Calibration: Platt and centred isotonic maps, the choice by validation, ECE and Brier."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from foresight.calibration import (
    Calibrator,
    brier,
    choose_calibrator,
    expected_calibration_error,
    fit_isotonic,
)

pytestmark = pytest.mark.unit


def _outcomes(p_true: np.ndarray, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(len(p_true)) < p_true).astype(np.int8)


def test_ece_and_brier_on_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    assert brier(y, p) == pytest.approx(0.0025)
    # Two bins: |0.05 - 0| and |0.95 - 1|, each half of the rows.
    assert expected_calibration_error(y, p) == pytest.approx(0.05)
    assert expected_calibration_error(np.array([1, 0]), np.array([0.5, 0.5])) == 0.0
    # Probability 1.0 falls in the last bin, not beyond it.
    assert expected_calibration_error(np.array([1]), np.array([1.0])) == 0.0


def test_a_calibrated_model_keeps_none() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 6_000)
    calibrator, scores = choose_calibrator(p, _outcomes(p, 1))
    assert set(scores) == {"none", "platt", "isotonic"}
    assert calibrator.method == "none"
    np.testing.assert_array_equal(calibrator.apply(p), p)


def test_overconfident_scores_are_fixed_by_platt() -> None:
    rng = np.random.default_rng(2)
    p_true = rng.uniform(0.02, 0.98, 8_000)
    logit = np.log(p_true / (1 - p_true))
    p_model = 1 / (1 + np.exp(-3.0 * logit))  # far too sure of itself
    y = _outcomes(p_true, 3)
    calibrator, scores = choose_calibrator(p_model, y)
    assert calibrator.method in {"platt", "isotonic"}
    assert scores[calibrator.method] < scores["none"]
    if calibrator.method == "platt":
        assert calibrator.a == pytest.approx(1 / 3, abs=0.05)
    y_new = _outcomes(p_true, 4)
    after = calibrator.apply(p_model)
    assert expected_calibration_error(y_new, after) < expected_calibration_error(y_new, p_model)
    assert brier(y_new, after) < brier(y_new, p_model)


def test_isotonic_wins_on_a_shape_platt_cannot_fit_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(5)
    p_model = rng.uniform(0, 1, 10_000)
    p_true = np.where(p_model < 0.5, 0.1, 0.1 + 1.6 * (p_model - 0.5))  # a hinge
    y = _outcomes(p_true, 6)
    calibrator, _ = choose_calibrator(p_model, y)
    assert calibrator.method == "isotonic"
    after = calibrator.apply(p_model)
    # Strictly increasing between knots: no new ties, the AUC is unchanged.
    inside = (p_model > calibrator.knots_x[0]) & (p_model < calibrator.knots_x[-1])
    order = np.argsort(p_model[inside])
    assert np.all(np.diff(after[inside][order]) > 0)
    assert roc_auc_score(y, after) == pytest.approx(roc_auc_score(y, p_model), abs=1e-3)
    assert abs(after[p_model < 0.4].mean() - 0.1) < 0.03


def test_isotonic_knots_are_increasing_and_round_trip_through_json() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0, 1, 0, 1, 1, 1])
    iso = fit_isotonic(p, y)
    assert list(iso.knots_x) == sorted(iso.knots_x) and list(iso.knots_y) == sorted(iso.knots_y)
    # Blocks {0.1}, {0.2, 0.3} (pooled 0.5), {0.4, 0.5, 0.6}: one knot at each centre.
    assert iso.knots_x == pytest.approx((0.1, 0.25, 0.5))
    assert Calibrator.model_validate_json(iso.model_dump_json()) == iso
    assert iso.apply(np.array([0.25]))[0] == pytest.approx(0.5)


def test_one_class_or_tiny_data_is_left_uncalibrated() -> None:
    assert choose_calibrator(np.full(100, 0.3), np.zeros(100))[0].method == "none"
    assert choose_calibrator(np.array([0.1, 0.9]), np.array([0, 1]))[0].method == "none"
