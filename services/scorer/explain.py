"""Reason codes: exact path-dependent TreeSHAP of the LightGBM model, fast for batches.

LightGBM's C++ TreeSHAP (`predict(pred_contrib=True)`) costs O(leaves × depth²)
per tree and row: with the trainer's bounds (31 leaves, depth 6, a few hundred
trees) about a millisecond per row and core, far too slow for a million
profiles. Batch scoring computes the same numbers another way:

1. A tree's SHAP values for a row depend only on which side of each of the
   tree's splits the row falls. Rows are binned per feature against the
   model's thresholds (NaN and zero get their own bins, since missing-value
   rules treat them specially), so rows with the same bins in a tree's
   features take the same path decisions everywhere in that tree. Per tree,
   the rows collapse to a few hundred or thousand distinct patterns.
2. For a leaf with d distinct path features, path-dependent TreeSHAP reduces
   to a product game: leaf value × Π over path features of (1 if the row
   satisfies the feature's splits, else the cover fraction) when the feature
   is "present". Its Shapley values depend only on the d-bit pattern of
   satisfied features, so they are tabulated once per leaf (≤ 2^6 × 6 values).
3. Per tree: distinct patterns → path bits per leaf → table lookups, summed
   per feature → scattered back to rows. This loop is compiled
   (`shap_kernel`, Numba): in NumPy it took ~15 whole-array passes per tree
   and a sort, 2.7× the time.

The result equals LightGBM's `pred_contrib` up to float rounding (float32
tables summed in float64; the tests hold it to 1e-5). The trees are read from
model.txt directly, so the scorer process never imports LightGBM (which pulls
in pandas, scikit-learn and SciPy: ~120 MB of RSS); only a model this does not
cover (categorical splits, linear trees, averaged output) falls back to
LightGBM's `pred_contrib`. At load,
models.py checks that expected value + contributions give ONNX's probability.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foresight.storage.artifacts import atomic_write_bytes
from services.scorer import model_text as _model_text
from services.scorer import shap_tables as _shap_tables
from services.scorer.model_text import (
    TextModel,
    Unsupported,
    expected_value,
    parse_model_text,
    split_thresholds,
)
from services.scorer.shap_tables import (
    K_ZERO,
    MAX_DEPTH,
    Flat,
    fill_leaf_tables,
    prepare_tree,
)

if TYPE_CHECKING:
    from services.scorer.shap_kernel import Packed

__all__ = ["FastTreeShap", "TreeExplainer", "configure_native_threads"]

log = logging.getLogger("foresight.scorer.explain")


def configure_native_threads() -> None:
    """One OpenBLAS thread: the scorer's matrix work is small per call and gains nothing
    from more, and idle BLAS threads spin on cores the shard workers need."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class FastTreeShap:
    """Pattern-based exact TreeSHAP of a whole model."""

    def __init__(self, model: TextModel) -> None:
        self.n_features = model.n_features
        self.thresholds = split_thresholds(model)
        prepared = [prepare_tree(root, self.thresholds, MAX_DEPTH) for root in model.trees]
        fill_leaf_tables(prepared)
        # Single-leaf trees explain nothing (their value is all expected value).
        self.trees = [tree for tree, _ in prepared if len(tree.features)]
        self.flat = Flat.of(self.trees, self.n_features)
        self.expected_value = sum(expected_value(root) for root in model.trees)
        self._packed: Packed | None = None  # the compiled loop's arrays, packed on first use

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (the explainer cache) without each tree's `by_path`, a view into
        `flat.tables` that pickle would copy (12 MB of 22 for 299 trees), nor the packed
        arrays (the loop packs them where it runs)."""
        state = dict(self.__dict__)
        state["trees"] = [replace(tree, by_path=_NO_TABLE) for tree in self.trees]
        state["_packed"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        row = 0
        for tree in self.trees:  # as `Flat.of` laid them out
            size = len(tree.path_offset) << tree.path_width
            tree.by_path = self.flat.tables[row : row + size, : tree.path_width]
            row += size

    def _codes(self, X: np.ndarray) -> np.ndarray:
        """Per feature [F, n]: position × 4 + zero × 2 + nan, for every row (0 where no
        split uses the feature).

        Position is among all of the feature's thresholds, with NaN and
        |x| ≤ kZeroThreshold counted as 0.0 (what LightGBM compares unless the
        split's missing type is NaN); zero flags that 0.0. Together they fix the
        decision at every split on the feature, whatever its missing type.
        """
        codes = np.zeros((self.n_features, X.shape[0]), dtype=np.int32)
        for f, glob in self.thresholds.items():
            x = X[:, f].astype(np.float64)
            nan = np.isnan(x)
            x[nan] = 0.0
            zero = np.abs(x) <= K_ZERO
            x[zero] = 0.0  # LightGBM reads dense rows sparsely: tiny values become 0.0
            position = np.searchsorted(glob, x, side="left")
            codes[f] = position * 4 + zero * 2 + nan
        return codes

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP contributions [n, F] on the raw score (no bias column)."""
        if X.shape[0] == 0:
            return np.zeros((0, self.n_features))
        # Imported here: Numba (~70 MB) loads only where batches are explained (the
        # shard workers), never in the serving process.
        from services.scorer import shap_kernel

        if self._packed is None:
            self._packed = shap_kernel.Packed.of(self.trees, self.flat)
        X = np.ascontiguousarray(X, dtype=np.float32)
        return shap_kernel.contributions(self._packed, self._codes(X), self.n_features).T


_NO_TABLE = np.zeros((0, 0), dtype=np.float32)
# Built explainers a cache folder keeps (the newest by use): a few models' worth.
CACHE_KEEP = 8


@functools.cache
def _code_digest() -> bytes:
    """The source of the modules that build a `FastTreeShap`: a cached one built by other
    code is never used."""
    digest = hashlib.sha256()
    for module in (__file__, *(m.__file__ for m in (_model_text, _shap_tables))):
        digest.update(Path(str(module)).read_bytes())
    return digest.digest()


def _fast_explainer(model_text: str, cache: Path | None) -> tuple[FastTreeShap, float]:
    """The pattern explainer of a model and its sigmoid, from `cache` (a folder) when it
    holds them for this model text and code, else built, and kept there when the folder
    exists. Raises `Unsupported` for a model the tables cannot explain.

    Building takes ~0.5 s for 300 trees, in every shard worker of every run;
    loading a kept one ~50 ms. An unreadable entry is built again.
    """
    path = None
    if cache is not None:
        key = hashlib.sha256(_code_digest() + model_text.encode()).hexdigest()
        path = cache / f"{key}.explainer"
        try:
            with path.open("rb") as fh:  # read as it unpickles: no whole-file copy in memory
                fast, sigmoid = pickle.load(fh)
            if isinstance(fast, FastTreeShap) and isinstance(sigmoid, float):
                with contextlib.suppress(OSError):
                    os.utime(path)  # in use: kept by the pruning below
                return fast, sigmoid
            log.warning("explainer cache entry %s holds something else: rebuilt", path.name)
        except FileNotFoundError:
            pass
        except Exception as exc:
            log.warning("explainer cache entry %s unreadable (%s): rebuilt", path.name, exc)
    parsed = parse_model_text(model_text)
    fast = FastTreeShap(parsed)
    if path is not None and path.parent.is_dir():
        _keep(path, pickle.dumps((fast, parsed.sigmoid), protocol=pickle.HIGHEST_PROTOCOL))
    return fast, parsed.sigmoid


def _keep(path: Path, data: bytes) -> None:
    """Write a cache entry atomically and drop all but the newest `CACHE_KEEP` entries
    (a cache that cannot be written only costs time: logged, never raised)."""
    try:
        atomic_write_bytes(path, data)
        entries = sorted(
            (
                (modified, entry)
                for entry in path.parent.glob("*.explainer")
                # Hidden names are other writers' temp files, still being written.
                if not entry.name.startswith(".") and (modified := _modified(entry)) is not None
            ),
            reverse=True,
        )
        for _, old in entries[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not keep the explainer in %s: %s", path.parent, exc)


def _modified(entry: Path) -> float | None:
    """When a cache entry was written, or None if another process has just removed it."""
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return None


class TreeExplainer:
    """TreeSHAP contributions and raw scores of one LightGBM text model (thread-safe).

    The pattern tables need no LightGBM at all; a model they cannot handle
    (categorical splits, linear trees, averaged output) is explained by
    LightGBM's own `pred_contrib`, imported only then. With `cache` (a folder)
    the built tables are kept there and loaded instead of built again
    (`_fast_explainer`).
    """

    def __init__(self, model_text: str, cache: Path | None = None) -> None:
        self.fast: FastTreeShap | None = None
        self._booster: Any = None
        try:
            self.fast, self.sigmoid = _fast_explainer(model_text, cache)
            self.n_features = self.fast.n_features
        except Unsupported as exc:
            import lightgbm as lgb  # heavy (pandas, scikit-learn): only for models that need it

            log.info("pattern TreeSHAP not available (%s); using LightGBM pred_contrib", exc)
            self._booster = lgb.Booster(model_str=model_text)
            self.n_features = self._booster.num_feature()
            self.sigmoid = 1.0

    def contributions(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """Contributions [n, F] on the raw (log-odds) score; the bias column is dropped."""
        if X.shape[0] == 0:
            return np.zeros((0, self.n_features))
        if self.fast is not None:
            # Features never hold inf (featurize turns it into NaN); treat one as NaN too.
            return self.fast.contributions(
                np.where(np.isinf(X), np.nan, X) if np.isinf(X).any() else X
            )
        out = self._booster.predict(X, pred_contrib=True, num_threads=max(1, threads))
        return np.asarray(out)[:, : self.n_features]

    def contributions_one(self, x: np.ndarray) -> np.ndarray:
        """Contributions [F] of one row, all trees in one pass (real-time scoring).

        The same tables as `contributions`, summed in another order: equal to it
        within float32 rounding (the tests hold it to 1e-6).
        """
        if self.fast is None:
            return np.asarray(self.contributions(x[None, :])[0])
        row = np.where(np.isinf(x), np.nan, x).astype(np.float32)
        return self.fast.flat.contributions(row, self.n_features)

    def probability(self, X: np.ndarray) -> np.ndarray:
        """The model's probability per row, rebuilt from the contributions (SHAP's local accuracy)."""
        if self.fast is None:
            return np.asarray(self._booster.predict(X, num_threads=1), dtype=np.float64)
        # Row by row (the serving path): the batch loop's compiler stays out of the
        # serving process; the two agree to float rounding (tests/unit/test_scorer_explain).
        raw = np.stack([self.contributions_one(x) for x in X]).sum(axis=1)
        raw += self.fast.expected_value
        return np.asarray(1.0 / (1.0 + np.exp(-self.sigmoid * raw)))
