"""Run the three services as local processes (`make up` / `make down`, the demo, e2e tests)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from foresight.client import ClientConfig, ForesightClient

SERVICES = ("trainer", "scorer", "segmenter")
DEFAULT_PORTS = {"trainer": 50051, "scorer": 50052, "segmenter": 50053}


@dataclass
class LocalServices:
    """Handles of locally started service processes."""

    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client_config(self, **kwargs: object) -> ClientConfig:
        """Client configuration pointing at these processes."""
        ports = {**DEFAULT_PORTS, **self.ports}  # services not started keep their default address
        return ClientConfig(
            trainer=f"127.0.0.1:{ports['trainer']}",
            scorer=f"127.0.0.1:{ports['scorer']}",
            segmenter=f"127.0.0.1:{ports['segmenter']}",
            **kwargs,  # type: ignore[arg-type]
        )


def start(
    data_dir: Path,
    ports: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    services: tuple[str, ...] = SERVICES,
) -> LocalServices:
    """Start the services (port 0 = any free port) and wait until each is SERVING."""
    data_dir = data_dir.resolve()
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    handles = LocalServices(data_dir)
    for name in services:
        port_file = run_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        port = (ports or {}).get(name, 0)
        child_env = {
            **os.environ,
            "FORESIGHT_DATA_DIR": str(data_dir),
            f"FORESIGHT_{name.upper()}_PORT": str(port),
            "FORESIGHT_PORT_FILE": str(port_file),
            **(env or {}),
        }
        log = (run_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}.main"],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        (run_dir / f"{name}.pid").write_text(str(proc.pid))
        handles.procs[name] = proc
    deadline = time.monotonic() + timeout_s
    for name in services:
        port_file = run_dir / f"{name}.port"
        while not port_file.exists():
            if handles.procs[name].poll() is not None:
                stop(handles)
                log_text = (run_dir / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"{name} exited during start-up:\n{log_text}")
            if time.monotonic() > deadline:
                stop(handles)
                raise TimeoutError(f"{name} did not become ready in {timeout_s:.0f} s")
            time.sleep(0.1)
        handles.ports[name] = int(port_file.read_text())
    return handles


def stop(handles: LocalServices, grace_s: float = 30.0) -> dict[str, int | None]:
    """SIGTERM every process and wait for it; returns exit codes (None = had to be killed)."""
    codes: dict[str, int | None] = {}
    for proc in handles.procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in handles.procs.items():
        try:
            codes[name] = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes[name] = None
        (handles.data_dir / "run" / f"{name}.pid").unlink(missing_ok=True)
    return codes


def _up(data_dir: Path) -> None:
    handles = start(data_dir, ports=DEFAULT_PORTS)
    with ForesightClient(handles.client_config()) as client:
        for name in SERVICES:
            print(f"{name:10s} 127.0.0.1:{handles.ports[name]}  {client.health(name)}")
    print(f"logs in {data_dir / 'run'}; stop with `make down`")


def _down(data_dir: Path) -> None:
    run_dir = data_dir.resolve() / "run"
    for name in SERVICES:
        pid_file = run_dir / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                os.kill(pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
        print(f"{name} stopped")


def main() -> None:
    """`python -m foresight.tools.localrun up|down --data DIR`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--data", type=Path, default=Path("var"))
    args = parser.parse_args()
    (_up if args.action == "up" else _down)(args.data)


if __name__ == "__main__":
    main()
