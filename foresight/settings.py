"""Settings shared by every service; each service subclasses `ServiceSettings`.

All values come from `FORESIGHT_*` environment variables and are validated at
start: a bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from foresight.storage.db import default_database_url

log = logging.getLogger("foresight.settings")


class ServiceSettings(BaseSettings):
    """What every Foresight service reads from the environment."""

    # validate_by_name: fields with an env alias (FORESIGHT_TRAINER_PORT) still take keyword arguments.
    model_config = SettingsConfigDict(
        env_prefix="FORESIGHT_", extra="ignore", validate_by_name=True
    )

    data_dir: Path = Field(
        Path("var"), description="Root of the event store, artifacts and SQLite file."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite at <data_dir>/foresight.db."
    )
    host: str = Field("127.0.0.1", description="Interface the gRPC server binds.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port (0 = any free port).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port (0 = off).")
    grace_seconds: float = Field(10.0, ge=0, le=600, description="Drain time on SIGTERM.")
    max_message_mb: int = Field(64, ge=1, le=1024, description="Max gRPC message size in MiB.")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate; enables TLS with the key."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key for TLS.")
    auth_token: SecretStr | None = Field(
        None, description="Bearer token required on every RPC but health."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_json: bool = Field(True, description="Structured JSON logs (false = plain text).")
    port_file: Path | None = Field(None, description="Write the bound gRPC port here once serving.")
    shards: int = Field(
        16,
        ge=1,
        le=1024,
        description="Event-store shards; the same for every service (profiles hash into them).",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, url: str | None) -> str | None:
        """A URL SQLAlchemy can parse, for a backend Foresight ships (SQLite or PostgreSQL)."""
        if url is None:
            return None
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError:
            # The URL may hold a password: never echo it.
            raise ValueError(
                "not a database URL (expected sqlite:///PATH or postgresql://USER@HOST/DB)"
            ) from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported backend {backend!r}; use sqlite or postgresql")
        return url

    events_dir: str | None = Field(
        None,
        description=(
            "Event store root: a folder or an fsspec URL such as s3://bucket/events "
            "(endpoint and credentials from the AWS_* variables); default <data_dir>/events."
        ),
    )
    artifacts_url: str | None = Field(
        None,
        description=(
            "Mirror of the artifact store that Dask workers read bundles from "
            "(s3://bucket/artifacts, endpoint and credentials from the AWS_* variables); "
            "unset = workers read <data_dir>/artifacts on a shared volume."
        ),
    )
    dask_scheduler: str | None = Field(
        None,
        pattern=r"^(tcp|tls|ucx|inproc)://\S+$",
        description=(
            "Dask scheduler address (tcp://host:8786): shard work runs on that cluster; "
            "unset = the local process pool."
        ),
    )

    preload_shard_workers: bool = Field(
        True,
        description=(
            "Start the forkserver of the local shard workers with the service, its modules "
            "imported: each job's workers then start in milliseconds instead of importing "
            "for seconds, for the ~150 MB of its own the idle forkserver holds; false = a "
            "bare forkserver at the first job."
        ),
    )

    @field_validator("dask_scheduler", "events_dir", "artifacts_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("FORESIGHT_TLS_CERT_FILE and FORESIGHT_TLS_KEY_FILE go together")
        for f in (self.tls_cert_file, self.tls_key_file):
            if f is not None and not f.is_file():
                raise ValueError(f"TLS file {f} does not exist")
        return self

    @property
    def events_location(self) -> str:
        """The event store root (folder or URL) every service and shard task uses."""
        return self.events_dir or str(self.data_dir / "events")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        return self.database_url or default_database_url(self.data_dir)


def port_field(service: str, default: int, note: str = "") -> Any:
    """The gRPC port of one service: FORESIGHT_<SERVICE>_PORT, or FORESIGHT_PORT."""
    return Field(
        default,
        ge=0,
        le=65535,
        validation_alias=AliasChoices(f"FORESIGHT_{service.upper()}_PORT", "FORESIGHT_PORT"),
        description=f"gRPC port of the {service} (0 = any free port{note}).",
    )


def metrics_port_field(service: str, note: str = "") -> Any:
    """The Prometheus port of one service: FORESIGHT_<SERVICE>_METRICS_PORT, or FORESIGHT_METRICS_PORT."""
    return Field(
        0,
        ge=0,
        le=65535,
        validation_alias=AliasChoices(
            f"FORESIGHT_{service.upper()}_METRICS_PORT", "FORESIGHT_METRICS_PORT"
        ),
        description=f"Prometheus /metrics port of the {service} (0 = off{note}).",
    )


def shard_processes_field(work: str) -> Any:
    """Processes that run shard work (`work`) on this machine: FORESIGHT_SHARD_PROCESSES."""
    return Field(
        0,
        ge=0,
        le=256,
        # FORESIGHT_WORKERS is the deprecated name (see RENAMED).
        validation_alias=AliasChoices("FORESIGHT_SHARD_PROCESSES", "FORESIGHT_WORKERS"),
        description=f"Processes for {work}; 0 = all cores.",
    )


# Deprecated variable → its new name; the old one still works, with a warning at start.
RENAMED: dict[str, str] = {
    "FORESIGHT_WORKERS": "FORESIGHT_SHARD_PROCESSES",
    "FORESIGHT_SCORER_WORKERS": "FORESIGHT_SCORER_SERVER_PROCESSES",
}

S = TypeVar("S", bound=ServiceSettings)


def warn_renamed(environ: Mapping[str, str]) -> list[str]:
    """Warn (and return the warnings) for each deprecated variable that is set."""
    notes = [
        f"{old} is deprecated: set {new} instead" for old, new in RENAMED.items() if old in environ
    ]
    for note in notes:
        log.warning(note)
    return notes


def load_settings(cls: type[S]) -> S:
    """Read settings or exit with a message naming each bad variable."""
    warn_renamed(os.environ)
    try:
        settings = cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            var = f"{prefix}{name}" if name else "settings"
            lines.append(f"  {var}: {err['msg']}")
        sys.stderr.write("invalid configuration:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings
