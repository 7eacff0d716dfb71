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
from sqlalchemy import func, select

from foresight.errors import FailedPrecondition, NotFound
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import IndexVersionRow, utcnow
from services.segmenter.index import (
    INDEX_FILE,
    LABELS_FILE,
    SIDECAR_FILE,
    TRAITS_FILE,
    JourneyIndex,
)
from services.segmenter.index_types import SPACE, IndexInfo

__all__ = ["INTERRUPTED", "IndexStore", "index_bundle_path", "read_bundle"]

INTERRUPTED: Final[str] = "interrupted: segmenter restarted"
_LOAD_CHUNK: Final[int] = 50_000
_TMP_PREFIX: Final[str] = ".tmp-"  # ArtifactStore.publish's temporary folders


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
    """Index bundles in the artifact store and their rows in the registry."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    def allocate(self, dataset: str, encoder_version: int) -> int:
        """A BUILDING row with the next free version."""
        folder = self.artifacts.path("indexes")
        on_disk = (
            [int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit()]
            if folder.is_dir()
            else []
        )
        with self.db.session() as s:
            highest = s.scalar(select(func.max(IndexVersionRow.version))) or 0
            version = max(int(highest), *on_disk, 0) + 1
            s.add(
                IndexVersionRow(
                    version=version,
                    dataset=dataset,
                    encoder_version=encoder_version,
                    status="BUILDING",
                    params={},
                    created_at=utcnow(),
                )
            )
        return version

    def recover_interrupted(self) -> list[int]:
        """At start: fail the builds a killed segmenter left BUILDING; returns their versions.

        Also removes the temporary bundle folders of index versions (only
        those: other services publish under other folders).
        """
        with self.db.session() as s:
            rows = list(
                s.scalars(select(IndexVersionRow).where(IndexVersionRow.status == "BUILDING"))
            )
            for row in rows:
                row.status = "FAILED"
                row.params = {**(row.params or {}), "error": INTERRUPTED}
            versions = [row.version for row in rows]
        folder = self.artifacts.path("indexes")
        if folder.is_dir():
            for tmp in folder.glob(f"{_TMP_PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)
        return versions

    def publish(self, index: JourneyIndex, version: int) -> IndexInfo:
        """Save `index` as version `version` (atomically), then mark the row READY."""
        relative = index_bundle_path(version)
        with self.artifacts.publish(relative, {"kind": "index", "version": version}) as folder:
            saved = index.save(folder, version)
        self.artifacts.verify(relative)
        index.adopt(saved)
        with self.db.session() as s:
            row = s.scalar(select(IndexVersionRow).where(IndexVersionRow.version == version))
            if row is None:
                raise NotFound(f"index version {version} does not exist")
            row.status = "READY"
            row.artifact_path = relative
            row.count = saved.count
            row.checksum = saved.checksum
            row.params = {
                "space": saved.space,
                "dim": saved.dimensions,
                "M": saved.m,
                "ef_construction": saved.ef_construction,
                "ef": saved.ef,
                "as_of": saved.as_of.isoformat(),
                "journal_seq": saved.journal_seq,
            }
        return saved

    def mark(self, version: int, status: str, error: str | None = None) -> None:
        """Set a row's status (FAILED, CORRUPT, RETIRED), keeping the reason in params."""
        with self.db.session() as s:
            row = s.scalar(select(IndexVersionRow).where(IndexVersionRow.version == version))
            if row is not None:
                row.status = status
                if error:
                    row.params = {**(row.params or {}), "error": error}

    def latest_ready(self) -> IndexVersionRow | None:
        """The newest READY row."""
        with self.db.session() as s:
            return s.scalars(
                select(IndexVersionRow)
                .where(IndexVersionRow.status == "READY")
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
                    .where(IndexVersionRow.status == "READY", IndexVersionRow.version <= keep_from)
                    .order_by(IndexVersionRow.version.desc())
                )
            )
            for row in rows[keep:]:
                if row.artifact_path:
                    shutil.rmtree(self.artifacts.path(row.artifact_path), ignore_errors=True)
                row.status = "RETIRED"
                row.artifact_path = None
