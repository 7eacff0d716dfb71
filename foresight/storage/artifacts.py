"""Artifact store: versioned folders of files, published atomically.

A bundle is written into a hidden temporary sibling folder, every file is
fsynced and checksummed into `manifest.json`, and the folder is renamed into
place in one `os.replace`. A reader therefore sees either no bundle or a
complete one; a killed writer leaves only a temporary folder that
`sweep_temporary` removes at the next start. Temporary names carry the
writing service (``.tmp-trainer-…``) so each service sweeps only its own and
never another's write in flight.

With a mirror URL (`FORESIGHT_ARTIFACTS_URL`, e.g. `s3://bucket/artifacts`)
each bundle is also uploaded there before it appears locally, its manifest
last, so a mirrored bundle without a manifest is one whose upload did not
finish and no reader takes it. Tasks then carry the bundle's URL (`ref`), and
a Dask worker with no shared volume copies it into a local cache with
`materialize`, checked against the manifest's checksums.

Single files of the store (a scoring run's score copies, its health summary)
are mirrored one by one: `mirror_file` uploads one before its owner marks it
READY, `local_file` copies it back into the store when this process does not
have it (another replica wrote it, or the volume was lost), `remove_file`
deletes both copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from foresight.errors import FailedPrecondition, PermissionDenied, Unavailable
from foresight.storage import fs
from foresight.storage.paths import confined

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"

log = logging.getLogger(__name__)


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


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write one file atomically through `write(handle)`, which may stream it: a temp file
    in the same folder, fsync, rename. A failed write removes its temp file; a killed one
    leaves only the temp file, never part of a file under the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write one file holding `data` atomically (see `atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


class ArtifactStore:
    """Versioned bundles under `<data_dir>/artifacts`."""

    def __init__(self, root: Path, mirror: str | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror.rstrip("/") if mirror else None
        if self.mirror is not None:
            fs.makedirs(self.mirror)

    def ref(self, folder: Path) -> str:
        """Where a task finds a bundle folder of this store: its mirror URL, else its absolute path."""
        absolute = folder.resolve()
        if self.mirror is None:
            return str(absolute)
        return fs.join(self.mirror, absolute.relative_to(self.root.resolve()).as_posix())

    def path(self, relative: str) -> Path:
        """Absolute path of a bundle given its path relative to the store root.

        The path is resolved and proven to stay under the root (see `confined`).
        """
        return confined(self.root, relative)

    @contextmanager
    def publish(
        self, relative: str, metadata: dict[str, Any] | None = None, *, owner: str
    ) -> Iterator[Path]:
        """Yield a temporary folder to fill; on success it becomes `relative`, atomically.

        The manifest records each file's SHA-256 so a loader can verify the bundle.
        An existing bundle at `relative` is never overwritten (versions are immutable).
        """
        final = self.path(relative)
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
            if self.mirror is not None:
                _upload(tmp, fs.join(self.mirror, relative), [*files, MANIFEST])
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def local_bundle(self, relative: str) -> Path:
        """The folder of bundle `relative`, checked against its manifest; a bundle this
        store lacks is copied in from the mirror first (a replica on its own volume)."""
        folder = self.path(relative)
        if self.mirror is not None and not (folder / MANIFEST).is_file():
            url = fs.join(self.mirror, relative)
            _download_bundle(url, _mirror_manifest(url), folder)
        self.verify(relative)
        return folder

    def verify(self, relative: str) -> dict[str, Any]:
        """Check every file against the manifest; return the manifest or raise."""
        folder = self.path(relative)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise FailedPrecondition(f"artifact {relative} has no manifest")
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        for name, expected in manifest["files"].items():
            f = confined(folder, name)
            if not f.is_file() or sha256_file(f) != expected:
                raise FailedPrecondition(f"artifact {relative}: {name} is missing or corrupt")
        return manifest

    def remove(self, relative: str) -> bool:
        """Delete a bundle folder; a path that would leave the root is refused and kept.

        Recovery calls this with paths read back from the registry, so a name
        stored before names were validated can never make it delete elsewhere.
        """
        try:
            folder = self.path(relative)
        except PermissionDenied:
            log.warning("refused to delete an artifact path outside the store")
            return False
        shutil.rmtree(folder, ignore_errors=True)
        if self.mirror is not None:
            fs.remove_tree(self.ref(folder))
        return True

    def mirror_file(self, relative: str) -> None:
        """Upload the file `relative` of this store to the mirror (nothing without one).

        A failed upload is Unavailable with a reason callers may read (no
        path, no endpoint); the cause is logged.
        """
        if self.mirror is None:
            return
        try:
            fs.upload(self.path(relative), fs.join(self.mirror, relative))
        except Exception as exc:
            log.warning("upload to the artifact mirror failed", exc_info=exc)
            raise Unavailable(
                f"could not upload {relative} to the artifact mirror (FORESIGHT_ARTIFACTS_URL)"
            ) from exc

    def local_file(self, relative: str) -> Path | None:
        """The file `relative` of this store, copied from the mirror first when it is not here.

        None when neither has it. The copy appears in one rename, so a killed
        download leaves only a temporary file, never half a file under the name.
        """
        path = self.path(relative)
        if path.is_file():
            return path
        if self.mirror is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            fs.download(fs.join(self.mirror, relative), tmp)
            os.replace(tmp, path)
        except FileNotFoundError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def remove_file(self, relative: str) -> None:
        """Delete the file `relative` here and at the mirror (a mirror failure is only logged)."""
        self.path(relative).unlink(missing_ok=True)
        if self.mirror is None:
            return
        try:
            fs.remove(fs.join(self.mirror, relative))
        except Exception:
            log.warning("could not delete a file from the artifact mirror", exc_info=True)

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


def _upload(folder: Path, url: str, names: list[str]) -> None:
    """Upload `names` (relative to `folder`) under `url`, in order: the manifest comes last."""
    for name in names:
        fs.upload(folder / name, fs.join(url, name))


def _cache_root() -> Path:
    configured = os.environ.get("FORESIGHT_ARTIFACT_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "foresight-artifacts"


def materialize(ref: str, cache: Path | None = None) -> Path:
    """A local folder holding the bundle at `ref` (see `ArtifactStore.ref`).

    A local path is returned as it is. A URL is copied once into `cache`
    (default `FORESIGHT_ARTIFACT_CACHE`, else the temp folder), under a name
    made of the URL and its manifest, so a bundle deleted and published again
    under the same name is fetched anew. Every file is checked against the
    manifest and the copy appears in one rename, so a killed download leaves
    nothing a later call would take.
    """
    if not fs.is_remote(ref):
        return Path(ref)
    manifest_bytes = _mirror_manifest(ref)
    key = hashlib.sha256(ref.encode() + b"\0" + manifest_bytes).hexdigest()[:32]
    final = (cache or _cache_root()) / key
    if not (final / MANIFEST).is_file():
        _download_bundle(ref, manifest_bytes, final)
    return final


def _mirror_manifest(url: str) -> bytes:
    """The manifest of the bundle at a mirror URL, or FailedPrecondition (no URL in it)."""
    try:
        return fs.read_bytes(fs.join(url, MANIFEST))
    except FileNotFoundError:
        raise FailedPrecondition(
            "an artifact is not published at its mirror URL (FORESIGHT_ARTIFACTS_URL)"
        ) from None


def _download_bundle(url: str, manifest_bytes: bytes, final: Path) -> None:
    """Copy the bundle at `url` to the new folder `final`: every file checked against the
    manifest, the folder appearing in one rename (a killed copy leaves only a temp folder)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{final.name}"
    tmp.mkdir()
    try:
        manifest: dict[str, Any] = json.loads(manifest_bytes)
        for name, expected in manifest["files"].items():
            target = confined(tmp, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.download(fs.join(url, name), target)
            if sha256_file(target) != expected:
                raise FailedPrecondition(f"artifact file {name} at the mirror URL is corrupt")
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
