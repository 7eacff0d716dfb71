"""`fit_encoder`: behaviour vectors in, a measured, exported, parity-checked `EncoderBundle` out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import numpy as np
import polars as pl

from foresight.encoder.candidates import (
    NEIGHBOURS,
    Candidate,
    choose,
    fit_autoencoder,
    fit_pca,
    measure,
    prepare,
)
from foresight.encoder.export import to_onnx
from foresight.encoder.model import (
    DEFAULT_DIMENSIONS,
    KINDS,
    Encoder,
    EncoderKind,
    behaviour_as_of,
    onnx_session,
    share_mask,
)
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.features.journey import BehaviourSpec, behaviour_vectors, fit_behaviour_spec
from foresight.progress import Progress, no_progress

__all__ = ["EncoderBundle", "fit_encoder"]

log = logging.getLogger("foresight.encoder")

_EVAL_ROWS: Final[int] = 5_000
_PARITY_ROWS: Final[int] = 256
_PARITY_TOLERANCE: Final[float] = 1e-3
_KEPT_VARIANCE: Final[float] = 0.90


@dataclass(frozen=True)
class EncoderBundle:
    """A fitted encoder ready to publish: its ONNX bytes, the spec it reads and its measurements."""

    spec: BehaviourSpec
    kind: EncoderKind
    dimensions: int
    onnx_model: bytes
    metrics: dict[str, float]
    fitted_rows: int
    chosen_by: str
    """Why this family won, in words (also in metrics.json)."""


@dataclass(frozen=True)
class _HeldOut:
    """The fit/evaluation split of a sample, and what the measurements compare against."""

    fit_rows: np.ndarray
    eval_rows: np.ndarray
    truth: np.ndarray | None
    input_neighbours: np.ndarray
    """Each evaluation row's nearest neighbours in the standardized behaviour space."""


def _behaviour_matrix(
    data: pl.DataFrame | np.ndarray,
    spec: BehaviourSpec | None,
    as_of: datetime | None,
    report: Progress,
) -> tuple[BehaviourSpec, np.ndarray]:
    """The spec and behaviour vectors of `data` (events, or vectors with their spec)."""
    if isinstance(data, pl.DataFrame):
        if data.is_empty():
            raise FailedPrecondition("no events to fit the encoder on")
        report("behaviour", 0.05, f"behaviour vectors of {data['profile_id'].n_unique()} profiles")
        spec = spec or fit_behaviour_spec(data)
        latest = data["timestamp"].max()
        assert isinstance(latest, datetime)
        _, X = behaviour_vectors(data, as_of or behaviour_as_of(latest), spec)
    else:
        if spec is None:
            raise InvalidArgument("spec", "behaviour vectors need the spec they were built with")
        X = np.asarray(data, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != spec.dim:
        raise InvalidArgument("behaviour", f"expected [n, {spec.dim}] vectors, got {X.shape}")
    if len(X) < 50:
        raise FailedPrecondition(f"too few profiles to fit an encoder: {len(X)} (need at least 50)")
    return spec, X


def _components_for_variance(P: np.ndarray, kept: float = _KEPT_VARIANCE) -> int:
    """The fewest principal components of the standardized rows that explain `kept` of the
    variance (label-free: it sizes the embedding)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    ratios = PCA().fit(StandardScaler().fit_transform(P)).explained_variance_ratio_
    return int(np.searchsorted(np.cumsum(ratios), kept) + 1)


def _hold_out(P: np.ndarray, truth: np.ndarray | None, holdout: float, seed: int) -> _HeldOut:
    """Split the prepared rows; find each held-out row's neighbours in the input space."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(P))
    n_eval = max(min(int(len(P) * holdout), _EVAL_ROWS), 10)
    eval_rows, fit_rows = order[:n_eval], order[n_eval:]
    Z_eval = StandardScaler().fit(P[fit_rows]).transform(P[eval_rows])
    input_nn = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(Z_eval)
    return _HeldOut(
        fit_rows=fit_rows,
        eval_rows=eval_rows,
        truth=None if truth is None else np.asarray(truth)[eval_rows],
        input_neighbours=input_nn.kneighbors(Z_eval, return_distance=False)[:, 1:],
    )


def _fit_candidates(
    P: np.ndarray,
    held: _HeldOut,
    kinds: tuple[EncoderKind, ...],
    dims: int,
    seed: int,
    report: Progress,
) -> list[Candidate]:
    """Fit every requested family on the fit rows and measure it on the held-out rows."""
    P_fit, P_eval = P[held.fit_rows], P[held.eval_rows]
    candidates: list[Candidate] = []
    for i, family in enumerate(kinds):
        report("fit", 0.1 + 0.7 * i / len(kinds), f"fitting {family} on {len(P_fit)} profiles")
        cand = (fit_pca if family == "pca" else fit_autoencoder)(P_fit, dims, seed)
        report("evaluate", 0.1 + 0.7 * (i + 0.8) / len(kinds), f"measuring {family}")
        measure(cand, P_eval, held.truth, held.input_neighbours, seed)
        candidates.append(cand)
        log.info("encoder candidate", extra={"kind": family, "metrics": cand.metrics})
    return candidates


def _export_checked(
    winner: Candidate,
    spec: BehaviourSpec,
    mask: np.ndarray,
    dims: int,
    X: np.ndarray,
    P: np.ndarray,
) -> tuple[bytes, float]:
    """The ONNX model of the winner and its largest gap to the fitted pipeline.

    `X` holds raw behaviour rows and `P` the same rows prepared; the exported
    graph must reproduce the fitted pipeline on them.
    """
    model = to_onnx(winner.pipeline, mask, dims)
    check = Encoder(onnx_session(model), spec, winner.kind, dims).raw(X[:_PARITY_ROWS])
    expected = winner.encode(P[:_PARITY_ROWS])
    gap = float(np.max(np.abs(check - expected))) if len(expected) else 0.0
    if gap > _PARITY_TOLERANCE:
        raise FailedPrecondition(
            f"ONNX export of the encoder differs from the fitted model by {gap:.2e}"
        )
    return model, gap


def fit_encoder(
    data: pl.DataFrame | np.ndarray,
    dims: int = DEFAULT_DIMENSIONS,
    kind: EncoderKind | Literal["auto"] = "auto",
    progress: Progress | None = None,
    *,
    spec: BehaviourSpec | None = None,
    as_of: datetime | None = None,
    truth: np.ndarray | None = None,
    seed: int = 0,
    holdout: float = 0.2,
) -> EncoderBundle:
    """Fit the journey encoder from events (a frame) or behaviour vectors (with their spec).

    With events, the behaviour spec is fitted on them and vectors are taken at
    `as_of` (default: just after the latest event). `dims` is the most
    dimensions: the embedding keeps as many as carry 90 % of the behaviour's
    variance. `kind="auto"` fits every family and keeps the winner of `choose`; `truth` (planted labels, e.g.
    personas of generated data, aligned with the rows) adds an ARI per family
    to the metrics but never decides.
    """
    report = progress or no_progress
    if dims < 2:
        raise InvalidArgument("dimensions", "must be at least 2")
    if kind != "auto" and kind not in KINDS:
        raise InvalidArgument("kind", f"unknown encoder kind {kind!r}")
    spec, X = _behaviour_matrix(data, spec, as_of, report)
    mask = share_mask(spec)
    P = prepare(X, mask)
    held = _hold_out(P, truth, holdout, seed)
    # At most `dims` and fewer than the inputs (PCA's limit), and no more
    # components than carry `_KEPT_VARIANCE` of the standardized behaviour:
    # the rest is noise that costs index time (1M generated profiles: 20 of 50
    # components; at 95 %, 26 of them, HNSW took 31 % longer to build for no
    # gain in ARI or lift). The autoencoder gets the same
    # width so the families are compared at equal size.
    dims_eff = int(min(dims, X.shape[1] - 1, _components_for_variance(P[held.fit_rows])))
    kinds: tuple[EncoderKind, ...] = KINDS if kind == "auto" else (kind,)
    candidates = _fit_candidates(P, held, kinds, dims_eff, seed, report)
    winner, reason = choose(candidates, len(held.fit_rows))
    metrics: dict[str, float] = {}
    for cand in candidates:
        metrics.update(cand.metrics)
    metrics["dimensions"] = float(dims_eff)
    metrics["fitted_rows"] = float(len(held.fit_rows))
    metrics["evaluated_rows"] = float(len(held.eval_rows))
    report("export", 0.9, f"exporting {winner.kind} to ONNX")
    model, gap = _export_checked(winner, spec, mask, dims_eff, X[held.eval_rows], P[held.eval_rows])
    metrics["onnx_max_abs_diff"] = gap
    report("export", 1.0, reason)
    return EncoderBundle(
        spec=spec,
        kind=winner.kind,
        dimensions=dims_eff,
        onnx_model=model,
        metrics=metrics,
        fitted_rows=len(held.fit_rows),
        chosen_by=reason,
    )
