"""Planning a training run: cutoffs and shard jobs, the history check, the data gate.

Also the small helpers the trainer's stages share (the vocabulary sample, each
shard's profile rows, labels and population funnel over all shards).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from operator import add

import polars as pl

from foresight.errors import FailedPrecondition
from foresight.events.partitions import parts_by_shard, shard_of
from foresight.events.store import EventStore
from foresight.features.labels import (
    DEFAULT_MAX_CUTOFFS,
    CutoffPlan,
    LabelCounts,
    PopulationFunnel,
    choose_cutoffs,
    require_enough_labels,
)
from foresight.instance import InstanceConfig
from foresight.storage import catalog
from foresight.storage.db import Database
from services.trainer.shards import ShardJob, ShardLabels

__all__ = [
    "SPEC_SAMPLE_ROWS",
    "TrainingPlan",
    "combined_funnel",
    "combined_labels",
    "data_gate",
    "history_message",
    "make_plan",
    "spec_sample",
    "split_profiles",
]

# Events read to fit the vocabularies (whole shards, in shard order).
SPEC_SAMPLE_ROWS = 2_000_000


@dataclass
class TrainingPlan:
    """What one training run works on: instance, shard jobs, cutoffs, data span."""

    config: InstanceConfig
    dataset: str
    jobs: list[ShardJob]
    cutoffs: CutoffPlan
    data_start: datetime
    data_end: datetime


def make_plan(
    db: Database, store: EventStore, config: InstanceConfig, dataset: str
) -> TrainingPlan:
    """Cutoffs and shard jobs of a training (or ValidateGoal) run."""
    catalog.get_dataset(db, dataset)  # NotFound for an unknown dataset
    parts = catalog.catalogued_parts(db, dataset)
    span = catalog.time_range(db, dataset)
    if not parts or span is None:
        raise FailedPrecondition(f"dataset {dataset!r} has no events; import some first")
    start, latest = span
    end = latest + timedelta(microseconds=1)
    cutoffs = choose_cutoffs(
        end,
        config.goal.window_days,
        data_start=start,
        max_cutoffs=config.max_cutoffs or DEFAULT_MAX_CUTOFFS,
        step_days=config.cutoff_step_days,
    )
    jobs = [
        ShardJob(store.url, store.shards, dataset, shard, tuple(paths))
        for shard, paths in parts_by_shard(parts).items()
    ]
    return TrainingPlan(config, dataset, jobs, cutoffs, start, end)


def history_message(plan: TrainingPlan) -> str | None:
    """Why there is no training cutoff before the validation one, if so."""
    if plan.cutoffs.training:
        return None
    days = (plan.data_end - plan.data_start).days
    window = plan.config.goal.window_days
    need = 2 * (window + 1) + 30
    return (
        f"the dataset covers {days} days, too little for a training and a validation cutoff: "
        f"with a {window}-day outcome window at least {need} days are needed "
        "(two outcome windows plus 30 days of history); shorten the outcome window or import more history"
    )


def data_gate(config: InstanceConfig, labels: pl.DataFrame, cutoffs: CutoffPlan) -> None:
    """The minimum data gate at the validation cutoff and over the training cutoffs."""
    val = labels.filter(pl.col("cutoff") == cutoffs.validation_index)
    train = labels.filter(pl.col("cutoff").is_in(list(cutoffs.training)))
    latest_training = cutoffs.cutoffs[cutoffs.training[-1]]
    for frame, cutoff in ((val, cutoffs.validation), (train, latest_training)):
        positives = int(frame.get_column("label").sum() or 0) if frame.height else 0
        counts = LabelCounts(cutoff, frame.height, positives, frame.height - positives)
        require_enough_labels(
            counts, config.min_positives, config.min_negatives, config.goal.occurrence
        )


def spec_sample(jobs: Iterable[ShardJob]) -> pl.DataFrame:
    """Whole shards, in shard order, until SPEC_SAMPLE_ROWS events (vocabulary fitting)."""
    frames: list[pl.DataFrame] = []
    rows = 0
    for job in jobs:
        frame = job.read()
        frames.append(frame)
        rows += frame.height
        if rows >= SPEC_SAMPLE_ROWS:
            break
    return pl.concat(frames)


def split_profiles(
    profiles: pl.DataFrame | None, store_shards: int, shards: Sequence[int]
) -> list[pl.DataFrame | None]:
    """Each shard's own profile rows (the store's hash), so workers get only theirs."""
    if profiles is None:
        return [None] * len(shards)
    placed = profiles.with_columns(
        shard_of(profiles.get_column("profile_id"), store_shards).alias("__shard")
    )
    return [placed.filter(pl.col("__shard") == s).drop("__shard") for s in shards]


def combined_labels(shards: Sequence[ShardLabels]) -> pl.DataFrame:
    return pl.concat([s.labels for s in shards]) if shards else pl.DataFrame()


def combined_funnel(shards: Sequence[ShardLabels]) -> PopulationFunnel:
    return reduce(add, (s.funnel for s in shards), PopulationFunnel())
