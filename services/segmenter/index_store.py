"""Journey index bundles on disk and their rows in the registry.

A bundle `indexes/v<N>/` holds index.bin (written to a temporary file and
renamed), the `index.json` sidecar, `labels.parquet` and `traits.npz`; the
artifact store publishes it atomically with a checksum manifest. `IndexStore`
records versions in the registry and loads a READY one back only after
verifying every checksum.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Final

import hnswlib
import numpy as np
import polars as pl
from sqlalchemy import select

from foresight.errors import FailedPrecondition
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import INTERRUPTED, Lifecycle, Status
from foresight.storage.models import IndexVersionRow
from services.segmenter.index import (
    INDEX_FILE,
    LABELS_FILE,
    SIDECAR_FILE,
    TRAITS_FILE,
    JourneyIndex,
)
from services.segmenter.index_types import SPACE, IndexInfo

__all__ = ["INTERRUPTED", "OWNER", "IndexStore", "index_bundle_path", "read_bundle"]

OWNER: Final[str] = "segmenter"
"""The service that writes indexes/ and discoveries/ (its temporary folders carry this name)."""
_LOAD_CHUNK: Final[int] = 50_000


def read_bundle(folder: Path) -> JourneyIndex:
    """Read a bundle written by `JourneyIndex.save` (checksums are the caller's job)."""
    sidecar = json.loads((folder / SIDECAR_FILE).read_text())
    info = IndexInfo.from_sidecar(sidecar)
    if info.space != SPACE:
        raise FailedPrecondition(f"index space {info.space!r} is not {SPACE!r}")
    n_labels = int(sidecar["labels"])
    hnsw = hnswlib.Index(space=SPACE, dim=info.dimensions)
    hnsw.load_index(
        str(folder / INDEX_FILE),
        max_elements=int(sidecar["max_elements"]),
        allow_replace_deleted=True,
    )
    hnsw.set_ef(info.ef)
    frame = pl.read_parquet(folder / LABELS_FILE)
    labels = frame["label"].to_numpy()
    if len(labels) != info.count or (len(labels) and labels.max() >= n_labels):
        raise FailedPrecondition("index labels do not match its sidecar")
    traits = np.load(folder / TRAITS_FILE)
    ids = np.full(n_labels, None, dtype=object)
    ids[labels] = np.asarray(frame["profile_id"].to_list(), dtype=object)
    alive = np.zeros(n_labels, dtype=bool)
    alive[labels] = True
    vectors = np.zeros((n_labels, info.dimensions), dtype=np.float32)
    # In chunks: get_items materialises its result in Python first, which
    # for a million rows at once doubled the loading process's peak memory.
    for start in range(0, len(labels), _LOAD_CHUNK):
        chunk = labels[start : start + _LOAD_CHUNK]
        vectors[chunk] = np.asarray(hnsw.get_items(chunk), dtype=np.float32)
    bits = np.zeros((n_labels, traits["bits"].shape[1]), dtype=np.uint8)
    bits[labels] = traits["bits"]
    values = np.zeros((n_labels, traits["values"].shape[1]), dtype=np.float32)
    values[labels] = traits["values"]
    return JourneyIndex(info, hnsw, ids, alive, vectors, bits, values, n_labels)


def index_bundle_path(version: int) -> str:
    """Relative artifact path of an index bundle."""
    return f"indexes/v{version}"


class IndexStore:
    """Index bundles in the artifact store and their rows in the registry (a `Lifecycle`)."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts
        self.lifecycle = Lifecycle(
            db, artifacts, IndexVersionRow, root="indexes", owner=OWNER, noun="index"
        )

    def allocate(self, dataset: str, encoder_version: int) -> int:
        """A RUNNING row with the next free version."""
        return self.lifecycle.allocate(dataset=dataset, encoder_version=encoder_version, params={})

    def recover_interrupted(self) -> list[int]:
        """At start: fail the builds a killed segmenter left RUNNING ("interrupted"); returns
        their versions. Also removes their files and the segmenter's own temporary folders
        under indexes/ (see `Lifecycle.recover`)."""
        return [version for _scope, version in self.lifecycle.recover()]

    def publish(self, index: JourneyIndex, version: int) -> IndexInfo:
        """Save `index` as version `version` (atomically), then mark the row READY."""
        metadata = {"kind": "index", "version": version}
        with self.lifecycle.writing(version, metadata=metadata) as folder:
            saved = index.save(folder, version)
        self.lifecycle.mark_ready(
            version,
            count=saved.count,
            checksum=saved.checksum,
            params={
                "space": saved.space,
                "dim": saved.dimensions,
                "M": saved.m,
                "ef_construction": saved.ef_construction,
                "ef": saved.ef,
                "as_of": saved.as_of.isoformat(),
                "journal_seq": saved.journal_seq,
            },
        )
        index.adopt(saved)
        return saved

    def mark(self, version: int, status: Status, reason: str) -> None:
        """Set a row's status with the reason, READY ones included (a corrupt index fails)."""
        with self.db.session() as s:
            row = s.scalar(select(IndexVersionRow).where(IndexVersionRow.version == version))
            if row is not None:
                row.status = status.value
                row.error = reason[:4000]

    def latest_ready(self) -> IndexVersionRow | None:
        """The newest READY row."""
        with self.db.session() as s:
            return s.scalars(
                select(IndexVersionRow)
                .where(IndexVersionRow.status == Status.READY.value)
                .order_by(IndexVersionRow.version.desc())
                .limit(1)
            ).first()

    def load(self, row: IndexVersionRow) -> JourneyIndex:
        """Verify and load a READY version; FailedPrecondition says what is wrong."""
        if not row.artifact_path:
            raise FailedPrecondition(f"index v{row.version} has no files")
        manifest = self.artifacts.verify(row.artifact_path)  # every file vs its SHA-256
        folder = self.artifacts.path(row.artifact_path)
        sidecar = json.loads((folder / SIDECAR_FILE).read_text())
        on_disk = manifest["files"].get(INDEX_FILE)
        if not (sidecar.get("sha256") == on_disk == row.checksum):
            raise FailedPrecondition(
                f"index v{row.version}: index.bin checksum does not match its sidecar/registry"
            )
        index = read_bundle(folder)
        if index.info.version != row.version or index.info.encoder_version != row.encoder_version:
            raise FailedPrecondition(f"index v{row.version}: sidecar does not match the registry")
        return index

    def retire_older(self, keep_from: int, keep: int = 2) -> None:
        """Delete bundles of READY versions older than the `keep` newest (upsert snapshots pile up)."""
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    select(IndexVersionRow)
                    .where(
                        IndexVersionRow.status == Status.READY.value,
                        IndexVersionRow.version <= keep_from,
                    )
                    .order_by(IndexVersionRow.version.desc())
                )
            )
            for row in rows[keep:]:
                if row.artifact_path:
                    shutil.rmtree(self.artifacts.path(row.artifact_path), ignore_errors=True)
                row.status = Status.RETIRED.value
                row.artifact_path = None
