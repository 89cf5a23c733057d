"""Issue 9 #12, #14, #16 with real processes: a start that cannot be right ends at once with exit 2 and why."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from actorsched import security
from actorsched.localcluster import BIN, ROOT, LocalCluster

START_TIMEOUT_S = 30.0
"""Bound on a process that must end by itself; one that hangs fails the test (and is killed)."""


def run_bin(program: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BIN / program), *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)


# ------------------------------------------------------------------ #12 endpoints


@pytest.mark.parametrize("flag", ["--bind", "--worker-bind"])
def test_a_semicolon_endpoint_is_refused_as_malformed_not_bound(flag: str) -> None:
    endpoint = "tcp://127.0.0.1;0.0.0.0:0"
    other = {"--bind": "--worker-bind", "--worker-bind": "--bind"}[flag]
    finished = run_bin("coordinator", flag, endpoint, other, "tcp://127.0.0.1:0", "--no-journal", "--http", "")
    assert finished.returncode == 2 and finished.stdout == ""
    assert repr(endpoint) in finished.stderr and "tcp://HOST:PORT" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_semicolon_status_page_address_is_refused_as_malformed() -> None:
    finished = run_bin("coordinator", "--http", "127.0.0.1;0.0.0.0:0", "--bind", "tcp://127.0.0.1:0",
                       "--worker-bind", "tcp://127.0.0.1:0", "--no-journal")
    assert finished.returncode == 2 and finished.stdout == ""
    assert "HOST:PORT" in finished.stderr and "Traceback" not in finished.stderr


# ------------------------------------------------------------------ #14 one coordinator per journal


def test_a_second_coordinator_on_a_journal_in_use_exits_2_naming_the_holder_and_leaves_the_epoch(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0)
    assert cluster.coordinator is not None and cluster.state_dir is not None
    with cluster.client() as client:
        assert client.stats()["queue"]["epoch"] == 1

    second = run_bin("coordinator", "--state-dir", cluster.state_dir, "--bind", "tcp://127.0.0.1:0",
                     "--worker-bind", "tcp://127.0.0.1:0", "--http", "")
    assert second.returncode == 2 and second.stdout == ""
    assert f"pid {cluster.coordinator.pid}" in second.stderr and "Traceback" not in second.stderr
    assert cluster.coordinator.poll() is None

    cluster.kill_coordinator(signal.SIGTERM)
    cluster.start_coordinator()
    with cluster.client() as client:
        assert client.stats()["queue"]["epoch"] == 2


# ------------------------------------------------------------------ #16 worker key files


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    security.generate(tmp_path, "server")
    security.generate(tmp_path, "worker")
    return tmp_path


@pytest.mark.parametrize(("key", "fragment"), [("worker.key", "key_secret"), ("nobody.key_secret", "keygen")])
def test_a_worker_given_a_bad_key_file_exits_2_at_once_naming_it(
        keys: Path, dead_endpoint: str, key: str, fragment: str) -> None:
    finished = run_bin("worker", "--connect", dead_endpoint, "--slots", "1",
                       "--server-key", str(keys / "server.key"), "--key", str(keys / key))
    assert finished.returncode == 2
    assert str(keys / key) in finished.stderr and fragment in finished.stderr
    assert "Traceback" not in finished.stderr
