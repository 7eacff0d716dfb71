"""Artifact store: versioned folders of files, published atomically.

A bundle is written into a hidden temporary sibling folder, every file is
fsynced and checksummed into `manifest.json`, and the folder is renamed into
place in one `os.replace`. A reader therefore sees either no bundle or a
complete one; a killed writer leaves only a temporary folder that
`sweep_temporary` removes at the next start. Temporary names carry the
writing service (``.tmp-trainer-…``) so each service sweeps only its own and
never another's write in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foresight.errors import FailedPrecondition

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write one file atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class ArtifactStore:
    """Versioned bundles under `<data_dir>/artifacts`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relative: str) -> Path:
        """Absolute path of a bundle given its path relative to the data directory root."""
        return self.root / relative

    @contextmanager
    def publish(
        self, relative: str, metadata: dict[str, Any] | None = None, *, owner: str
    ) -> Iterator[Path]:
        """Yield a temporary folder to fill; on success it becomes `relative`, atomically.

        The manifest records each file's SHA-256 so a loader can verify the bundle.
        An existing bundle at `relative` is never overwritten (versions are immutable).
        """
        final = self.root / relative
        if final.exists():
            raise FailedPrecondition(f"artifact {relative} already exists")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{_TMP_PREFIX}{owner}-{uuid.uuid4().hex}-{final.name}"
        tmp.mkdir()
        try:
            yield tmp
            files = {}
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    with f.open("rb") as fh:
                        os.fsync(fh.fileno())
                    files[str(f.relative_to(tmp))] = sha256_file(f)
            manifest = {"files": files, **(metadata or {})}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def verify(self, relative: str) -> dict[str, Any]:
        """Check every file against the manifest; return the manifest or raise."""
        folder = self.root / relative
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise FailedPrecondition(f"artifact {relative} has no manifest")
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        for name, expected in manifest["files"].items():
            f = folder / name
            if not f.is_file() or sha256_file(f) != expected:
                raise FailedPrecondition(f"artifact {relative}: {name} is missing or corrupt")
        return manifest

    def sweep_temporary(self, owner: str, under: str = "") -> int:
        """Remove `owner`'s temporary folders left by killed writers; returns how many.

        Call at the owner's start, before it writes: another service's
        temporary folders (a write in flight) are left alone.
        """
        removed = 0
        folder = self.root / under
        if not folder.is_dir():
            return 0
        for tmp in list(folder.rglob(f"{_TMP_PREFIX}{owner}-*")):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
        return removed
