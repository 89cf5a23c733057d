"""Issue 9 #6 with real processes: a live worker keeps its id; a worker back after a crash still gets in.

A second worker started under a live worker's ``--worker-id`` (a copy-pasted command
line, or with CURVE any holder of a shared fleet key) used to evict the first: the real
worker got ``Shutdown`` and exited 0.  Now the newcomer is refused with the reason and
exits 2, and the first keeps its tasks.  A worker whose old connection is gone (kill -9,
then a restart) or silent past ``suspect_after_s`` (a frozen host) is still admitted.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from actorsched import security
from actorsched.client import Client
from actorsched.localcluster import LocalCluster, wait_until

WAIT_S = 30.0
"""Bound on every wait for a process or the coordinator: generous for a busy 2-core machine."""


def owners(client: Client) -> list[tuple[str, int, str]]:
    return [(w.worker_id, w.pid, w.state) for w in client.workers()]


def ended(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve-fleet-key"])
def test_a_second_worker_claiming_a_live_workers_id_is_refused_and_the_first_keeps_its_tasks(
        make_cluster: Callable[..., LocalCluster], tmp_path: Path, curve: bool) -> None:
    coordinator_args: list[str] = []
    worker_args: list[str] = []
    client_keys: dict[str, str] = {}
    if curve:  # one key for the whole fleet: any holder may register as "fleet" or "fleet-<suffix>"
        for folder, name in (("server", "coordinator"), ("workers", "fleet"), ("clients", "c")):
            security.generate(tmp_path / folder, name)
        config = tmp_path / "coordinator.toml"
        config.write_text(f'[security]\nsecret_key_file = "{tmp_path}/server/coordinator.key_secret"\n'
                          f'worker_keys_dir = "{tmp_path}/workers"\nclient_keys_dir = "{tmp_path}/clients"\n')
        coordinator_args = ["--config", str(config)]
        worker_args = ["--server-key", str(tmp_path / "server" / "coordinator.key"),
                       "--key", str(tmp_path / "workers" / "fleet.key_secret")]
        client_keys = {"server_key_file": str(tmp_path / "server" / "coordinator.key"),
                       "key_file": str(tmp_path / "clients" / "c.key_secret")}
    cluster = make_cluster(workers=0, coordinator_args=coordinator_args, worker_args=worker_args)
    with Client(cluster.client_endpoint, timeout_s=WAIT_S, **client_keys) as client:
        first = cluster.add_worker("--worker-id", "fleet-1", slots=2)
        wait_until(lambda: owners(client) == [("fleet-1", first.pid, "ALIVE")], WAIT_S, "the first fleet-1")
        held = [client.submit("actorsched.tasks:sleep", 1.5) for _ in range(2)]
        wait_until(lambda: all(h.info().state == "RUNNING" for h in held), WAIT_S, "fleet-1 to run 2 tasks")

        second = cluster.add_worker("--worker-id", "fleet-1", slots=2)
        wait_until(lambda: ended(second) or ended(first), WAIT_S, "one of the two fleet-1 workers to exit")

        assert second.returncode == 2, "the newcomer must be refused (exit 2)"
        assert first.poll() is None, f"the live worker was evicted (exit {first.returncode})"
        log = cluster.log_text("worker-2")
        assert "refused this worker" in log and "'fleet-1' is in use by a live worker" in log, log[-2000:]
        assert f"pid {first.pid}" in log and "--worker-id" in log
        assert owners(client) == [("fleet-1", first.pid, "ALIVE")]
        workers = client.stats()["workers"]
        assert (workers["claims_refused"], workers["superseded"]) == (1, 0)
        # Its tasks were never taken from it: each finishes in its first attempt, there.
        assert client.gather(held, timeout=WAIT_S) == [1.5, 1.5]
        assert [(h.info().attempt, h.info().worker_id) for h in held] == [(1, "fleet-1")] * 2
        assert client.submit("actorsched.tasks:echo", 7).result(timeout=WAIT_S) == 7
    assert "refused a registration" in cluster.log_text()


def test_a_worker_restarted_after_kill_9_gets_its_id_back_at_once(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client]) -> None:
    cluster = make_cluster(workers=0)  # default liveness: suspect_after_s=5, worker_timeout_s=15
    client = ready(cluster, WAIT_S)
    first = cluster.add_worker("--worker-id", "phoenix")
    wait_until(lambda: owners(client) == [("phoenix", first.pid, "ALIVE")], WAIT_S, "the first phoenix")
    first.kill()
    first.wait(WAIT_S)

    again = cluster.add_worker("--worker-id", "phoenix")
    wait_until(lambda: owners(client) == [("phoenix", again.pid, "ALIVE")], WAIT_S, "the restarted phoenix")
    # Admitted because the old connection was seen closed, not by outlasting a silence.
    workers = client.stats()["workers"]
    assert (workers["claims_refused"], workers["superseded"], workers["removed"]) == (0, 0, 1)
    assert client.submit("actorsched.tasks:echo", 3).result(timeout=WAIT_S) == 3


def test_a_worker_back_on_a_new_connection_while_its_old_one_is_silent_past_suspect_time_takes_the_id(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], tmp_path: Path) -> None:
    config = tmp_path / "liveness.toml"
    config.write_text("[liveness]\nheartbeat_interval_s = 0.2\nsuspect_after_s = 1.0\nworker_timeout_s = 60.0\n"
                      "scan_interval_s = 0.2\n")
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(config)])
    client = ready(cluster, WAIT_S)
    frozen = cluster.add_worker("--worker-id", "frozen")
    wait_until(lambda: owners(client) == [("frozen", frozen.pid, "ALIVE")], WAIT_S, "the first 'frozen'")
    os.kill(frozen.pid, signal.SIGSTOP)  # a host that stops answering without closing its connection
    try:
        wait_until(lambda: owners(client) == [("frozen", frozen.pid, "SUSPECT")], WAIT_S, "'frozen' to be suspect")
        successor = cluster.add_worker("--worker-id", "frozen")
        wait_until(lambda: owners(client) == [("frozen", successor.pid, "ALIVE")], WAIT_S, "the successor")
        assert client.stats()["workers"]["superseded"] == 1
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    # Awake again, the old process is fenced out (Shutdown, or Refused if it registers again) and leaves.
    wait_until(lambda: ended(frozen), WAIT_S, "the superseded process to exit")
    assert successor.poll() is None
    assert owners(client) == [("frozen", successor.pid, "ALIVE")]
    assert client.submit("actorsched.tasks:echo", 5).result(timeout=WAIT_S) == 5
