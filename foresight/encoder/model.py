"""The loaded journey encoder and the facts every side of it shares.

The ONNX model has input ``behaviour`` float32 [N, B] and output
``embedding`` float32 [N, D]; `Encoder.embed` L2-normalises the output.
This module imports no fitting stack (scikit-learn, skl2onnx, onnx): the
segmenter's embedding workers import it to load and run an encoder.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import numpy as np
import onnxruntime as ort
import polars as pl

from foresight.errors import InvalidArgument
from foresight.features.journey import BehaviourSpec, behaviour_vectors
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import ENCODER_INPUT, ENCODER_OUTPUT, read_encoder_bundle

__all__ = [
    "DEFAULT_DIMENSIONS",
    "KINDS",
    "Encoder",
    "EncoderKind",
    "behaviour_as_of",
    "l2_normalise",
    "load_encoder",
    "onnx_session",
    "share_mask",
]

EncoderKind = Literal["pca", "autoencoder"]
#: The families `fit_encoder` knows; "auto" tries each and keeps the best.
KINDS: Final[tuple[EncoderKind, ...]] = ("pca", "autoencoder")
DEFAULT_DIMENSIONS: Final[int] = 32


def behaviour_as_of(latest_event: datetime) -> datetime:
    """The reference time of behaviour vectors for data whose latest event is `latest_event`.

    `behaviour_vectors` only sees events strictly before its as-of time, so
    the reference sits just after the latest event.
    """
    return latest_event + timedelta(seconds=1)


def share_mask(spec: BehaviourSpec) -> np.ndarray:
    """True for the components that are shares of a mix (Hellinger-transformed)."""
    return np.array(["_share__" in name for name in spec.names], dtype=bool)


def l2_normalise(E: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (cosine similarity = dot product)."""
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    unit: np.ndarray = (E / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def onnx_session(model: bytes | Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime session on the CPU; `threads` > 0 caps its intra-op threads."""
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
        return l2_normalise(self.raw(vectors))

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
    session = onnx_session(files.onnx_path, threads)
    dims = files.dimensions or int(session.get_outputs()[0].shape[1])
    return Encoder(session, spec, files.kind, dims, files.version)
