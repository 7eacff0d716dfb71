"""docker-compose.yml and the Dockerfile: valid, complete and documented.

There is no Docker engine on the test machines, so nothing is built or run:
Debian's `docker-compose config -q` validates the file (schema, interpolation,
anchors), and the parsed YAML is checked for what a deployment relies on —
services, ports, health checks through grpc.health.v1, start order, the shared
volume, PostgreSQL — and for a comment on every FORESIGHT_ variable the
services read, so the file stays current as settings grow.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from foresight.settings import ServiceSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SERVICE_PORTS = {"trainer": 50051, "scorer": 50052, "segmenter": 50053}
SCALE_SERVICES = ("dask-scheduler", "dask-worker-1", "dask-worker-2", "minio")


def _docker_compose() -> str:
    """Path of Debian's docker-compose, installing it when missing and allowed.

    Installs with apt only as root (CI's and the developers' machines run as
    root; .ci/run installs it first anyway). Missing in CI is a failure, as
    the README promises the check runs there; elsewhere it is a skip.
    """
    found = shutil.which("docker-compose")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "docker-compose"],
            env=env,
            capture_output=True,
            timeout=600,
        )
        found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is required in CI (apt-get install docker-compose)")
        pytest.skip("docker-compose not installed")
    return found


def _compose_env() -> dict[str, str]:
    # Only what docker-compose itself needs: a developer's FORESIGHT_* or
    # POSTGRES_* variables must not change what the file resolves to.
    keep = ("PATH", "HOME", "LANG", "LC_ALL")
    return {k: v for k, v in os.environ.items() if k in keep}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as written (anchors and merge keys resolved by YAML)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_docker_compose_config_validates() -> None:
    exe = _docker_compose()
    result = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Interpolation warnings (an unset variable without a default) would
    # silently become empty strings at `up`.
    assert "variable is not set" not in result.stderr, result.stderr


def test_resolved_config_keeps_what_we_rely_on() -> None:
    """What docker-compose itself makes of the file: conditions, commands, env."""
    exe = _docker_compose()
    result = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"],
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    resolved = yaml.safe_load(result.stdout)
    for name in SERVICE_PORTS:
        svc = resolved["services"][name]
        assert svc["command"] == [f"foresight-{name}"]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = svc["environment"]
        assert env["FORESIGHT_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["FORESIGHT_DATABASE_URL"]
        assert env["FORESIGHT_DATA_DIR"] == "/data"


def test_services_ports_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    default = {name for name, svc in services.items() if "profiles" not in svc}
    assert default == {"postgres", *SERVICE_PORTS}
    assert set(services) - default == set(SCALE_SERVICES)

    pg = services["postgres"]
    # Pinned: an exact release, never "latest" or a bare major.
    assert re.fullmatch(r"postgres:\d+\.\d+(-[a-z0-9]+)?(@sha256:[0-9a-f]{64})?", pg["image"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])

    images = set()
    for name, port in SERVICE_PORTS.items():
        svc = services[name]
        images.add(svc["image"])
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert svc["command"] == [f"foresight-{name}"]
        assert svc["restart"] in {"always", "unless-stopped", "on-failure"}
        env = svc["environment"]
        assert env[f"FORESIGHT_{name.upper()}_PORT"] == str(port)
        assert env["FORESIGHT_HOST"] == "0.0.0.0"
        assert any(p.endswith(f":{port}:{port}") for p in svc["ports"]), svc["ports"]
        # Health through grpc.health.v1, by our own probe, for this service.
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "foresight.healthcheck"], test
        assert test[4] == name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        # The stop grace must outlast the service's own drain time.
        grace = float(env["FORESIGHT_GRACE_SECONDS"])
        assert float(svc["stop_grace_period"].rstrip("s")) > grace
    assert len(images) == 1, "all three services run the one image"
    for name in ("scorer", "segmenter"):
        assert services[name]["depends_on"]["trainer"]["condition"] == "service_healthy"


def test_shared_volume_for_artifacts_and_event_store(compose: dict[str, Any]) -> None:
    assert "foresight-data" in compose["volumes"]
    for name in SERVICE_PORTS:
        svc = compose["services"][name]
        assert "foresight-data:/data" in svc["volumes"]
        assert svc["environment"]["FORESIGHT_DATA_DIR"] == "/data"


def _resolved(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose [args] config` as parsed YAML."""
    result = subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE), *args, "config"],
        cwd=REPO,
        env={**_compose_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "variable is not set" not in result.stderr, result.stderr
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


def test_scale_profile_adds_dask_and_minio_wired_by_environment() -> None:
    exe = _docker_compose()
    check = subprocess.run(
        [exe, "-f", str(COMPOSE), "--profile", "scale", "config", "-q"],
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    # Without the profile's variables the services use local processes and the volume.
    plain = _resolved()
    assert plain["services"]["trainer"]["environment"]["FORESIGHT_DASK_SCHEDULER"] == ""
    # With it, the scheduler address and the S3 store reach every service.
    wired = {
        "FORESIGHT_DASK_SCHEDULER": "tcp://dask-scheduler:8786",
        "FORESIGHT_EVENTS_DIR": "s3://foresight/events",
    }
    resolved = _resolved("--profile", "scale", env=wired)
    services = resolved["services"]
    assert set(services) == {"postgres", *SERVICE_PORTS, *SCALE_SERVICES}
    image = services["trainer"]["image"]
    for name in SERVICE_PORTS:
        env = services[name]["environment"]
        assert {k: env[k] for k in wired} == wired
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    for name in SCALE_SERVICES:
        assert services[name]["profiles"] == ["scale"], name  # only with --profile scale
    assert services["dask-scheduler"]["command"][:4] == ["dask", "scheduler", "--port", "8786"]
    for name in ("dask-worker-1", "dask-worker-2"):
        worker = services[name]
        assert worker["image"] == image, "workers import the same shard functions"
        assert worker["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
        assert worker["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
        assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
        # The same volume at the same path: a shard's local paths resolve on the workers too.
        assert any(str(v).startswith("foresight-data:/data") for v in worker["volumes"])
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9TZ-]+", services["minio"]["image"])
    assert "minio-data" in resolved["volumes"]


def _env_names(cls: type[ServiceSettings]) -> set[str]:
    """Environment variables a settings class reads (aliases included)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(c).upper() for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def test_every_foresight_variable_is_documented() -> None:
    """Each variable of each service's settings is named in the file's comments."""
    text = COMPOSE.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    wanted = _env_names(ServiceSettings)
    for name in SERVICE_PORTS:
        try:
            module = importlib.import_module(f"services.{name}.settings")
        except ModuleNotFoundError:
            continue  # that service is not written yet
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, ServiceSettings):
                wanted |= _env_names(obj)
    missing = sorted(v for v in wanted if not re.search(rf"\b{v}\b", comments))
    assert not missing, f"document these in docker-compose.yml: {missing}"


def test_dockerfile_is_multi_stage_slim_pinned_non_root() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base, "base image is set once, in ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base.group(1)), (
        base.group(1)
    )
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.M)
    assert [s for _, s in stages] == ["builder", "runtime"]
    assert "COPY --from=builder" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*foresight\.healthcheck", text, re.M)
    # Everything the image runs must be in the build context.
    ignored = (REPO / ".dockerignore").read_text().split()
    for needed in ("foresight", "services", "pyproject.toml"):
        assert needed not in ignored
