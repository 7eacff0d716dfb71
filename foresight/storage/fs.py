"""Files by URL through fsspec: a local folder (the default) or `s3://` on any S3-compatible store.

A store root is either a local path or a URL such as `s3://foresight/events`.
Local files keep their atomic write (temp file, fsync, rename); on an object
store an object appears whole when its upload completes, which gives readers
the same guarantee. S3 endpoint and credentials come from the standard AWS
variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`), so the services and every Dask worker configured the
same way reach the same objects; nothing here holds a credential.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import fsspec
import polars as pl
from fsspec import AbstractFileSystem

__all__ = [
    "download",
    "exists",
    "filesystem",
    "is_remote",
    "join",
    "listing",
    "makedirs",
    "put_object",
    "read_bytes",
    "read_parquet",
    "remove",
    "remove_tree",
    "scan_parquet",
    "upload",
]


def is_remote(url: str) -> bool:
    """True for a URL with a protocol other than file:// (s3://, gs://, memory://, …)."""
    protocol, sep, _ = url.partition("://")
    return bool(sep) and protocol != "file"


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a URL and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, str(path)


def join(url: str, *parts: str) -> str:
    """`url/part/part…` with single slashes."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def put_object(url: str, write: Callable[[BinaryIO], None]) -> int:
    """Write an object through `write(handle)`; returns its size in bytes."""
    fs, path = filesystem(url)
    with fs.open(path, "wb") as handle:
        write(handle)
    return int(fs.size(path))


def makedirs(url: str) -> None:
    """Create the folder (or the bucket) at `url` if it is missing."""
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def upload(source: Path, url: str) -> None:
    """Copy a local file to `url`."""
    fs, path = filesystem(url)
    fs.put_file(str(source), path)


def download(url: str, target: Path) -> None:
    """Copy the object at `url` into the local file `target`."""
    fs, path = filesystem(url)
    fs.get_file(path, str(target))


def read_bytes(url: str) -> bytes:
    """The whole object at `url` (FileNotFoundError when there is none)."""
    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def scan_parquet(urls: Sequence[str], schema: pl.Schema) -> pl.LazyFrame:
    """A lazy frame over Parquet objects (row groups are read on demand, not all at once)."""
    if not urls:
        return pl.LazyFrame(schema=schema)
    # Imported here: pyarrow.dataset loads pandas (~45 MB), which only remote stores need.
    import pyarrow.dataset as pads

    fs, _ = filesystem(urls[0])
    paths = [filesystem(url)[1] for url in urls]
    arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
    dataset = pads.dataset(paths, schema=arrow_schema, format="parquet", filesystem=fs)
    return pl.scan_pyarrow_dataset(dataset)


def read_parquet(url: str) -> pl.DataFrame:
    """One Parquet object."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return pl.read_parquet(handle)


def exists(url: str) -> bool:
    """Whether an object (or a folder prefix) exists."""
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def listing(url: str) -> list[tuple[str, datetime | None]]:
    """(path relative to `url`, last modified) of every object under `url`."""
    fs, base = filesystem(url)
    if not fs.exists(base):
        return []
    found: dict[str, dict[str, object]] = fs.find(base, detail=True)
    out = []
    for path, info in sorted(found.items()):
        modified = info.get("LastModified") or info.get("mtime")
        stamp = modified if isinstance(modified, datetime) else None
        out.append((path[len(base.rstrip("/")) + 1 :], stamp))
    return out


def remove(url: str) -> None:
    """Delete one object if present."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def remove_tree(url: str) -> None:
    """Delete every object under `url`."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
