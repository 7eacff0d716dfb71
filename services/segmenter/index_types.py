"""What describes a journey index: HNSW parameters, the sidecar record, live-row copies.

Shared by the in-memory index (`index`), its files and registry rows
(`index_store`) and the build (`index_build`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np

from foresight.errors import InvalidArgument

__all__ = ["SPACE", "IndexInfo", "IndexParams", "IndexSnapshot"]

SPACE: Final[str] = "cosine"


@dataclass(frozen=True)
class IndexParams:
    """HNSW parameters."""

    m: int = 16
    ef_construction: int = 100
    ef: int = 128

    def check(self) -> IndexParams:
        """Validated copy (0 = default), or InvalidArgument."""
        p = IndexParams(
            m=self.m or 16, ef_construction=self.ef_construction or 100, ef=self.ef or 128
        )
        if not 4 <= p.m <= 96:
            raise InvalidArgument("m", "must be between 4 and 96")
        if not 10 <= p.ef_construction <= 2000:
            raise InvalidArgument("ef_construction", "must be between 10 and 2000")
        return p


@dataclass(frozen=True)
class IndexInfo:
    """Parameters and size of an index: what its sidecar records."""

    version: int
    dataset: str
    space: str
    dimensions: int
    m: int
    ef_construction: int
    ef: int
    encoder_version: int
    count: int
    checksum: str
    built_at: datetime
    as_of: datetime
    """Reference time of the behaviour vectors (just after the dataset's latest event)."""
    journal_seq: int = 0
    """The last journal entry folded into this index (entries after it are replayed on load)."""

    def sidecar(self, labels: int, max_elements: int) -> dict[str, Any]:
        """The JSON sidecar."""
        return {
            "version": self.version,
            "dataset": self.dataset,
            "space": self.space,
            "dim": self.dimensions,
            "M": self.m,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "encoder_version": self.encoder_version,
            "count": self.count,
            "sha256": self.checksum,
            "built_at": self.built_at.isoformat(),
            "as_of": self.as_of.isoformat(),
            "journal_seq": self.journal_seq,
            "labels": labels,
            "max_elements": max_elements,
        }

    @classmethod
    def from_sidecar(cls, data: dict[str, Any]) -> IndexInfo:
        """Inverse of `sidecar`."""
        return cls(
            version=int(data["version"]),
            dataset=str(data["dataset"]),
            space=str(data["space"]),
            dimensions=int(data["dim"]),
            m=int(data["M"]),
            ef_construction=int(data["ef_construction"]),
            ef=int(data["ef"]),
            encoder_version=int(data["encoder_version"]),
            count=int(data["count"]),
            checksum=str(data["sha256"]),
            built_at=datetime.fromisoformat(data["built_at"]),
            as_of=datetime.fromisoformat(data["as_of"]),
            journal_seq=int(data.get("journal_seq", 0)),
        )


@dataclass(frozen=True)
class IndexSnapshot:
    """Copies of the live rows of an index, for work that must not hold the lock (discovery, map)."""

    profile_ids: np.ndarray
    vectors: np.ndarray
    trait_bits: np.ndarray
    trait_values: np.ndarray
