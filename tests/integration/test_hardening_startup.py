"""Issue 9 #12, #13, #14, #16 with real processes: a start that cannot be right ends at once with exit 2 and why.

And a start that fails half-way gives back everything it took (#13): a coordinator whose
status page port was taken used to keep its actor threads alive, blame the two ZeroMQ
ports it had bound, and ignore SIGTERM until kill -9.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pykka
import pytest

from actorsched import config as cfg
from actorsched import security
from actorsched.coordinator import app
from actorsched.localcluster import BIN, ROOT, LocalCluster, wait_until

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


# ------------------------------------------------------------------ #13 a port in use


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on for the whole test."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield holder.getsockname()[1]


TAKEN = {  # which port is taken -> (the words that name it, the flag that picks another)
    "status page": ("status page", "--http"),
    "client": ("client endpoint", "--bind"),
    "worker": ("worker endpoint", "--worker-bind"),
}


def endpoints_with(taken: str, port: int) -> dict[str, str]:
    addresses = {"status page": "127.0.0.1:0", "client": "tcp://127.0.0.1:0", "worker": "tcp://127.0.0.1:0"}
    addresses[taken] = f"127.0.0.1:{port}" if taken == "status page" else f"tcp://127.0.0.1:{port}"
    return addresses


@pytest.mark.parametrize("taken", list(TAKEN))
def test_a_taken_port_ends_the_start_with_exit_2_naming_that_port_alone(
        tmp_path: Path, busy_port: int, taken: str) -> None:
    addresses = endpoints_with(taken, busy_port)
    finished = run_bin("coordinator", "--bind", addresses["client"], "--worker-bind", addresses["worker"],
                       "--http", addresses["status page"], "--state-dir", str(tmp_path / "state"))
    # run_bin's timeout bounds the start: a coordinator that hangs fails here, and is killed.
    assert finished.returncode == 2 and finished.stdout == ""
    (error,) = [line for line in finished.stderr.splitlines() if line.startswith("coordinator:")]
    words, flag = TAKEN[taken]
    assert f"cannot bind the {words} {addresses[taken]}" in error and "in use" in error and flag in error
    assert ":0" not in error, f"the error blames a port that was free: {error}"
    assert "Traceback" not in finished.stderr


@pytest.fixture
def no_leftover_actors() -> Iterator[None]:
    """Whatever the test's coordinator left running is stopped, so a failure cannot hang the session."""
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


class _ClockFails(RuntimeError):
    pass


@pytest.mark.parametrize("failure", ["status page", "worker", "failure detector"])
def test_a_start_failing_half_way_gives_back_every_thread_port_and_the_journal_lock(
        tmp_path: Path, busy_port: int, failure: str, monkeypatch: pytest.MonkeyPatch,
        no_leftover_actors: None) -> None:
    ports = {"status page": free_port(), "client": free_port(), "worker": free_port()}
    if failure in ports:
        ports[failure] = busy_port
    else:  # the last thing started: every port bound and every other actor running by then
        def fail(*args: object, **kwargs: object) -> None:
            raise _ClockFails("the clock cannot start")
        monkeypatch.setattr(app.FailureDetectorActor, "start", fail)
    config = cfg.with_overrides(cfg.CoordinatorConfig(), "endpoints",
                                client_endpoint=f"tcp://127.0.0.1:{ports['client']}",
                                worker_endpoint=f"tcp://127.0.0.1:{ports['worker']}")
    config = cfg.with_overrides(config, "journal", state_dir=str(tmp_path / "state"))
    config = cfg.with_overrides(config, "http", endpoint=f"127.0.0.1:{ports['status page']}")
    threads_before = set(threading.enumerate())

    with pytest.raises(_ClockFails if failure == "failure detector" else app.StartError):
        app.Coordinator(config)

    assert pykka.ActorRegistry.get_all() == []
    wait_until(lambda: set(threading.enumerate()) <= threads_before, 10,
               "the half-started coordinator's threads to end")
    free = [port for port in ports.values() if port != busy_port]
    wait_until(lambda: all(bindable(port) for port in free), 10, f"ports {free} to be released")
    lock = os.open(tmp_path / "state" / "journal.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while still held
    finally:
        os.close(lock)


def stored_epoch(state_dir: str) -> int:
    with sqlite3.connect(Path(state_dir) / "journal.sqlite3") as db:
        return int(db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0])


def test_a_start_failing_on_a_taken_status_page_port_leaves_the_stored_epoch(
        make_cluster: Callable[..., LocalCluster], busy_port: int) -> None:
    cluster = make_cluster(workers=0)
    assert cluster.state_dir is not None
    cluster.kill_coordinator(signal.SIGTERM)
    assert stored_epoch(cluster.state_dir) == 1

    failed = run_bin("coordinator", "--state-dir", cluster.state_dir, "--bind", "tcp://127.0.0.1:0",
                     "--worker-bind", "tcp://127.0.0.1:0", "--http", f"127.0.0.1:{busy_port}")
    assert failed.returncode == 2 and "status page" in failed.stderr
    # Epoch 2 was never served: the next coordinator that does serve is epoch 2.
    assert stored_epoch(cluster.state_dir) == 1
    cluster.start_coordinator()
    with cluster.client() as client:
        assert client.stats()["queue"]["epoch"] == 2


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
