"""One registration per reconnect: a coordinator restart must not meet a burst of re-registrations.

While the coordinator is down, a worker's heartbeats used to pile up in its DEALER queue;
the restarted coordinator answered each one with "register again" and the worker
registered once per answer (~42 times after 40 s down).  These tests kill -9 a real
coordinator, keep it down while the workers attempt many heartbeats (read from their
DEBUG log, not slept for), restart it on the same ports and state folder, and count the
"worker registered" lines the new coordinator logs for each worker.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import FakeCoordinator

from actorsched.client import Client
from actorsched.localcluster import BIN, ROOT, LocalCluster, wait_until
from actorsched.protocol import Heartbeat, Register, Reregister, Welcome

pytestmark = pytest.mark.timeout(120)

HEARTBEAT_S = 0.1
HEARTBEATS_WHILE_DOWN = 15
"""Heartbeats each worker attempts while the coordinator is down: each used to cost a registration."""
QUIET_HEARTBEATS = 5
"""Heartbeats after the last registration before counting: any burst comes from messages already queued."""

_HEARTBEAT_LINE = re.compile(r"heartbeat n=\d+")


@pytest.fixture
def fast_heartbeats(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(f"[liveness]\nheartbeat_interval_s = {HEARTBEAT_S}\nsuspect_after_s = 2.0\n"
                    f"worker_timeout_s = 10.0\nscan_interval_s = 0.5\npause_threshold_s = 3.0\n")
    return path


def _registrations(text: str, worker_id: str) -> int:
    return len(re.findall(rf"worker registered worker_id={re.escape(worker_id)} ", text))


def _wait_quiet_and_count(cluster: LocalCluster, worker_ids: list[str], worker_offsets: dict[str, int],
                          coordinator_offset: int) -> dict[str, int]:
    """Registrations the coordinator logged per worker since ``coordinator_offset``, once the workers are quiet."""
    def quiet_after_last_registration(worker_id: str) -> bool:
        text = cluster.log_text(worker_id)[worker_offsets[worker_id]:]
        last = text.rfind("registered worker_id=")
        return last >= 0 and len(re.findall(r"heartbeat n=\d+ sent", text[last:])) >= QUIET_HEARTBEATS

    wait_until(lambda: all(quiet_after_last_registration(w) for w in worker_ids), 30,
               f"each worker to send {QUIET_HEARTBEATS} heartbeats after its last registration")
    after_restart = cluster.log_text()[coordinator_offset:]
    return {w: _registrations(after_restart, w) for w in worker_ids}


def test_a_restarted_coordinator_gets_one_registration_per_worker(
        fast_heartbeats: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=2, slots=1, coordinator_args=["--config", str(fast_heartbeats)],
                           worker_args=["--log-level", "DEBUG"])
    worker_ids = ["worker-1", "worker-2"]
    with Client(cluster.client_endpoint, timeout_s=10.0) as client:
        cluster.wait_for_workers(client, 2)
    before = {w: _registrations(cluster.log_text(), w) for w in worker_ids}
    assert before == {w: 1 for w in worker_ids}, f"registrations before the kill: {before}"

    cluster.kill_coordinator()  # kill -9: no goodbye, the workers only see the connection drop
    offsets = {w: len(cluster.log_text(w)) for w in worker_ids}

    def heartbeats_since_kill(worker_id: str) -> int:
        return len(_HEARTBEAT_LINE.findall(cluster.log_text(worker_id)[offsets[worker_id]:]))

    wait_until(lambda: all(heartbeats_since_kill(w) >= HEARTBEATS_WHILE_DOWN for w in worker_ids), 30,
               f"each worker to attempt {HEARTBEATS_WHILE_DOWN} heartbeats while the coordinator is down")

    coordinator_offset = len(cluster.log_text())
    cluster.start_coordinator()  # same ports, same state folder
    with Client(cluster.client_endpoint, timeout_s=10.0) as client:
        cluster.wait_for_workers(client, 2)

    counts = _wait_quiet_and_count(cluster, worker_ids, offsets, coordinator_offset)
    assert counts == {w: 1 for w in worker_ids}, (
        f"registrations per worker after the restart: {counts} (one per reconnect expected)")


def test_a_worker_started_before_its_coordinator_registers_once(
        fast_heartbeats: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    """Register retries made while nothing answers used to queue up too, one registration each."""
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(fast_heartbeats)],
                           worker_args=["--log-level", "DEBUG"])
    cluster.kill_coordinator()  # only to have its ports: the worker below starts with nobody there
    cluster.add_worker()

    def register_retries() -> int:
        return cluster.log_text("worker-1").count("no Welcome from coordinator=")

    wait_until(lambda: register_retries() >= 2, 30, "the worker to retry its Register twice")
    coordinator_offset = len(cluster.log_text())
    cluster.start_coordinator()
    with Client(cluster.client_endpoint, timeout_s=10.0) as client:
        cluster.wait_for_workers(client, 1)
    counts = _wait_quiet_and_count(cluster, ["worker-1"], {"worker-1": 0}, coordinator_offset)
    assert counts == {"worker-1": 1}, f"registrations after {register_retries()} Register retries: {counts}"


@pytest.fixture
def fake_coordinator() -> Iterator[FakeCoordinator]:
    fake = FakeCoordinator()
    try:
        yield fake
    finally:
        fake.close()


def test_reregister_requests_for_queued_heartbeats_get_one_register(fake_coordinator: FakeCoordinator,
                                                                     tmp_path: Path) -> None:
    """What a restarted coordinator sends for a backlog of heartbeats: many Reregisters, then the Welcome."""
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log_file:
        worker = subprocess.Popen([sys.executable, str(BIN / "worker"), "--connect", fake_coordinator.endpoint,
                                   "--slots", "1", "--worker-id", "w1"], cwd=ROOT, stdout=log_file,
                                  stderr=subprocess.STDOUT)
    try:
        fake_coordinator.expect(Register)
        fake_coordinator.send(Welcome("w1", 1, 0.05))
        fake_coordinator.expect(Heartbeat)
        fake_coordinator.seen.clear()
        for _ in range(5):
            fake_coordinator.send(Reregister("unknown worker connection; register again"))
        fake_coordinator.expect(Register)
        fake_coordinator.send(Welcome("w1", 2, 0.05))
        for _ in range(3):  # the worker handles messages in order: any extra Register comes before these
            fake_coordinator.expect(Heartbeat)
        registers = sum(isinstance(m, Register) for m in fake_coordinator.seen)
        assert registers == 1, f"{registers} Registers for 5 Reregisters; worker log:\n{log_path.read_text()}"
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)
