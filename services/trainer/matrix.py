"""The training matrix: every shard's feature rows in one place, and which rows do what.

`assemble` is the one place shard features become the matrix the models see
(the bounded sample of sampling.py). `split_rows` then says which rows train
the validation model (cutoffs whose outcome windows end before the
validation cutoff), which tune it (early stopping, trial choice, calibration:
half of the validation cutoff's profiles in the matrix); the served model
is refit on all rows. The evaluation covers every validation-cutoff profile
the tuning half does not hold, streamed (streaming.py): below the sample
bound, exactly the other half of the matrix's validation rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.trainer.shards import ShardFeatures

__all__ = ["RowSplit", "TrainingMatrix", "assemble", "split_rows"]

SEED = 20_240_601


@dataclass(frozen=True, slots=True)
class TrainingMatrix:
    """Feature rows of every labelled (profile, cutoff) pair."""

    X: np.ndarray  # float32 [rows, features]
    y: np.ndarray  # int8 labels
    cutoff: np.ndarray  # int16 cutoff index per row
    profile_ids: np.ndarray  # object
    audited: int  # profiles whose features the leakage audit recomputed
    rows_before_sample: int = 0  # earlier-cutoff rows before the bounded sample (sampling.py)

    @property
    def rows(self) -> int:
        """Number of rows."""
        return len(self.y)


@dataclass(frozen=True, slots=True)
class RowSplit:
    """Row indices (sorted) of the matrix for each role."""

    train: np.ndarray
    tune: np.ndarray


def assemble(parts: Sequence[ShardFeatures], rows_before_sample: int = 0) -> TrainingMatrix:
    """Stack the shards' feature rows (in shard order) into one matrix."""
    return TrainingMatrix(
        X=np.vstack([p.X for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        cutoff=np.concatenate([p.cutoff for p in parts]),
        profile_ids=np.concatenate([p.profile_ids for p in parts]),
        audited=sum(p.audited for p in parts),
        rows_before_sample=rows_before_sample,
    )


def split_rows(
    matrix: TrainingMatrix, training_cutoffs: Sequence[int], validation_cutoff: int
) -> RowSplit:
    """Training rows, and a deterministic half of the validation cutoff's profiles for tuning."""
    train = np.flatnonzero(np.isin(matrix.cutoff, np.asarray(training_cutoffs, dtype=np.int16)))
    val_rows = np.flatnonzero(matrix.cutoff == validation_cutoff)
    # Order by profile id first, so the split does not depend on shard order.
    order = val_rows[np.argsort(matrix.profile_ids[val_rows], kind="stable")]
    shuffled = order[np.random.default_rng(SEED).permutation(len(order))]
    half = len(shuffled) // 2
    return RowSplit(train, np.sort(shuffled[:half]))
