"""The training sample: a bounded, stratified subset of the training cutoffs' rows.

Policy (README "Training on a sample"): labels are computed for every eligible
profile at every cutoff (cheap: three small columns per row), then the rows of
the *training* cutoffs are cut to at most `max_rows` before any feature is
computed. Each stratum — one (cutoff, label) pair — keeps the same share of its
rows, so the class balance and the weight of each cutoff are those of the whole
population, and probabilities stay calibrated without re-weighting. Which rows
a stratum keeps is decided by a stable hash of (profile, cutoff): the same data
always gives the same sample, on any machine or backend.

With `sample_validation`, the validation cutoff's rows are cut the same way,
at the training cutoffs' rate (so the served refit sees every cutoff in the
population's proportions) and to at most `max_rows`: these rows tune the
validation model, fit its calibrator and join the served refit. The
out-of-time evaluation still covers every other eligible profile of the
validation cutoff: it streams shard by shard (services/trainer/streaming.py)
and only probabilities and labels reach the trainer.

So the trainer's feature matrix holds at most 2 × `max_rows` rows however
large the population grows; below the bound nothing is cut and the results
are those of the whole population.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import polars as pl

__all__ = ["DEFAULT_SAMPLE_ROWS", "SampleSummary", "sample_training_rows"]

# Enough rows for LightGBM to learn what a 1M-profile population teaches (see
# docs/scale.md); a trainer with a few GB of memory holds them comfortably.
DEFAULT_SAMPLE_ROWS: Final[int] = 1_000_000
_SEED: Final[int] = 0x5A3D1E


@dataclass(frozen=True, slots=True)
class SampleSummary:
    """How many training rows there were and how many the sample kept."""

    training_rows: int
    kept_rows: int

    @property
    def fraction(self) -> float:
        """Share of the training rows kept (1.0 when nothing was cut)."""
        return self.kept_rows / self.training_rows if self.training_rows else 1.0


def sample_training_rows(
    shard_labels: Sequence[pl.DataFrame],
    validation_index: int,
    max_rows: int,
    *,
    sample_validation: bool = False,
) -> tuple[list[pl.DataFrame], SampleSummary]:
    """Each shard's label rows with the training cutoffs cut to `max_rows` in all.

    `shard_labels` are (profile_id, cutoff, label) frames, one per shard; rows
    with `cutoff == validation_index` are all kept, unless `sample_validation`
    (then at the training rate, and at most `max_rows`). Returns the frames in
    the same order (and row order) and what was kept of the training rows.
    """
    if max_rows <= 0:
        raise ValueError("max_rows must be positive")
    tagged = pl.concat(
        [
            frame.with_columns(pl.lit(i, dtype=pl.Int32).alias("__shard"))
            for i, frame in enumerate(shard_labels)
        ],
        how="vertical",
    ).with_row_index("__row")
    training = pl.col("cutoff") != validation_index
    total = int(tagged.select(training.sum()).item() or 0)
    validation = tagged.height - total
    rate = min(1.0, max_rows / total) if total else 1.0
    validation_rate = min(rate, max_rows / validation) if validation else 1.0
    if not sample_validation:
        validation_rate = 1.0
    if rate == 1.0 and validation_rate == 1.0:
        return list(shard_labels), SampleSummary(total, total)
    keyed = tagged.with_columns(
        pl.struct("profile_id", "cutoff").hash(_SEED).alias("__h"),
        pl.len().over("cutoff", "label").alias("__n"),
    )
    # Per stratum: the rows of lowest hash, as many as its proportional quota.
    rank = pl.col("__h").rank("ordinal").over("cutoff", "label")
    share = pl.when(training).then(pl.lit(rate)).otherwise(pl.lit(validation_rate))
    quota = (pl.col("__n") * share).floor().clip(lower_bound=1)
    kept = keyed.filter(rank <= quota)
    summary = SampleSummary(total, int(kept.select(training.sum()).item() or 0))
    out = []
    for i, frame in enumerate(shard_labels):
        mine = kept.filter(pl.col("__shard") == i).sort("__row")
        out.append(mine.select(frame.columns))
    return out, summary
