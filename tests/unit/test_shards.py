"""ShardRunner: cooperative cancellation and workers that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from foresight.errors import Cancelled
from foresight.shards import ShardRunner

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _announce_and_sleep(marker_dir: str, shard: int) -> int:
    """A shard that says it started (its pid in a file), then works for a long time."""
    (Path(marker_dir) / f"{shard}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return shard


def _square(x: int) -> int:
    return x * x


def _wait_for_pids(marker_dir: Path, count: int, within_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        files = list(marker_dir.glob("*.pid"))
        texts = [f.read_text() for f in files]
        if len(files) >= count and all(texts):
            return [int(t) for t in texts]
        time.sleep(0.1)
    raise AssertionError(f"workers did not start: {list(marker_dir.iterdir())}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], within_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_map_returns_results_in_order_on_the_pool() -> None:
    runner = ShardRunner(2)
    progress: list[tuple[int, int]] = []
    assert runner.map(_square, [(i,) for i in range(5)], lambda d, t: progress.append((d, t))) == [
        0,
        1,
        4,
        9,
        16,
    ]
    assert progress[-1] == (5, 5)
    assert [d for d, _ in progress] == [1, 2, 3, 4, 5]


def test_inline_map_stops_between_shards_when_cancelled() -> None:
    cancel = threading.Event()
    calls: list[int] = []

    def shard(x: int) -> int:
        calls.append(x)
        cancel.set()
        return x

    with pytest.raises(Cancelled):
        ShardRunner(1).map(shard, [(1,), (2,), (3,)], cancel=cancel)
    assert calls == [1]


def test_already_cancelled_map_runs_nothing() -> None:
    cancel = threading.Event()
    cancel.set()
    calls: list[int] = []
    with pytest.raises(Cancelled):
        ShardRunner(1).map(calls.append, [(1,)], cancel=cancel)
    assert calls == []


def test_cancelled_pool_map_raises_and_terminates_its_workers(tmp_path: Path) -> None:
    runner = ShardRunner(2, keep_alive=True)
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            runner.map(_announce_and_sleep, [(str(tmp_path), i) for i in range(4)], cancel=cancel)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    pids = _wait_for_pids(tmp_path, 2)
    cancel.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert _wait_gone(pids) == []
    # The runner starts a fresh pool for the next job.
    assert runner.map(_square, [(2,), (3,)]) == [4, 9]
    runner.close()


def test_workers_and_their_forkserver_end_when_the_service_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from foresight.shards import ShardRunner, prestart\n"
        "from tests.unit.test_shards import _announce_and_sleep\n"
        "prestart(2, None, 'tests.unit.test_shards')\n"
        "ShardRunner(2).map(_announce_and_sleep, [(sys.argv[1], i) for i in range(2)])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO)
    try:
        pids = _wait_for_pids(tmp_path, 2)
        # Forked by the forkserver, not by the service: they watch the service itself.
        servers = {psutil.Process(p).ppid() for p in pids}
        assert parent.pid not in servers
        assert all(psutil.Process(s).ppid() == parent.pid for s in servers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(pids) == []
        assert _wait_gone(list(servers)) == []  # nothing is left behind
    finally:
        parent.kill()
        parent.wait()


def test_a_worker_whose_service_is_already_gone_exits() -> None:
    # A worker forked after the service died ends itself instead of running on.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    script = (
        "import sys\n"
        "from foresight.shards import _die_with_service\n"
        "_die_with_service(int(sys.argv[1]))\n"
        "print('alive')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(gone.pid)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "alive" not in done.stdout


def _service_loaded(_: int) -> bool:
    return "services.scorer.servicer" in sys.modules


def test_prestarted_workers_fork_with_the_service_imported(tmp_path: Path) -> None:
    # The worker's function lives here (tests.unit.test_shards imports no service):
    # only the forkserver's preload can have imported the scorer's servicer.
    script = (
        "from foresight.shards import ShardRunner, prestart\n"
        "from tests.unit.test_shards import _service_loaded\n"
        "import sys\n"
        "if sys.argv[1] == 'prestart':\n"
        "    prestart(2, None, 'services.scorer.servicer')\n"
        "print(ShardRunner(2).map(_service_loaded, [(0,), (1,)]))\n"
    )
    answers = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()
        for mode in ("prestart", "lazy")
    }
    assert answers == {"prestart": "[True, True]", "lazy": "[False, False]"}


def test_prestart_is_a_no_op_without_a_local_pool() -> None:
    script = (
        "from multiprocessing import forkserver\n"
        "from foresight.shards import prestart\n"
        "prestart(1, None, 'json')\n"
        "prestart(4, 'tcp://scheduler:8786', 'json')\n"
        "print(forkserver._forkserver._forkserver_pid)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "None", done.stderr


def test_cancelled_maps_to_the_grpc_cancelled_status() -> None:
    import grpc

    from foresight.runtime.errors import status_for

    assert status_for(Cancelled("cancelled")) == grpc.StatusCode.CANCELLED


def test_workers_outlive_the_thread_that_first_used_the_pool() -> None:
    # Workers are tied to the service, not to the thread that started them: a
    # job's thread ending must not take a kept-alive pool's workers with it.
    runner = ShardRunner(2, keep_alive=True)
    first: list[list[int]] = []
    thread = threading.Thread(target=lambda: first.append(runner.map(_square, [(1,), (2,)])))
    thread.start()
    thread.join(60)
    assert first == [[1, 4]]
    assert runner.map(_square, [(3,), (4,)]) == [9, 16]
    runner.close()


def test_a_job_token_in_context_cancels_a_map_without_being_passed() -> None:
    from foresight.shards import JOB_CANCEL

    cancel = threading.Event()
    cancel.set()
    token = JOB_CANCEL.set(cancel)
    try:
        with pytest.raises(Cancelled):
            ShardRunner(1).map(_square, [(1,)])
    finally:
        JOB_CANCEL.reset(token)


@pytest.mark.parametrize("preload", [True, False])
def test_the_scorer_starts_its_forkserver_unless_told_not_to(tmp_path: Path, preload: bool) -> None:
    script = (
        "import sys\n"
        "from multiprocessing import forkserver\n"
        "from pathlib import Path\n"
        "from foresight.storage.db import Database\n"
        "from services.scorer.main import build_scorer\n"
        "from services.scorer.settings import ScorerSettings\n"
        "s = ScorerSettings(data_dir=Path(sys.argv[1]), scoring_threads=2,\n"
        "                   preload_shard_workers=sys.argv[2] == 'on')\n"
        "build_scorer(s, Database(s.resolved_database_url))\n"
        "print(forkserver._forkserver._forkserver_pid is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "on" if preload else "off"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == str(preload), done.stderr[-2000:]


def _environment(name: str) -> str | None:
    return os.environ.get(name)


def test_workers_see_the_environment_the_service_has_now(monkeypatch: pytest.MonkeyPatch) -> None:
    # The forkserver may have started before a variable was set (credentials, say).
    runner = ShardRunner(2)
    assert runner.map(_environment, [("FORESIGHT_TEST_LATE",)] * 2) == [None, None]
    monkeypatch.setenv("FORESIGHT_TEST_LATE", "set")
    assert runner.map(_environment, [("FORESIGHT_TEST_LATE",)] * 2) == ["set", "set"]
