"""Model registry follower: load READY model versions and swap them in atomically.

Each instance serves one `LoadedModel`: one onnxruntime session (thread-safe,
shared by every handler and the batch scorer) for probabilities, and the
LightGBM text model for TreeSHAP reason codes. The registry polls the
`model_versions` table; a new version is loaded and verified completely
before it replaces the old one, and a version that fails to load leaves the
previous one serving, with the failure in `status()` and a metric.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client import Counter, Gauge

from foresight import instance as instance_config
from foresight.calibration import Calibrator
from foresight.errors import FailedPrecondition, ForesightError, NotFound, public_reason
from foresight.evaluation_report import ModelEvaluation
from foresight.factor_groups import FactorGroups
from foresight.features.featurize import event_columns
from foresight.features.labels import population_columns
from foresight.features.spec import FeatureDef, FeatureSpec
from foresight.instance import InstanceConfig
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import (
    MODEL_INPUT,
    MODEL_ONNX,
    MODEL_OUTPUT,
    MODEL_TEXT,
    read_model_bundle,
    serving_versions,
)
from foresight.storage.db import Database
from foresight.storage.models import utcnow
from services.scorer.explain import TreeExplainer

log = logging.getLogger("foresight.scorer.models")

LOAD_FAILURES = Counter(
    "foresight_scorer_model_load_failures_total", "Model versions that failed to load", ["instance"]
)
SERVING_VERSION = Gauge("foresight_scorer_model_version", "Model version serving", ["instance"])

# ONNX (scores) and model.txt (reasons) must be the same model: a mismatched
# pair of files would give scores whose reasons explain another model.
PARITY_TOLERANCE = 1e-3
_INFER_CHUNK = 65_536


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One instance's model version, ready to score and explain."""

    instance: str
    version: int
    config: InstanceConfig
    spec: FeatureSpec
    session: ort.InferenceSession
    explainer: TreeExplainer
    evaluation: ModelEvaluation | None
    """evaluation.json (None in a bundle without one)."""
    loaded_at: datetime
    created_at: datetime | None = None
    # Fitted by the trainer on out-of-time rows (calibrator.json; none in older bundles).
    calibrator: Calibrator = field(default_factory=Calibrator)
    # Near-identical features whose reasons are merged (factor_groups.json).
    factor_groups: FactorGroups = field(default_factory=FactorGroups)
    folder: Path | None = None  # the bundle it was loaded from (shard workers load it too)

    @property
    def features(self) -> tuple[FeatureDef, ...]:
        """Feature definitions in matrix column order."""
        return self.spec.features

    @functools.cached_property
    def event_columns(self) -> frozenset[str]:
        """The event columns scoring reads (features and population): readers skip the rest.
        Cached: building the expressions they come from costs ~1 ms."""
        return frozenset(event_columns(self.spec) | population_columns(self.config.population))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Calibrated goal probability per row (float32): ONNX, then the calibrator."""
        raw = self.predict_uncalibrated(X)
        if self.calibrator.method == "none":
            return raw
        return self.calibrator.apply(raw).astype(np.float32)

    def predict_uncalibrated(self, X: np.ndarray) -> np.ndarray:
        """The model's own probability per row (float32), through ONNX."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] <= _INFER_CHUNK:
            return np.asarray(
                self.session.run([MODEL_OUTPUT], {MODEL_INPUT: X})[0][:, 1], dtype=np.float32
            )
        parts = [
            self.session.run([MODEL_OUTPUT], {MODEL_INPUT: X[i : i + _INFER_CHUNK]})[0][:, 1]
            for i in range(0, X.shape[0], _INFER_CHUNK)
        ]
        return np.concatenate(parts).astype(np.float32)

    def contributions(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """TreeSHAP contributions [n, F] on the log-odds (bias column dropped).

        Each factor group's total sits on its leader, so reasons do not repeat.
        """
        return self.factor_groups.merge(self.explainer.contributions(X, threads))

    def contributions_one(self, x: np.ndarray) -> np.ndarray:
        """The contributions [1, F] of one row (real-time scoring), factor groups merged."""
        return self.factor_groups.merge(self.explainer.contributions_one(x)[None, :])


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread per run: lookups score one row (thread hand-offs would cost
    # more than the inference) and batch scoring runs chunks on many threads.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # the unused "label" output warns about its shape on every run
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_bundle(
    folder: Path, instance: str, version: int, explainers: Path | None = None
) -> LoadedModel:
    """Load and check one model bundle folder (layout: `foresight.storage.bundles`); its
    explainer's tables are kept in (and loaded from) the `explainers` folder, if any."""
    files = read_model_bundle(folder)
    spec = FeatureSpec.from_dict(files.feature_spec)
    config = instance_config.from_dict(files.instance)
    evaluation = ModelEvaluation.from_optional_json(files.evaluation)
    session = _session(files.onnx_path)
    inputs = {i.name: i for i in session.get_inputs()}
    if MODEL_INPUT not in inputs or MODEL_OUTPUT not in {o.name for o in session.get_outputs()}:
        raise FailedPrecondition(
            f"{MODEL_ONNX} must have input '{MODEL_INPUT}' and output '{MODEL_OUTPUT}'"
        )
    width = inputs[MODEL_INPUT].shape[1]
    n_features = len(spec.features)
    if isinstance(width, int) and width != n_features:
        raise FailedPrecondition(
            f"{MODEL_ONNX} takes {width} features, the feature spec has {n_features}"
        )
    calibrator = Calibrator.model_validate(files.calibrator or {})
    factor_groups = FactorGroups.model_validate(files.factor_groups or {})
    explainer = TreeExplainer(files.model_text, explainers)
    if explainer.n_features != n_features:
        raise FailedPrecondition(
            f"{MODEL_TEXT} takes {explainer.n_features} features, the feature spec has {n_features}"
        )
    model = LoadedModel(
        instance=instance,
        version=version,
        config=config,
        spec=spec,
        session=session,
        explainer=explainer,
        evaluation=evaluation,
        loaded_at=utcnow(),
        calibrator=calibrator,
        factor_groups=factor_groups,
        folder=folder,
    )
    _check_parity(model, n_features)
    return model


def _check_parity(model: LoadedModel, n_features: int) -> None:
    """ONNX and model.txt must be the same model, and the reasons must add up to the score.

    The probability rebuilt from the TreeSHAP contributions (plus the expected
    value) is compared with ONNX's on probe rows with zeros and NaNs: one check
    for a mismatched pair of files and for the explainer itself.
    """
    rng = np.random.default_rng(0)
    probe = rng.gamma(1.0, 20.0, size=(64, n_features)).astype(np.float32)
    probe[rng.random(probe.shape) < 0.2] = np.nan
    probe[rng.random(probe.shape) < 0.2] = 0.0
    onnx = model.predict_uncalibrated(probe).astype(np.float64)
    rebuilt = model.explainer.probability(probe)
    gap = float(np.max(np.abs(onnx - rebuilt)))
    if gap > PARITY_TOLERANCE:
        raise FailedPrecondition(
            f"{MODEL_ONNX} and {MODEL_TEXT} disagree (max probability gap {gap:.2g})"
        )


@dataclass(frozen=True)
class _Entry:
    """What the registry knows about one instance."""

    model: LoadedModel | None
    last_error: str = ""
    failed_version: int = 0


Loader = Callable[[Path, str, int, Path | None], LoadedModel]


class ModelRegistry:
    """Follows the registry tables; `get` always returns a fully loaded model."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        loader: Loader = load_bundle,
        explainers: Path | None = None,
    ) -> None:
        self._db = db
        self._artifacts = artifacts
        self._loader = loader
        self.explainers = explainers  # built explainers' cache folder (shard workers use it too)
        self._entries: dict[str, _Entry] = {}
        self._refresh_lock = threading.Lock()

    def bundle_ref(self, folder: Path) -> str:
        """Where a scoring task finds a model's bundle folder (see `ArtifactStore.ref`)."""
        return self._artifacts.ref(folder)

    def get(self, instance: str) -> LoadedModel:
        """The model serving `instance`; NotFound / FailedPrecondition when there is none."""
        entry = self._entries.get(instance)
        if entry is None:
            raise NotFound(f"instance '{instance}' not found or has no READY model version")
        if entry.model is None:
            raise FailedPrecondition(
                f"instance '{instance}' has no loadable model: {entry.last_error}"
            )
        return entry.model

    def models(self) -> dict[str, LoadedModel]:
        """Every serving model by instance."""
        return {name: e.model for name, e in self._entries.items() if e.model is not None}

    def known(self) -> set[str]:
        """Instances the registry has seen with a READY version."""
        return set(self._entries)

    def status(self) -> dict[str, tuple[int, datetime | None, str]]:
        """Instance → (serving version or 0, loaded at, last load error)."""
        out: dict[str, tuple[int, datetime | None, str]] = {}
        for name, e in self._entries.items():
            version = e.model.version if e.model else 0
            out[name] = (version, e.model.loaded_at if e.model else None, e.last_error)
        return out

    def refresh(self) -> list[str]:
        """Load the wanted version of every instance; returns instances that changed.

        The wanted version is the registry's rule (`serving_versions`: the
        instance's current version when READY, else its newest READY one). A version that failed once is not
        retried until a newer one appears (loading is not free and the error
        would only repeat).
        """
        with self._refresh_lock:
            wanted = self._wanted_versions()
            changed: list[str] = []
            entries = dict(self._entries)
            for name in set(entries) - set(wanted):
                del entries[name]  # instance deleted or no READY version any more
                with contextlib.suppress(KeyError):
                    SERVING_VERSION.remove(name)
                changed.append(name)
            for name, (version, path, created) in wanted.items():
                entry = entries.get(name, _Entry(model=None))
                serving = entry.model.version if entry.model else 0
                if version == serving or version == entry.failed_version:
                    continue
                try:
                    folder = self._artifacts.local_bundle(path)
                    model = replace(
                        self._loader(folder, name, version, self.explainers), created_at=created
                    )
                except Exception as exc:
                    reason = public_reason(exc, "the bundle could not be loaded (see the log)")
                    LOAD_FAILURES.labels(instance=name).inc()
                    log.error(
                        "model load failed; previous version keeps serving",
                        exc_info=not isinstance(exc, ForesightError),
                        extra={
                            "instance": name,
                            "version": version,
                            "serving": serving,
                            "reason": reason,
                        },
                    )
                    entries[name] = _Entry(entry.model, f"v{version}: {reason}", version)
                    continue
                entries[name] = _Entry(model)
                SERVING_VERSION.labels(instance=name).set(version)
                log.info("model loaded", extra={"instance": name, "version": version})
                changed.append(name)
            self._entries = entries  # one reference swap: readers see old or new, never a mix
            return changed

    def _wanted_versions(self) -> dict[str, tuple[int, str, datetime | None]]:
        with self._db.session() as session:
            served = serving_versions(session)
        return {name: (v.version, v.artifact_path, v.finished_at) for name, v in served.items()}
