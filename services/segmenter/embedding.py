"""Embedding a shard of profiles: the per-shard work of BuildIndex, run on all cores.

`embed_shard` is a pure function of (shard of events, as-of time, encoder):
it runs in local worker processes (forked by the forkserver) and would run as
a Dask task at scale. Workers cache the loaded encoder, so a pool that embeds
many shards loads it once per process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np
import polars as pl

from foresight.encoder.model import Encoder, load_encoder
from foresight.events.store import EventStore
from foresight.features.journey import behaviour_vectors
from foresight.storage.artifacts import materialize
from services.segmenter.traits import trait_catalog

__all__ = ["EmbeddedShard", "embed_events", "embed_shard"]

T = TypeVar("T")

_ENCODERS: dict[tuple[str, int], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class EmbeddedShard:
    """Embeddings and trait sources of the profiles of one shard (rows aligned)."""

    profile_ids: np.ndarray
    embeddings: np.ndarray
    trait_bits: np.ndarray
    trait_values: np.ndarray

    @property
    def count(self) -> int:
        """Profiles in the shard."""
        return len(self.profile_ids)


def cached_encoder(path: str, threads: int = 1) -> Encoder:
    """The encoder bundle at `path`, loaded once per process."""
    key = (path, threads)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = load_encoder(materialize(path), threads=threads)
            _ENCODERS[key] = encoder
        return encoder


def embed_events(encoder: Encoder, events: pl.DataFrame, as_of: datetime) -> EmbeddedShard:
    """Embed every profile with events in `events` (in memory; no store needed)."""
    ids, X = behaviour_vectors(events, as_of, encoder.spec)
    catalog = trait_catalog(encoder.spec)
    return EmbeddedShard(
        profile_ids=np.asarray(ids, dtype=object),
        embeddings=encoder.embed(X),
        trait_bits=catalog.fixed_bits(X),
        trait_values=catalog.relative_values(X),
    )


def embed_shard(
    store_root: str,
    dataset: str,
    shard: int,
    parts: Sequence[str],
    as_of: datetime,
    encoder_path: str,
    threads: int = 1,
) -> EmbeddedShard:
    """Read one shard of a dataset and embed its profiles."""
    store = EventStore(store_root)
    events = store.read_shard(dataset, shard, parts)
    return embed_events(cached_encoder(encoder_path, threads), events, as_of)
