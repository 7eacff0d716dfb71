"""Probability calibration: fitted by the trainer on out-of-time rows, applied by the scorer.

The model's output (LightGBM log-odds with the class-weighting prior removed,
exported as ONNX) is mapped by a `Calibrator` stored in the model bundle:

- ``none``: the output as is;
- ``platt``: sigmoid(a · logit(p) + b), a 1-D logistic regression;
- ``isotonic``: centred isotonic regression — the pool-adjacent-violators
  fit with each pooled block replaced by one knot at its centre and straight
  lines between knots, so the map is strictly increasing (no new ties: the
  ranking, hence AUC, is unchanged) and smooth between knots.

`choose_calibrator` picks the method with the lowest cross-validated Brier
score on the rows given (the tuning half of the validation cutoff), then fits
it on all of them. Pure numpy/scikit-learn (imported to fit only): no grpc, no ONNX.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

__all__ = [
    "CALIBRATION_FOLDS",
    "Calibrator",
    "brier",
    "choose_calibrator",
    "expected_calibration_error",
    "fit_isotonic",
    "fit_platt",
]

Method = Literal["none", "platt", "isotonic"]
CALIBRATION_FOLDS = 5
# A method must beat a simpler one by this much Brier score to be chosen.
_MIN_GAIN = 1e-5
_EPS = 1e-6
_SEED = 20_240_601

Floats = npt.NDArray[np.float64]


def _logit(p: Floats) -> Floats:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


class Calibrator(BaseModel):
    """A monotone map from model probability to calibrated probability (JSON in the bundle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "none"
    a: float = 1.0
    b: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def apply(self, probabilities: npt.ArrayLike) -> Floats:
        """Calibrated probabilities (float64) for model probabilities."""
        p = np.asarray(probabilities, dtype=np.float64)
        if self.method == "platt":
            z = np.clip(self.a * _logit(p) + self.b, -35.0, 35.0)
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)
        if self.method == "isotonic" and self.knots_x:
            return np.asarray(np.interp(p, self.knots_x, self.knots_y), dtype=np.float64)
        return p


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean squared error of probabilities against 0/1 outcomes."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((pp - yy) ** 2)) if len(yy) else math.nan


def expected_calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10) -> float:
    """ECE: row-weighted mean |mean predicted − observed rate| over equal-width bins."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(yy) == 0:
        return math.nan
    which = np.clip((pp * bins).astype(np.int64), 0, bins - 1)
    rows = np.bincount(which, minlength=bins).astype(np.float64)
    gap = np.abs(np.bincount(which, pp, bins) - np.bincount(which, yy, bins))
    return float(gap.sum() / rows.sum())


def fit_platt(raw: npt.ArrayLike, y: npt.ArrayLike, prior: float = 0.0) -> tuple[float, float]:
    """(a, b) so that sigmoid(a·raw + b) is calibrated on (raw, y): 1-D logistic regression.

    Newton's method from (1, prior); falls back to (1, prior) when the rows
    hold one class only or the fit leaves sane bounds.
    """
    x = np.asarray(raw, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    if len(t) == 0 or t.min() == t.max():
        return 1.0, prior
    a, b = 1.0, prior
    for _ in range(50):
        z = np.clip(a * x + b, -35, 35)
        p = 1.0 / (1.0 + np.exp(-z))
        w = p * (1 - p) + 1e-12
        r = p - t
        g = np.array([np.dot(r, x), r.sum()])
        h = np.array([[np.dot(w * x, x), np.dot(w, x)], [np.dot(w, x), w.sum()]])
        h += np.eye(2) * 1e-9 * len(t)
        step = np.linalg.solve(h, g)
        a, b = a - float(step[0]), b - float(step[1])
        if np.max(np.abs(step)) < 1e-10:
            break
    if not (math.isfinite(a) and math.isfinite(b)) or not 0.1 <= a <= 10.0:
        return 1.0, prior
    return a, b


def fit_isotonic(p: npt.ArrayLike, y: npt.ArrayLike) -> Calibrator:
    """Centred isotonic regression: one knot per pooled block, at the block's mean p."""
    # Only the trainer fits: the scorer, which applies a Calibrator, never imports scikit-learn.
    from sklearn.isotonic import IsotonicRegression

    pp = np.asarray(p, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    order = np.argsort(pp, kind="stable")
    xs, ts = pp[order], yy[order]
    levels = IsotonicRegression(out_of_bounds="clip").fit_transform(xs, ts)
    starts = np.flatnonzero(np.r_[True, np.diff(levels) != 0])
    counts = np.diff(np.r_[starts, len(xs)])
    centres = np.add.reduceat(xs, starts) / counts
    knots_y = np.clip(levels[starts], _EPS, 1 - _EPS)
    centres, first = np.unique(centres, return_index=True)
    return Calibrator(
        method="isotonic",
        knots_x=tuple(float(v) for v in centres),
        knots_y=tuple(float(v) for v in knots_y[first]),
    )


def _fit(method: Method, p: Floats, y: Floats) -> Calibrator:
    if method == "platt":
        a, b = fit_platt(_logit(p), y)
        return Calibrator(method="platt", a=a, b=b)
    if method == "isotonic":
        return fit_isotonic(p, y)
    return Calibrator()


def choose_calibrator(
    probabilities: npt.ArrayLike, y: npt.ArrayLike, folds: int = CALIBRATION_FOLDS
) -> tuple[Calibrator, dict[str, float]]:
    """The method with the lowest cross-validated Brier score, fitted on all rows.

    Returns the calibrator and each method's cross-validated Brier score. With
    one class only (or too few rows to fold) nothing is fitted: ``none``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    methods: tuple[Method, ...] = ("none", "platt", "isotonic")
    if len(t) < 2 * folds or t.min() == t.max():
        return Calibrator(), {"none": brier(t, p)}
    fold_of = np.random.default_rng(_SEED).permutation(len(t)) % folds
    scores: dict[str, float] = {}
    for method in methods:
        errors = 0.0
        for k in range(folds):
            fit_rows, test_rows = fold_of != k, fold_of == k
            calibrator = _fit(method, p[fit_rows], t[fit_rows])
            errors += float(np.sum((calibrator.apply(p[test_rows]) - t[test_rows]) ** 2))
        scores[method] = errors / len(t)
    best: Method = "none"
    for method in methods[1:]:  # simpler first: a richer method must clearly win
        if scores[method] < scores[best] - _MIN_GAIN:
            best = method
    return _fit(best, p, t), scores
