"""Load-test configurations: read the ghz JSON files and turn their data into messages.

A configuration is a plain ghz config file (`call`, `host`, `insecure`,
`data-file`, `total`, `concurrency`, …). Everything else in the load tests —
the h2load fallback, the sampled status check, the unit tests — reads the
same files, so the two tools always send the same requests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

# Importing the generated modules registers the v1 descriptors in the default
# pool; reflection on the servers serves the same descriptors.
from foresight.api.scorer.v1 import scorer_pb2  # noqa: F401
from foresight.api.segmenter.v1 import segmenter_pb2  # noqa: F401
from foresight.client import ClientConfig

LOADTEST_DIR = Path(__file__).resolve().parent
REPO = LOADTEST_DIR.parent
CONFIG_DIR = LOADTEST_DIR / "configs"
DATA_DIR = LOADTEST_DIR / "data"

# Which environment variable names the address of each service, and its
# default (the ports of `make up`).
SERVICE_ADDRESS = {
    "foresight.scorer.v1.ScorerService": ("FORESIGHT_SCORER_ADDR", "127.0.0.1:50052"),
    "foresight.segmenter.v1.SegmenterService": ("FORESIGHT_SEGMENTER_ADDR", "127.0.0.1:50053"),
}


@dataclass(frozen=True)
class LoadConfig:
    """One ghz configuration file, as the runner needs it."""

    path: Path
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        """Short name: the file name without .json."""
        return self.path.stem

    @property
    def call(self) -> str:
        """Fully qualified method, ghz style: package.Service.Method."""
        return str(self.raw["call"])

    @property
    def method(self) -> MethodDescriptor:
        """The method's descriptor from the generated code."""
        return method_descriptor(self.call)

    @property
    def path_header(self) -> str:
        """HTTP/2 :path of the call: /package.Service/Method."""
        m = self.method
        return f"/{m.containing_service.full_name}/{m.name}"

    @property
    def total(self) -> int:
        """Requests per run."""
        return int(self.raw.get("total", 200))

    @property
    def concurrency(self) -> int:
        """Requests in flight at once."""
        return int(self.raw.get("concurrency", 50))

    @property
    def data_file(self) -> Path:
        """The request data file (relative paths are relative to the repository root)."""
        return REPO / str(self.raw["data-file"])

    def address(self, env: dict[str, str] | None = None) -> str:
        """Target address: FORESIGHT_SCORER_ADDR / FORESIGHT_SEGMENTER_ADDR or the default.

        The `host` in the file is only the default for running ghz by hand.
        """
        env = dict(os.environ) if env is None else env
        var, default = SERVICE_ADDRESS[self.method.containing_service.full_name]
        return env.get(var) or default

    def data(self) -> list[dict[str, Any]]:
        """The request data as JSON objects (a single object becomes a list of one)."""
        inline = "data" in self.raw
        value = self.raw["data"] if inline else json.loads(self.data_file.read_text())
        return value if isinstance(value, list) else [value]

    def messages(self) -> list[Message]:
        """The request data parsed into request messages (fails on unknown fields)."""
        cls = request_class(self.call)
        return [json_format.ParseDict(item, cls()) for item in self.data()]


def client_config(env: dict[str, str] | None = None, **kwargs: Any) -> ClientConfig:
    """Client configuration from the same variables as the `foresight` CLI."""
    env = dict(os.environ) if env is None else env
    return ClientConfig(
        trainer=env.get("FORESIGHT_TRAINER_ADDR") or "127.0.0.1:50051",
        scorer=env.get("FORESIGHT_SCORER_ADDR") or "127.0.0.1:50052",
        segmenter=env.get("FORESIGHT_SEGMENTER_ADDR") or "127.0.0.1:50053",
        token=env.get("FORESIGHT_AUTH_TOKEN") or None,
        **kwargs,
    )


def method_descriptor(call: str) -> MethodDescriptor:
    """Descriptor of `package.Service.Method` or `package.Service/Method`."""
    name = call.lstrip("/").replace("/", ".")
    return descriptor_pool.Default().FindMethodByName(name)


def request_class(call: str) -> type[Message]:
    """The request message class of a method."""
    return message_factory.GetMessageClass(method_descriptor(call).input_type)


def load_configs(names: list[str] | None = None) -> list[LoadConfig]:
    """Every configuration in configs/ (or the named ones), sorted by name."""
    configs = [
        LoadConfig(path, json.loads(path.read_text())) for path in sorted(CONFIG_DIR.glob("*.json"))
    ]
    if names:
        unknown = set(names) - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"unknown load test(s): {sorted(unknown)}")
        configs = [c for c in configs if c.name in names]
    return configs
