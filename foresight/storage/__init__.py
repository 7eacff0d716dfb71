"""Storage: SQL registry / catalog / profile store and the artifact store."""

from foresight.storage.artifacts import ArtifactStore, atomic_write_bytes, sha256_file
from foresight.storage.db import Database, default_database_url

__all__ = ["ArtifactStore", "Database", "atomic_write_bytes", "default_database_url", "sha256_file"]
