"""Domain errors shared by every service.

Domain code raises these; the gRPC runtime maps them to status codes in one
place (`foresight.runtime.errors`). They carry no transport codes.
"""

from __future__ import annotations


class ForesightError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ForesightError):
    """A request field or input value is wrong; names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(ForesightError):
    """The thing asked for does not exist."""


class AlreadyExists(ForesightError):
    """A thing with that name already exists."""


class FailedPrecondition(ForesightError):
    """The system is not in a state that allows the operation (e.g. too little data)."""


class DatasetDamaged(FailedPrecondition):
    """A catalogued part of a dataset is missing or unreadable; only that dataset is affected."""

    def __init__(self, dataset: str, part: str, problem: str) -> None:
        super().__init__(
            f"dataset {dataset!r} is damaged: part {part} is {problem}; "
            f"`foresight dataset verify {dataset}` lists the lost parts and rows, "
            f"`foresight dataset repair {dataset}` drops them so a re-import restores them"
        )
        self.dataset = dataset
        self.part = part


class PermissionDenied(ForesightError):
    """The caller may not touch that resource (e.g. a path outside the allowed root)."""


class ResourceExhausted(ForesightError):
    """A limit was hit (too many ids, too large a request)."""


class Unauthenticated(ForesightError):
    """Missing or wrong credentials."""


class Cancelled(ForesightError):
    """The caller cancelled the job (or its deadline passed); nothing was published."""


class Unavailable(ForesightError):
    """A backing system (e.g. the Dask scheduler) cannot be reached; retrying later may work."""


def public_reason(exc: BaseException, fallback: str) -> str:
    """What a caller may read about `exc`: a domain error's message, else `fallback`.

    Anything else (an OSError with a path, a library's exception) stays in the
    service log; stored reasons and status messages never carry it.
    """
    return exc.message if isinstance(exc, ForesightError) else fallback
