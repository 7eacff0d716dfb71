"""The one lifecycle of a versioned artifact and the one status vocabulary.

Every long job that publishes files (a model, an encoder, an index, a
discovery) goes through the same steps, written here once:

1. `allocate` a RUNNING row with the next version number (the highest row or
   folder on disk, plus one; a concurrent writer taking the same number makes
   the insert fail and the next number is tried);
2. `writing` a temporary folder owned by this service (its name carries the
   owner, so a service sweeps only its own leftovers), renamed into place in
   one step with checksums;
3. `mark_ready` (after verifying the files) or `end` as FAILED / CANCELLED
   with the reason (removing any files the job published);
4. `recover` at the service's start: RUNNING rows belong to a killed job and
   become FAILED "interrupted", their files and this owner's temporary
   folders are removed.

Scoring runs share the `Status` words but not the versions (a run has an id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from foresight.errors import Cancelled, FailedPrecondition, NotFound, public_reason
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import Base, utcnow

log = logging.getLogger("foresight.lifecycle")

__all__ = [
    "INTERRUPTED",
    "Lifecycle",
    "Status",
    "VersionedRow",
    "ending_of",
]

INTERRUPTED = "interrupted"
"""The reason recorded on work a killed process left RUNNING."""

_MAX_REASON = 4000
_ALLOCATE_ATTEMPTS = 5


class Status(StrEnum):
    """Status of every job and version (models, encoders, indexes, discoveries, scoring runs)."""

    RUNNING = "RUNNING"
    """Being trained, built or scored."""
    READY = "READY"
    """Published and verified (a scoring run: scores stored and served)."""
    FAILED = "FAILED"
    """Ended with an error (the reason says which)."""
    CANCELLED = "CANCELLED"
    """The caller cancelled it or its deadline passed; nothing was published."""
    RETIRED = "RETIRED"
    """Superseded; its files were removed (old index snapshots)."""


def ending_of(exc: BaseException) -> tuple[Status, str]:
    """The status and reason a job that raised `exc` ends with.

    Domain errors keep their message; anything else gets a generic reason
    (the reason is shown to callers, who must not see internals: the service
    log has the trace).
    """
    if isinstance(exc, Cancelled):
        return Status.CANCELLED, exc.message
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return Status.FAILED, INTERRUPTED
    return Status.FAILED, public_reason(exc, "unexpected error (see the service log)")


class VersionedRow(Protocol):
    """Columns every versioned-artifact table has."""

    version: int
    status: str
    artifact_path: str | None
    error: str | None


R = TypeVar("R", bound=Base)


def _v(row: Base) -> VersionedRow:
    """A versioned table's row seen through the columns every such table has."""
    return cast(VersionedRow, row)


class Lifecycle(Generic[R]):
    """allocate → write temporary → publish atomically → READY | FAILED | CANCELLED → recover.

    `row_type` is the SQLAlchemy model; `root` the artifact folder holding
    the `v<N>` folders, with ``{scope}`` standing for the value of
    `scope_column` when versions are numbered per scope (models: per
    instance). `owner` names the service in temporary folder names; `noun`
    names a version in messages ("model version", "index").
    """

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        row_type: type[R],
        *,
        root: str,
        owner: str,
        noun: str,
        scope_column: str | None = None,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.row_type = row_type
        self.root = root
        self.owner = owner
        self.noun = noun
        self.scope_column = scope_column

    # ------------------------------------------------------------ naming

    def bundle_path(self, version: int, scope: str | None = None) -> str:
        """Relative artifact path of a version, e.g. ``models/churn/v3``."""
        return f"{self.root.format(scope=scope)}/v{version}"

    def _column(self, name: str) -> InstrumentedAttribute[Any]:
        column: InstrumentedAttribute[Any] = getattr(self.row_type, name)
        return column

    def _scoped(self, query: Any, scope: str | None) -> Any:
        if self.scope_column is None:
            return query
        return query.where(self._column(self.scope_column) == scope)

    def _row(self, s: Session, version: int, scope: str | None) -> R:
        query = self._scoped(select(self.row_type), scope).where(self._column("version") == version)
        row: R | None = s.scalar(query)
        if row is None:
            raise NotFound(f"{self._label(version, scope)} does not exist")
        return row

    def _label(self, version: int, scope: str | None) -> str:
        return f"{self.noun} {scope + ' ' if scope else ''}v{version}"

    def _highest_on_disk(self, scope: str | None) -> int:
        folder = self.artifacts.path(self.root.format(scope=scope))
        if not folder.is_dir():
            return 0
        found = [int(p.name[1:]) for p in folder.iterdir() if p.name[1:].isdigit()]
        return max(found, default=0)

    # ------------------------------------------------------------ lifecycle

    def allocate(
        self,
        scope: str | None = None,
        *,
        exclusive: bool = False,
        check: Callable[[Session], None] | None = None,
        **fields: Any,
    ) -> int:
        """Insert a RUNNING row with the next free version; returns the version.

        Rows and folders on disk both count (versions are never reused, even
        after a row is deleted). `exclusive` refuses a second RUNNING job in
        the scope; `check(session)` may raise to refuse for other reasons.
        """
        for _attempt in range(_ALLOCATE_ATTEMPTS):
            try:
                with self.db.session() as s:
                    if check is not None:
                        check(s)
                    if exclusive:
                        self._refuse_if_running(s, scope)
                    highest = s.scalar(
                        self._scoped(select(func.max(self._column("version"))), scope)
                    )
                    version = max(int(highest or 0), self._highest_on_disk(scope)) + 1
                    if self.scope_column is not None:
                        fields[self.scope_column] = scope
                    make: Callable[..., R] = self.row_type
                    s.add(
                        make(
                            version=version,
                            status=Status.RUNNING.value,
                            created_at=utcnow(),
                            **fields,
                        )
                    )
                return version
            except IntegrityError:
                continue  # another writer took the number; try the next one
        raise FailedPrecondition(f"could not allocate a version under {self.root}; try again")

    def _refuse_if_running(self, s: Session, scope: str | None) -> None:
        running = s.scalar(
            self._scoped(select(self._column("version")), scope).where(
                self._column("status") == Status.RUNNING.value
            )
        )
        if running is not None:
            raise FailedPrecondition(
                f"{self._label(int(running), scope)} is still running; wait for it to finish"
            )

    @contextmanager
    def writing(
        self, version: int, scope: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Iterator[Path]:
        """A temporary folder owned by this service; on success it becomes the version's bundle."""
        relative = self.bundle_path(version, scope)
        with self.artifacts.publish(relative, dict(metadata or {}), owner=self.owner) as folder:
            yield folder

    def mark_ready(
        self,
        version: int,
        scope: str | None = None,
        then: Callable[[Session, R], None] | None = None,
        **fields: Any,
    ) -> R:
        """Verify the published bundle, then set READY (with `fields`) in one transaction.

        `then(session, row)` adds what belongs to the same commit (clusters of
        a discovery, the instance's current version). A row that is no longer
        RUNNING (recovered, cancelled) is not revived: FailedPrecondition.
        """
        relative = self.bundle_path(version, scope)
        self.artifacts.verify(relative)
        with self.db.session() as s:
            row = self._row(s, version, scope)
            v = _v(row)
            if v.status != Status.RUNNING.value:
                raise FailedPrecondition(
                    f"{self._label(version, scope)} is {v.status}, not {Status.RUNNING.value}"
                )
            v.status = Status.READY.value
            v.artifact_path = relative
            v.error = None
            for name, value in fields.items():
                setattr(row, name, value)
            self._finished(v)
            if then is not None:
                then(s, row)
            s.flush()
            s.expunge(row)
            return row

    def end(self, version: int, status: Status, reason: str, scope: str | None = None) -> None:
        """End a RUNNING version as FAILED or CANCELLED with the reason; remove its files.

        A READY version is left alone (its files are vouched for).
        """
        with self.db.session() as s:
            v = _v(self._row(s, version, scope))
            if v.status == Status.READY.value:
                return
            v.status = status.value
            v.error = reason[:_MAX_REASON]
            v.artifact_path = None
            self._finished(v)
        self.artifacts.remove(self.bundle_path(version, scope))

    def end_with(self, version: int, exc: BaseException, scope: str | None = None) -> Status:
        """`end` with the status and reason that `exc` stands for; returns the status."""
        status, reason = ending_of(exc)
        self.end(version, status, reason, scope)
        return status

    @contextmanager
    def guard(self, version: int, scope: str | None = None) -> Iterator[None]:
        """Run a job's body: any exception ends the version (FAILED / CANCELLED) and propagates."""
        try:
            yield
        except BaseException as exc:
            try:
                self.end_with(version, exc, scope)
            except Exception:  # the job's own error matters more
                log.exception("could not end %s", self._label(version, scope))
            raise

    @staticmethod
    def _finished(row: VersionedRow) -> None:
        if hasattr(row, "finished_at"):
            row.finished_at = utcnow()

    def recover(self) -> list[tuple[str | None, int]]:
        """At the owner's start: fail its interrupted versions, remove its leftovers.

        Every RUNNING row then belongs to a dead job of this service (one
        service owns each table): it becomes FAILED "interrupted" and any
        bundle it got as far as publishing is removed, as are this owner's
        temporary folders under the root. Returns the (scope, version) pairs.
        """
        recovered: list[tuple[str | None, int]] = []
        with self.db.session() as s:
            rows = s.scalars(
                select(self.row_type).where(self._column("status") == Status.RUNNING.value)
            ).all()
            for row in rows:
                scope = getattr(row, self.scope_column) if self.scope_column else None
                v = _v(row)
                v.status = Status.FAILED.value
                v.error = INTERRUPTED
                v.artifact_path = None
                self._finished(v)
                recovered.append((scope, v.version))
        for scope, version in recovered:
            self.artifacts.remove(self.bundle_path(version, scope))
        top = self.root.split("/{", 1)[0]
        self.artifacts.sweep_temporary(self.owner, under=top)
        return recovered

    # ------------------------------------------------------------ reads

    def latest_ready(self, scope: str | None = None) -> int | None:
        """The newest READY version, or None."""
        with self.db.session() as s:
            version = s.scalar(
                self._scoped(select(func.max(self._column("version"))), scope).where(
                    self._column("status") == Status.READY.value
                )
            )
            return None if version is None else int(version)
