"""The journey encoder: behaviour vector → dense embedding, fitted by the trainer, used by the segmenter.

Two candidate families are fitted on the same sample and compared on a
held-out part of it:

- ``pca``: standardize + PCA (a scikit-learn Pipeline);
- ``autoencoder``: standardize + a small MLPRegressor trained to reconstruct
  its input through a bottleneck; only the encoder half (input → bottleneck)
  is exported.

Both see the behaviour vector after a Hellinger transform of its share blocks
(square root of each share): mixes are distributions, and the square root
makes Euclidean/cosine geometry on them behave like a distance between
distributions instead of being dominated by the largest share. The transform
is part of the exported ONNX graph, so callers feed the raw behaviour vector.

The choice is made by measurement at two levels (see `_choose`): the
benchmark's quality figures (persona ARI, lookalike lift at 1M profiles)
decided that the autoencoder is preferred; each fit then measures both
families on held-out rows (silhouette of k-means on the L2-normalised
embeddings, neighbour recall@10 against the behaviour space, reconstruction
error, fit and embed time) and falls back to PCA when the autoencoder fails
its guards. Every number lands in the encoder version's metrics.

The ONNX model has input ``behaviour`` float32 [N, B] and output
``embedding`` float32 [N, D]; `Encoder.embed` L2-normalises the output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import onnxruntime as ort
import polars as pl
from sqlalchemy import select

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.events.store import EventStore, parts_by_shard
from foresight.features.journey import BehaviourSpec, behaviour_vectors, fit_behaviour_spec
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import (
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    encoder_metadata,
    read_encoder_bundle,
    write_encoder_bundle,
)
from foresight.storage.db import Database
from foresight.storage.lifecycle import Lifecycle, Status
from foresight.storage.models import EncoderVersionRow

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# scikit-learn, skl2onnx and onnx are imported inside the fitting functions:
# the segmenter's embedding workers import this module only to load and run
# an encoder, and spawn-started workers should not pay for the fitting stack.

__all__ = [
    "DEFAULT_DIMENSIONS",
    "KINDS",
    "OWNER",
    "Encoder",
    "EncoderBundle",
    "EncoderKind",
    "EncoderTrainer",
    "EncoderVersionInfo",
    "behaviour_as_of",
    "encoder_bundle_path",
    "fit_encoder",
    "get_encoder_version",
    "list_encoder_versions",
    "load_encoder",
    "publish_encoder",
    "read_sample",
    "share_mask",
]

log = logging.getLogger("foresight.encoder")

EncoderKind = Literal["pca", "autoencoder"]
#: The families `fit_encoder` knows; "auto" tries each and keeps the best.
KINDS: Final[tuple[EncoderKind, ...]] = ("pca", "autoencoder")
DEFAULT_DIMENSIONS: Final[int] = 32
DEFAULT_SAMPLE_SIZE: Final[int] = 200_000

OWNER: Final[str] = "trainer"
"""The service that writes encoders/ (its temporary folders carry this name)."""

# Fitting budgets: the encoder is a compression of ~30 numbers, so a few tens
# of thousands of rows already pin it down; more only costs time.
_MAX_AUTOENCODER_ROWS: Final[int] = 60_000
_AUTOENCODER_EPOCHS: Final[int] = 40
_EVAL_ROWS: Final[int] = 5_000
_NEIGHBOURS: Final[int] = 10
_EVAL_K: Final[tuple[int, ...]] = (4, 5, 6, 7, 8, 9, 10, 12)
# Guards an autoencoder fit must pass to be used (see `_choose`).
_AUTOENCODER_MIN_ROWS: Final[int] = 5_000
_AUTOENCODER_MIN_RECALL: Final[float] = 0.5
_AUTOENCODER_MIN_SILHOUETTE_SHARE: Final[float] = 0.5

Progress = Callable[[str, float, str], None]


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


# ---------------------------------------------------------------- data classes


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
class EncoderVersionInfo:
    """An encoder version as the API shows it."""

    version: int
    status: Status
    dataset: str
    dimensions: int
    kind: str | None
    metrics: dict[str, float]
    artifact_path: str | None
    """Bundle folder relative to the artifact root, e.g. ``encoders/v3``."""
    error: str | None
    created_at: datetime


def encoder_bundle_path(version: int) -> str:
    """Relative artifact path of an encoder bundle."""
    return f"encoders/v{version}"


def behaviour_as_of(latest_event: datetime) -> datetime:
    """The reference time of behaviour vectors for data whose latest event is `latest_event`.

    `behaviour_vectors` only sees events strictly before its as-of time, so
    the reference sits just after the latest event.
    """
    return latest_event + timedelta(seconds=1)


# ---------------------------------------------------------------- fitting


def share_mask(spec: BehaviourSpec) -> np.ndarray:
    """True for the components that are shares of a mix (Hellinger-transformed)."""
    return np.array(["_share__" in name for name in spec.names], dtype=bool)


def _prepare(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The Hellinger transform the ONNX prelude applies (numpy twin, for fitting)."""
    out = np.asarray(X, dtype=np.float32).copy()
    out[:, mask] = np.sqrt(np.maximum(out[:, mask], 0.0))
    return out


def _l2(E: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    unit: np.ndarray = (E / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


@dataclass
class _Candidate:
    kind: EncoderKind
    pipeline: Pipeline
    encode: Callable[[np.ndarray], np.ndarray]
    reconstruct: Callable[[np.ndarray], np.ndarray]
    fit_s: float
    metrics: dict[str, float] = field(default_factory=dict)


def _fit_pca(P: np.ndarray, dims: int, seed: int) -> _Candidate:
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    began = time.perf_counter()
    pipe = Pipeline(
        [("scale", StandardScaler()), ("pca", PCA(n_components=dims, random_state=seed))]
    )
    pipe.fit(P)
    pca: PCA = pipe.named_steps["pca"]
    return _Candidate(
        kind="pca",
        pipeline=pipe,
        encode=pipe.transform,
        reconstruct=lambda Z: pca.inverse_transform(pca.transform(Z)),
        fit_s=time.perf_counter() - began,
    )


def _fit_autoencoder(P: np.ndarray, dims: int, seed: int) -> _Candidate:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    began = time.perf_counter()
    scaler = StandardScaler().fit(P)
    rng = np.random.default_rng(seed)
    rows = (
        P
        if len(P) <= _MAX_AUTOENCODER_ROWS
        else P[rng.choice(len(P), _MAX_AUTOENCODER_ROWS, replace=False)]
    )
    Z = scaler.transform(rows)
    hidden = max(2 * dims, 32)
    ae = MLPRegressor(
        hidden_layer_sizes=(hidden, dims, hidden),
        activation="tanh",
        max_iter=_AUTOENCODER_EPOCHS,
        batch_size=256,
        learning_rate_init=2e-3,
        random_state=seed,
        tol=1e-5,
    )
    with warnings.catch_warnings():
        # A fixed epoch budget is the point; not converging fully is expected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        ae.fit(Z, Z)
    # The encoder half as its own MLPRegressor: input → hidden (tanh) → bottleneck
    # (identity output = the bottleneck's pre-activation), which skl2onnx converts as is.
    half = MLPRegressor(hidden_layer_sizes=(hidden,), activation="tanh")
    half.coefs_ = [ae.coefs_[0].copy(), ae.coefs_[1].copy()]
    half.intercepts_ = [ae.intercepts_[0].copy(), ae.intercepts_[1].copy()]
    half.n_layers_ = 3
    half.n_outputs_ = dims
    half.out_activation_ = "identity"
    half.n_features_in_ = P.shape[1]
    pipe = Pipeline([("scale", scaler), ("encoder", half)])
    return _Candidate(
        kind="autoencoder",
        pipeline=pipe,
        encode=lambda X: np.asarray(pipe.predict(X)).reshape(len(X), -1),
        reconstruct=lambda Z: ae.predict(Z),
        fit_s=time.perf_counter() - began,
    )


def _best_clustering(E: np.ndarray, seed: int) -> tuple[int, float, np.ndarray]:
    """(k, silhouette, labels) of the best k-means on L2-normalised embeddings."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    En = _l2(E)
    best: tuple[int, float, np.ndarray] = (0, -1.0, np.zeros(len(E), dtype=np.int64))
    for k in _EVAL_K:
        if k >= len(En):
            break
        # Small fits: OpenMP threading costs more than it saves (measured 5-15x slower on 2 cores).
        with threadpool_limits(1, user_api="openmp"):
            labels = KMeans(k, random_state=seed, n_init=2).fit_predict(En)
        if len(np.unique(labels)) < 2:
            continue
        score = float(
            silhouette_score(En, labels, sample_size=min(len(En), 2_000), random_state=seed)
        )
        if score > best[1]:
            best = (k, score, labels)
    return best


def _measure(
    cand: _Candidate,
    P_eval: np.ndarray,
    truth: np.ndarray | None,
    input_neighbours: np.ndarray,
    seed: int,
) -> None:
    """Fill cand.metrics from the held-out rows."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import NearestNeighbors

    prefix = cand.kind
    began = time.perf_counter()
    E = np.asarray(cand.encode(P_eval), dtype=np.float32)
    embed_s = time.perf_counter() - began
    Z = cand.pipeline.named_steps["scale"].transform(P_eval)
    recon = np.asarray(cand.reconstruct(Z))
    mse = float(np.mean((recon - Z) ** 2))
    k, silhouette, labels = _best_clustering(E, seed)
    nn = NearestNeighbors(n_neighbors=_NEIGHBOURS + 1, metric="cosine").fit(E)
    emb_neighbours = nn.kneighbors(E, return_distance=False)[:, 1:]
    kept = np.mean(
        [
            len(set(a) & set(b)) / _NEIGHBOURS
            for a, b in zip(input_neighbours, emb_neighbours, strict=True)
        ]
    )
    cand.metrics.update(
        {
            f"{prefix}.silhouette": round(silhouette, 4),
            f"{prefix}.best_k": float(k),
            f"{prefix}.reconstruction_error": round(mse, 4),
            f"{prefix}.neighbour_recall_10": round(float(kept), 4),
            f"{prefix}.fit_s": round(cand.fit_s, 3),
            f"{prefix}.embed_us_per_profile": round(1e6 * embed_s / max(len(P_eval), 1), 3),
        }
    )
    if truth is not None:
        cand.metrics[f"{prefix}.persona_ari"] = round(float(adjusted_rand_score(truth, labels)), 4)


def _choose(candidates: list[_Candidate], fitted_rows: int) -> tuple[_Candidate, str]:
    """The autoencoder, unless this fit's measurements say it is unfit; else PCA.

    The preference was decided by the quality figures of `make bench` (1M
    generated profiles, end to end: index, discovery, expansion): the
    autoencoder recovered the planted personas better (ARI 0.743 vs 0.674
    for PCA) while both kept the lookalike lift above 2x (2.37 vs 2.94).
    Label-free proxies did not predict that (PCA scored higher silhouette and
    neighbour recall), so they serve as guards against a bad autoencoder fit
    (too little data, a collapsed bottleneck) rather than as the ranking.
    """
    by_kind = {c.kind: c for c in candidates}
    fid = {c.kind: c.metrics[f"{c.kind}.neighbour_recall_10"] for c in candidates}
    sil = {c.kind: c.metrics[f"{c.kind}.silhouette"] for c in candidates}
    parts = ", ".join(
        f"{c.kind}: silhouette {sil[c.kind]:.3f}, neighbour recall {fid[c.kind]:.3f}"
        for c in candidates
    )
    if len(candidates) == 1:
        return candidates[0], f"{candidates[0].kind} requested ({parts})"
    ae, pca = by_kind["autoencoder"], by_kind["pca"]
    if fitted_rows < _AUTOENCODER_MIN_ROWS:
        why = f"too few profiles for the autoencoder ({fitted_rows} < {_AUTOENCODER_MIN_ROWS})"
        return pca, f"pca won: {why} ({parts})"
    if fid["autoencoder"] < _AUTOENCODER_MIN_RECALL:
        why = f"autoencoder neighbour recall below {_AUTOENCODER_MIN_RECALL}"
        return pca, f"pca won: {why} ({parts})"
    if sil["autoencoder"] < _AUTOENCODER_MIN_SILHOUETTE_SHARE * sil["pca"]:
        why = "autoencoder clusters far less separated than PCA's"
        return pca, f"pca won: {why} ({parts})"
    return ae, f"autoencoder won: preferred by the benchmark and passed its guards ({parts})"


def _to_onnx(cand: _Candidate, mask: np.ndarray, dims: int) -> bytes:
    """skl2onnx export of the pipeline with the Hellinger prelude and our tensor names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    n_features = len(mask)
    core = convert_sklearn(
        cand.pipeline,
        initial_types=[("prepared", FloatTensorType([None, n_features]))],
        target_opset=17,
    )
    graph = core.graph
    old_output = graph.output[0].name
    # skl2onnx reshapes every MLPRegressor output to [-1, 1] (it assumes one
    # target); a final row-major reshape to [-1, dims] restores the embedding
    # rows and is a no-op for PCA.
    graph.initializer.append(
        numpy_helper.from_array(np.array([-1, dims], dtype=np.int64), "embedding_shape")
    )
    graph.node.append(
        helper.make_node("Reshape", [old_output, "embedding_shape"], [ENCODER_OUTPUT])
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, [None, dims])
    )
    # Prelude: prepared = where(share column, sqrt(max(x, 0)), x).
    zero = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "prelude_zero")
    mask_t = numpy_helper.from_array(mask.reshape(1, -1), "prelude_share_mask")
    prelude = [
        helper.make_node("Max", [ENCODER_INPUT, "prelude_zero"], ["prelude_clipped"]),
        helper.make_node("Sqrt", ["prelude_clipped"], ["prelude_sqrt"]),
        helper.make_node(
            "Where", ["prelude_share_mask", "prelude_sqrt", ENCODER_INPUT], ["prepared"]
        ),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*prelude, *nodes])
    graph.initializer.extend([zero, mask_t])
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(ENCODER_INPUT, TensorProto.FLOAT, [None, n_features])
    )
    onnx.checker.check_model(core)
    return bytes(core.SerializeToString())


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
    `as_of` (default: just after the latest event). `kind="auto"` fits every
    family and keeps the winner of `_choose`; `truth` (planted labels, e.g.
    personas of generated data, aligned with the rows) adds an ARI per family
    to the metrics but never decides.
    """
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    report = progress or _no_progress
    if dims < 2:
        raise InvalidArgument("dimensions", "must be at least 2")
    if kind != "auto" and kind not in KINDS:
        raise InvalidArgument("kind", f"unknown encoder kind {kind!r}")
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
    # PCA cannot have more components than inputs; the autoencoder gets the
    # same width so the two are compared at equal size.
    dims_eff = int(min(dims, X.shape[1] - 1))
    mask = share_mask(spec)
    P = _prepare(X, mask)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(P))
    n_eval = max(min(int(len(P) * holdout), _EVAL_ROWS), 10)
    eval_rows, fit_rows = order[:n_eval], order[n_eval:]
    P_fit, P_eval = P[fit_rows], P[eval_rows]
    truth_eval = None if truth is None else np.asarray(truth)[eval_rows]
    Z_eval = StandardScaler().fit(P_fit).transform(P_eval)
    input_nn = NearestNeighbors(n_neighbors=_NEIGHBOURS + 1).fit(Z_eval)
    input_neighbours = input_nn.kneighbors(Z_eval, return_distance=False)[:, 1:]

    kinds: tuple[EncoderKind, ...] = KINDS if kind == "auto" else (kind,)
    candidates: list[_Candidate] = []
    for i, family in enumerate(kinds):
        report("fit", 0.1 + 0.7 * i / len(kinds), f"fitting {family} on {len(P_fit)} profiles")
        cand = (_fit_pca if family == "pca" else _fit_autoencoder)(P_fit, dims_eff, seed)
        report("evaluate", 0.1 + 0.7 * (i + 0.8) / len(kinds), f"measuring {family}")
        _measure(cand, P_eval, truth_eval, input_neighbours, seed)
        candidates.append(cand)
        log.info("encoder candidate", extra={"kind": family, "metrics": cand.metrics})
    winner, reason = _choose(candidates, len(P_fit))
    metrics: dict[str, float] = {}
    for cand in candidates:
        metrics.update(cand.metrics)
    metrics["dimensions"] = float(dims_eff)
    metrics["fitted_rows"] = float(len(P_fit))
    metrics["evaluated_rows"] = float(len(P_eval))
    report("export", 0.9, f"exporting {winner.kind} to ONNX")
    model = _to_onnx(winner, mask, dims_eff)
    # Parity: the exported graph must reproduce the fitted pipeline.
    check = Encoder(_session(model), spec, winner.kind, dims_eff).raw(X[eval_rows[:256]])
    expected = winner.encode(P_eval[:256])
    gap = float(np.max(np.abs(check - expected))) if len(expected) else 0.0
    if gap > 1e-3:
        raise FailedPrecondition(
            f"ONNX export of the encoder differs from the fitted model by {gap:.2e}"
        )
    metrics["onnx_max_abs_diff"] = gap
    report("export", 1.0, reason)
    return EncoderBundle(
        spec=spec,
        kind=winner.kind,
        dimensions=dims_eff,
        onnx_model=model,
        metrics=metrics,
        fitted_rows=len(P_fit),
        chosen_by=reason,
    )


# ---------------------------------------------------------------- inference


def _session(model: bytes | Path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


class Encoder:
    """A loaded encoder: behaviour vectors in, L2-normalised float32 embeddings out.

    An onnxruntime session may be run from several threads at once.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: BehaviourSpec,
        kind: str,
        dimensions: int,
        version: int = 0,
    ) -> None:
        self.session = session
        self.spec = spec
        self.kind = kind
        self.dimensions = dimensions
        self.version = version

    def raw(self, vectors: np.ndarray) -> np.ndarray:
        """The encoder's output before normalisation."""
        X = np.ascontiguousarray(vectors, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.spec.dim:
            raise InvalidArgument(
                "behaviour", f"expected [n, {self.spec.dim}] vectors, got {X.shape}"
            )
        if len(X) == 0:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        out = self.session.run([ENCODER_OUTPUT], {ENCODER_INPUT: X})[0]
        return np.asarray(out, dtype=np.float32)

    def embed(self, vectors: np.ndarray) -> np.ndarray:
        """Embeddings with unit L2 norm (cosine similarity = dot product)."""
        return _l2(self.raw(vectors))

    def embed_events(self, events: pl.DataFrame, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        """(profile ids, embeddings) of the profiles in `events`."""
        ids, X = behaviour_vectors(events, as_of, self.spec)
        return ids, self.embed(X)


def load_encoder(path: Path, threads: int = 0, verify: bool = True) -> Encoder:
    """Load an encoder bundle folder (checksums verified against its manifest by default)."""
    if verify:
        ArtifactStore(path.parent).verify(path.name)
    files = read_encoder_bundle(path)
    spec = BehaviourSpec.from_json(files.behaviour_spec_json)
    session = _session(files.onnx_path, threads)
    dims = files.dimensions or int(session.get_outputs()[0].shape[1])
    return Encoder(session, spec, files.kind, dims, files.version)


# ---------------------------------------------------------------- registry


def _info(row: EncoderVersionRow) -> EncoderVersionInfo:
    return EncoderVersionInfo(
        version=row.version,
        status=Status(row.status),
        dataset=row.dataset,
        dimensions=row.dimensions,
        kind=row.kind,
        metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        artifact_path=row.artifact_path,
        error=row.error,
        created_at=row.created_at,
    )


def encoder_lifecycle(db: Database, artifacts: ArtifactStore) -> Lifecycle[EncoderVersionRow]:
    """The versioned-artifact lifecycle of encoders (rows in encoder_versions, folders in encoders/)."""
    return Lifecycle(db, artifacts, EncoderVersionRow, root="encoders", owner=OWNER, noun="encoder")


def publish_encoder(
    db: Database,
    artifacts: ArtifactStore,
    bundle: EncoderBundle,
    dataset: str,
    version: int | None = None,
) -> EncoderVersionInfo:
    """Write `encoders/v<N>/` atomically, then mark the version READY.

    `version` is a RUNNING row made earlier (the facade makes one so a failure
    can be recorded against it); None allocates one now.
    """
    lifecycle = encoder_lifecycle(db, artifacts)
    if version is None:
        version = lifecycle.allocate(dataset=dataset, dimensions=bundle.dimensions, metrics={})
    metadata = encoder_metadata(version, bundle.kind, bundle.dimensions, dataset, bundle.chosen_by)
    with lifecycle.writing(version, metadata=metadata) as folder:
        write_encoder_bundle(
            folder,
            onnx_model=bundle.onnx_model,
            behaviour_spec_json=bundle.spec.to_json(),
            metrics=bundle.metrics,
            chosen_by=bundle.chosen_by,
        )
    row = lifecycle.mark_ready(
        version, kind=bundle.kind, dimensions=bundle.dimensions, metrics=dict(bundle.metrics)
    )
    return _info(row)


def list_encoder_versions(db: Database) -> list[EncoderVersionInfo]:
    """Every encoder version, newest first."""
    with db.session() as s:
        rows = s.scalars(select(EncoderVersionRow).order_by(EncoderVersionRow.version.desc()))
        return [_info(r) for r in rows]


def get_encoder_version(db: Database, version: int = 0) -> EncoderVersionInfo:
    """One version; 0 = the latest READY one."""
    with db.session() as s:
        query = select(EncoderVersionRow)
        if version:
            query = query.where(EncoderVersionRow.version == version)
        else:
            query = query.where(EncoderVersionRow.status == Status.READY.value).order_by(
                EncoderVersionRow.version.desc()
            )
        row = s.scalars(query.limit(1)).first()
        if row is None and version:
            raise NotFound(f"encoder version {version} does not exist")
        if row is None:
            raise FailedPrecondition("there is no READY encoder; train one with TrainEncoder")
        return _info(row)


def read_sample(
    db: Database, store: EventStore, dataset: str, sample_size: int, seed: int = 0
) -> tuple[pl.DataFrame, datetime]:
    """Events of about `sample_size` profiles of a dataset, and the dataset's behaviour as-of time.

    Profiles hash into shards uniformly, so whole shards taken in a shuffled
    order are an unbiased sample; the last shard read is thinned to the size.
    """
    parts = catalog.catalogued_parts(db, dataset)
    span = catalog.time_range(db, dataset)
    if not parts or span is None:
        raise FailedPrecondition(f"dataset {dataset!r} has no events")
    shards = list(parts_by_shard(parts))
    rng = np.random.default_rng(seed)
    frames: list[pl.DataFrame] = []
    profiles = 0
    for shard in rng.permutation(shards):
        events = store.read_shard(dataset, int(shard), parts)
        frames.append(events)
        profiles += events["profile_id"].n_unique()
        if profiles >= sample_size:
            break
    events = pl.concat(frames, rechunk=False)
    if profiles > sample_size:
        ids = events["profile_id"].unique().sort().sample(sample_size, seed=seed)
        events = events.filter(pl.col("profile_id").is_in(ids.implode()))
    return events, behaviour_as_of(span[1])


class EncoderTrainer:
    """The facade the trainer's servicer calls for TrainEncoder / ListEncoderVersions."""

    def __init__(
        self, db: Database, event_store_root: Path | str, artifacts: ArtifactStore
    ) -> None:
        self.db = db
        self.store = EventStore(event_store_root)
        self.artifacts = artifacts
        self.lifecycle = encoder_lifecycle(db, artifacts)

    def train(
        self,
        dataset: str,
        dims: int = 0,
        kind: EncoderKind | Literal["auto"] = "auto",
        sample_size: int = 0,
        progress: Progress | None = None,
    ) -> EncoderVersionInfo:
        """Fit, export and publish an encoder; returns the READY (or FAILED) version.

        Bad arguments and a missing dataset raise before any version exists;
        a failure while fitting is recorded as a FAILED version and returned;
        a cancelled job ends CANCELLED and raises `Cancelled`.
        """
        report = progress or _no_progress
        dims = dims or DEFAULT_DIMENSIONS
        sample_size = sample_size or DEFAULT_SAMPLE_SIZE
        if not 2 <= dims <= 256:
            raise InvalidArgument("dimensions", "must be between 2 and 256")
        if not 100 <= sample_size <= 5_000_000:
            raise InvalidArgument("sample_size", "must be between 100 and 5,000,000")
        if kind != "auto" and kind not in KINDS:
            raise InvalidArgument("kind", f"unknown encoder kind {kind!r}")
        catalog.get_dataset(self.db, dataset)  # NotFound before a version is made
        version = self.lifecycle.allocate(dataset=dataset, dimensions=dims, metrics={})
        try:
            report("sample", 0.02, f"reading up to {sample_size} profiles of {dataset}")
            events, as_of = read_sample(self.db, self.store, dataset, sample_size)
            bundle = fit_encoder(
                events,
                dims,
                kind,
                lambda stage, f, msg: report(stage, 0.05 + 0.85 * f, msg),
                as_of=as_of,
            )
            report("publish", 0.95, f"publishing encoder v{version}")
            info = publish_encoder(self.db, self.artifacts, bundle, dataset, version)
            report("done", 1.0, bundle.chosen_by)
            log.info("encoder ready", extra={"version": version, "chosen_by": bundle.chosen_by})
            return info
        except BaseException as exc:
            if self.lifecycle.end_with(version, exc) is not Status.FAILED or not isinstance(
                exc, Exception
            ):
                raise
            log.exception("encoder training failed", extra={"version": version})
            return get_encoder_version(self.db, version)

    def list_versions(self) -> list[EncoderVersionInfo]:
        """Every encoder version, newest first."""
        return list_encoder_versions(self.db)

    def recover_interrupted(self) -> list[int]:
        """At trainer start: RUNNING versions belong to a killed job; they become FAILED
        "interrupted", with any bundle they published and the trainer's temporary folders
        under encoders/ removed (see `Lifecycle.recover`)."""
        return [version for _scope, version in self.lifecycle.recover()]
