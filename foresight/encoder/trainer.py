"""`EncoderTrainer`: read a sample of a dataset, fit, publish; the trainer's servicer calls it."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import polars as pl

from foresight.encoder.fitting import fit_encoder
from foresight.encoder.model import DEFAULT_DIMENSIONS, KINDS, EncoderKind, behaviour_as_of
from foresight.encoder.registry import (
    EncoderVersionInfo,
    encoder_lifecycle,
    get_encoder_version,
    list_encoder_versions,
    publish_encoder,
)
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.events.partitions import parts_by_shard
from foresight.events.store import EventStore
from foresight.progress import Progress, no_progress
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status

__all__ = ["DEFAULT_SAMPLE_SIZE", "EncoderTrainer", "read_sample"]

log = logging.getLogger("foresight.encoder")

DEFAULT_SAMPLE_SIZE: Final[int] = 200_000


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
        report = progress or no_progress
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
