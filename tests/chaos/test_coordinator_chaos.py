"""Chaos against the coordinator: kill -9 and restart from the journal, SIGSTOP, a damaged journal.

Guarantees under test (docs/architecture.md, "Guarantees"): an acknowledged task survives ``kill -9`` of
the coordinator and ends SUCCEEDED exactly once after a restart; a finished task keeps
its result; a coordinator that was paused does not convict its healthy workers; a
journal it cannot trust stops it at start with a message saying what to do.

Nothing here sleeps to synchronise: every wait polls a predicate against a deadline.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actorsched.client import Client
from actorsched.errors import ActorschedError
from actorsched.localcluster import BIN, ROOT, LocalCluster, wait_until
from actorsched.protocol import TaskInfo

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SLEEP = "actorsched.tasks:sleep"


# --------------------------------------------------------------------------- helpers


def successes(info: TaskInfo) -> int:
    return sum(1 for attempt in info.history if attempt.outcome == "succeeded")


def committed(info: TaskInfo) -> tuple[Any, ...]:
    """What must never change once a task is final: state, value, attempt, error and history."""
    return info.state, info.value, info.attempt, info.error, info.history


class Submitter(threading.Thread):
    """Submits seeded batches of short sleeps until its client fails; remembers what was acknowledged.

    ``acked`` maps task id -> expected value for every batch whose ``submit_many``
    returned.  ``in_flight`` is the batch being submitted when the client failed (it may
    or may not have reached the journal, but only as a whole).  At most ``max_open``
    acknowledged tasks are left unfinished, so the load follows the workers' pace.
    """

    def __init__(self, endpoint: str, prefix: str, seed: int, max_open: int = 40) -> None:
        super().__init__(name=f"submitter-{prefix}", daemon=True)
        self.client = Client(endpoint, timeout_s=30)
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.max_open = max_open
        self.lock = threading.Lock()
        self.acked: dict[str, float] = {}
        self.in_flight: dict[str, float] = {}
        self.open: set[str] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        batch = 0
        try:
            while True:
                wait_until(self._has_room, 60, f"{self.name}: fewer than {self.max_open} open tasks")
                size = self.rng.randint(5, 25)
                specs = [{"task_id": f"{self.prefix}-b{batch:03d}-{i:02d}", "name": SLEEP,
                          "args": [round(self.rng.uniform(0.01, 0.05), 4)]} for i in range(size)]
                self.in_flight = {s["task_id"]: s["args"][0] for s in specs}
                self.client.submit_many(specs)
                with self.lock:
                    self.acked.update(self.in_flight)
                self.open.update(self.in_flight)
                self.in_flight = {}
                batch += 1
        except Exception as exc:  # ActorschedError once the coordinator dies or the client is closed
            self.error = exc

    def _has_room(self) -> bool:
        if len(self.open) >= self.max_open:
            infos = self.client.query_many(self.open)
            self.open = {i.task_id for i in infos if i.state not in ("SUCCEEDED", "FAILED", "CANCELLED")}
        return len(self.open) < self.max_open

    def acked_now(self) -> dict[str, float]:
        with self.lock:
            return dict(self.acked)


def wait_for_load(client: Client, submitter: Submitter, want_acked: int, want_done: int) -> None:
    """Wait until ``submitter`` got ``want_acked`` tasks acknowledged and ``want_done`` of them succeeded."""

    def loaded() -> bool:
        if not submitter.is_alive():
            raise AssertionError(f"the submitter stopped before the kill: {submitter.error!r}")
        mine = submitter.acked_now()
        if len(mine) < want_acked:
            return False
        return sum(i.state == "SUCCEEDED" for i in client.query_many(mine)) >= want_done

    wait_until(loaded, 60, f"{want_acked} acknowledged and {want_done} finished tasks of {submitter.name}")


def wait_for_all_succeeded(client: Client, expected: dict[str, float], timeout_s: float) -> list[TaskInfo]:
    """Wait until every task in ``expected`` is final; they must all have SUCCEEDED with their value."""
    ids = list(expected)
    infos: list[TaskInfo] = []

    def all_final() -> bool:
        nonlocal infos
        infos = client.query_many(ids)
        return all(i.state in ("SUCCEEDED", "FAILED", "CANCELLED", "NOT_FOUND") for i in infos)

    try:
        wait_until(all_final, timeout_s, f"{len(ids)} acknowledged task(s) to finish", interval_s=0.2)
    except TimeoutError:
        stuck = [(i.task_id, i.state, i.attempt) for i in infos if i.state != "SUCCEEDED"]
        raise AssertionError(f"{len(stuck)} acknowledged task(s) not final: {stuck[:5]}") from None
    bad = [(i.task_id, i.state, i.error) for i in infos if i.state != "SUCCEEDED"]
    assert not bad, f"{len(bad)} acknowledged task(s) did not succeed: {bad[:5]}"
    wrong = [(i.task_id, i.value, expected[i.task_id]) for i in infos if i.value != expected[i.task_id]]
    assert not wrong, f"task value(s) differ from their argument: {wrong[:5]}"
    twice = [(i.task_id, i.history) for i in infos if successes(i) != 1]
    assert not twice, f"task(s) without exactly one committed success: {twice[:3]}"
    return infos


# --------------------------------------------------------------------------- kill -9 and restart


def test_acknowledged_tasks_survive_repeated_sigkill_and_restart_of_the_coordinator_and_succeed_once(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=2, slots=2)
    with cluster.client() as client:
        worker_pids = {w.worker_id: w.pid for w in cluster.wait_for_workers(client, 2)}
    acked: dict[str, float] = {}
    finished_before: dict[str, TaskInfo] = {}

    for cycle, seed in enumerate([101, 202, 303, 404, 505]):
        rng = random.Random(seed)
        with cluster.client(timeout_s=30) as client:
            # The workers were not restarted: they find the new coordinator on their own.
            workers = cluster.wait_for_workers(client, 2, timeout_s=60)
            assert {w.worker_id: w.pid for w in workers} == worker_pids

            # Results committed before the last kill are still there, unchanged.
            if finished_before:
                again = client.query_many(finished_before)
                changed = [(i.task_id, committed(i), committed(finished_before[i.task_id]))
                           for i in again if committed(i) != committed(finished_before[i.task_id])]
                assert not changed, f"finished task(s) changed across a restart: {changed[:3]}"

            submitter = Submitter(cluster.client_endpoint, f"c{cycle}", seed)
            submitter.start()
            try:
                wait_for_load(client, submitter, want_acked=rng.randint(40, 120), want_done=rng.randint(5, 25))
                for info in client.query_many([*acked, *submitter.acked_now()]):
                    if info.state == "SUCCEEDED":
                        finished_before[info.task_id] = info
                cluster.kill_coordinator(signal.SIGKILL)
            finally:
                submitter.client.close()  # its pending request fails at once instead of timing out
                submitter.join(30)
            assert not submitter.is_alive()
            assert isinstance(submitter.error, ActorschedError), repr(submitter.error)
            # Every reply it got was sent before the kill: all of these were acknowledged.
            acked.update(submitter.acked_now())
            in_flight = submitter.in_flight

        cluster.start_coordinator()
        with cluster.client(timeout_s=30) as client:
            if in_flight:
                # A batch is journaled whole or not at all.
                states = {i.state == "NOT_FOUND" for i in client.query_many(in_flight)}
                assert len(states) == 1, f"an unacknowledged batch was half journaled: {in_flight}"

    with cluster.client(timeout_s=30) as client:
        cluster.wait_for_workers(client, 2, timeout_s=60)
        infos = wait_for_all_succeeded(client, acked, timeout_s=120)
        assert len(infos) >= 5 * 40
        again = client.query_many(finished_before)
        changed = [i.task_id for i in again if committed(i) != committed(finished_before[i.task_id])]
        assert not changed, f"finished task(s) changed across restarts: {changed[:5]}"
        assert {w.worker_id: w.pid for w in client.workers()} == worker_pids
        assert client.stats()["queue"]["states"]["FAILED"] == 0


def test_finished_task_reads_the_same_after_a_coordinator_restart(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=1, slots=2)
    with cluster.client() as client:
        handles = client.submit_many([{"task_id": f"kept-{i}", "name": "actorsched.tasks:echo", "args": [f"v{i}"]}
                                      for i in range(10)])
        assert client.gather(handles, timeout=60) == [f"v{i}" for i in range(10)]
        before = client.query_many(h.task_id for h in handles)
    cluster.kill_coordinator(signal.SIGKILL)
    cluster.start_coordinator()
    with cluster.client() as client:
        after = client.query_many(h.task_id for h in handles)
    assert [committed(i) for i in after] == [committed(i) for i in before]
    lost = [(b.task_id, b.worker_id, a.worker_id) for a, b in zip(after, before) if a.worker_id != b.worker_id]
    assert not lost, f"worker_id of finished tasks changed across the restart (task, before, after): {lost[:3]}"
    assert after == before


def test_waiting_on_a_submit_handle_after_a_coordinator_restart_does_not_wait_out_the_client_timeout(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=1, slots=1)
    # A long client timeout: were the dead coordinator's watch trusted, the client would hear
    # nothing until it probed after 60 s, and result(timeout=20) would time out.
    with Client(cluster.client_endpoint, timeout_s=60) as client:
        cluster.wait_for_workers(client, 1)
        handle = client.submit(SLEEP, 0.2, task_id="watched-by-its-submit")
        cluster.kill_coordinator(signal.SIGKILL)
        cluster.start_coordinator()
        assert handle.result(timeout=20) == 0.2


def test_a_wait_under_way_when_the_coordinator_restarts_renews_its_watch_at_once(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=1, slots=1)
    outcome: dict[str, Any] = {}
    with Client(cluster.client_endpoint, timeout_s=60) as client:
        cluster.wait_for_workers(client, 1)
        handle = client.submit(SLEEP, 1.0, task_id="waited-on-across-a-restart")
        wait_until(lambda: handle.info().state == "RUNNING", 30, "the task to run")

        def wait() -> None:
            try:
                outcome["value"] = handle.result(timeout=25)
            except Exception as exc:  # reported to the test thread below
                outcome["error"] = exc
        waiter = threading.Thread(target=wait)
        waiter.start()
        try:
            # The waiter's watch dies with the coordinator.  Heard nothing for timeout_s
            # (60 s) it would renew it too late; a dropped connection renews it at once.
            cluster.kill_coordinator(signal.SIGKILL)
            cluster.start_coordinator()
        finally:
            waiter.join(40)
        assert outcome == {"value": 1.0}


# --------------------------------------------------------------------------- SIGSTOP of the coordinator


def test_coordinator_paused_past_twice_the_worker_timeout_convicts_no_healthy_worker(
        make_cluster: Callable[..., LocalCluster]) -> None:
    rng = random.Random(99)
    worker_timeout_s = 2.0
    cluster = make_cluster(workers=3, slots=2, coordinator_args=["--worker-timeout", str(worker_timeout_s)])
    assert cluster.coordinator is not None
    with cluster.client(timeout_s=30) as client:
        before = {w.worker_id: w.pid for w in cluster.wait_for_workers(client, 3)}
        workers_stats = client.stats()["workers"]
        specs = [{"task_id": f"pause-{i:03d}", "name": SLEEP, "args": [round(rng.uniform(0.02, 0.06), 4)]}
                 for i in range(200)]
        handles = client.submit_many(specs)
        wait_until(lambda: client.stats()["queue"]["states"]["SUCCEEDED"] >= 30, 60, "30 tasks to succeed")

        pause_s = 2.5 * worker_timeout_s
        cluster.kill_coordinator(signal.SIGSTOP)
        try:
            resume_at = time.monotonic() + pause_s
            # No request may be made while it is stopped; only the clock is watched.
            wait_until(lambda: time.monotonic() >= resume_at, pause_s + 5, f"{pause_s} s of coordinator pause",
                       interval_s=0.1)
        finally:
            os.kill(cluster.coordinator.pid, signal.SIGCONT)

        assert client.gather(handles, timeout=60) == [s["args"][0] for s in specs]
        assert {w.worker_id: w.pid for w in client.workers()} == before
        assert all(w.state == "ALIVE" for w in client.workers())
        after = client.stats()
        assert after["workers"]["removed"] == workers_stats["removed"], after["workers"]
        assert after["workers"]["registered"] == workers_stats["registered"], after["workers"]
        assert after["queue"]["requeued_lost"] == 0, after["queue"]
        lost = [i.task_id for i in client.query_many(s["task_id"] for s in specs)
                if any(a.outcome == "worker lost" for a in i.history)]
        assert not lost, f"task(s) were taken from a healthy worker: {lost[:5]}"

        # And the cluster keeps working after the pause.
        more = client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(30)])
        assert client.gather(more, timeout=60) == list(range(30))
        assert {w.worker_id: w.pid for w in client.workers()} == before


# --------------------------------------------------------------------------- damaged journal


def _garbage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = random.Random(5).randbytes(100)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(100)


def _truncate_half(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_garbage_header, _truncate, _truncate_half],
                         ids=["garbage-header", "truncated-to-100-bytes", "truncated-to-half"])
def test_coordinator_refuses_to_start_on_a_damaged_journal_and_says_which_file_and_what_to_do(
        make_cluster: Callable[..., LocalCluster], damage: Callable[[Path], None]) -> None:
    cluster = make_cluster(workers=0)
    with cluster.client() as client:
        client.submit_many([{"task_id": f"j-{i:03d}", "name": "actorsched.tasks:echo", "args": ["x" * 200]}
                            for i in range(200)])
    cluster.kill_coordinator(signal.SIGTERM)  # a clean stop folds the WAL into the main file
    assert cluster.state_dir is not None
    journal = Path(cluster.state_dir) / "journal.sqlite3"
    assert journal.stat().st_size > 4096
    damage(journal)
    damaged = journal.read_bytes()

    result = subprocess.run(
        [sys.executable, str(BIN / "coordinator"), "--state-dir", cluster.state_dir,
         "--bind", "tcp://127.0.0.1:0", "--worker-bind", "tcp://127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "coordinator ready" not in result.stdout
    message = result.stderr.strip()
    assert str(journal) in message, message
    assert "corrupt" in message or "truncated" in message, message
    assert "move it aside" in message and "backup" in message, message
    assert "Traceback" not in message, message
    assert journal.read_bytes() == damaged, "the coordinator changed the damaged journal; keep it for recovery"
