"""The real worker (``bin/worker`` as a subprocess) against a tiny in-test coordinator ROUTER."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeCoordinator

from actorsched.protocol import (
    VERSION,
    Assign,
    Assignment,
    AttemptRef,
    CancelTasks,
    Draining,
    Goodbye,
    Heartbeat,
    Refused,
    Register,
    Reregister,
    Results,
    Shutdown,
    Started,
    Welcome,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def coordinator() -> Iterator[FakeCoordinator]:
    fake = FakeCoordinator()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def start_worker(coordinator: FakeCoordinator, tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []
    log_path = tmp_path / "worker.log"

    def start(*extra: str) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "bin/worker", "--connect", coordinator.endpoint, "--slots", "2",
                 "--worker-id", "w1", *extra],
                cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        print(log_path.read_text() if log_path.exists() else "(no worker log)")


def welcome(coordinator: FakeCoordinator, epoch: int = 5, heartbeat_interval_s: float = 0.2) -> Register:
    register = coordinator.expect(Register)
    assert isinstance(register, Register)
    coordinator.send(Welcome(register.worker_id, epoch, heartbeat_interval_s))
    return register


def echo(task_id: str, value: object, attempt: int = 1, timeout_s: float | None = None) -> Assignment:
    return Assignment(task_id, "actorsched.tasks:echo", [value], {}, 5, attempt, timeout_s)


def test_worker_registers_runs_assigned_tasks_heartbeats_and_exits_on_shutdown(
        coordinator: FakeCoordinator, start_worker: object) -> None:
    process = start_worker()  # type: ignore[operator]
    register = welcome(coordinator)
    assert (register.worker_id, register.slots, register.running, register.tags) == ("w1", 2, [], [])
    assignments = [echo(f"t{i}", {"i": i}, attempt=i % 3 + 1) for i in range(20)]
    assignments.append(Assignment("bad", "os:system", ["true"], {}, 5, 1, None))
    coordinator.send(Assign(assignments))

    outcomes = coordinator.outcomes(21)
    for item in assignments[:-1]:
        outcome = outcomes[item.task_id]
        assert outcome.ok, outcome
        assert (outcome.value, outcome.epoch, outcome.attempt) == (item.args[0], 5, item.attempt)
    refused = outcomes["bad"].error
    assert refused is not None and refused.type == "TaskNotAllowed" and "allowed_modules" in refused.message
    # A task that finishes within STARTED_DELAY_S reports only its Results; any Started
    # that is sent names a real attempt, once, and comes before that task's Results.
    started_at = {ref.task_id: (i, ref) for i, m in enumerate(coordinator.seen) if isinstance(m, Started)
                  for ref in m.attempts}
    results_at = {o.task_id: i for i, m in enumerate(coordinator.seen) if isinstance(m, Results) for o in m.outcomes}
    expected = {a.task_id: AttemptRef(a.task_id, a.epoch, a.attempt) for a in assignments[:-1]}
    for task_id, (index, ref) in started_at.items():
        assert ref == expected[task_id] and index < results_at[task_id]

    heartbeat = coordinator.expect(Heartbeat)
    assert isinstance(heartbeat, Heartbeat) and heartbeat.running == []
    assert 0 <= heartbeat.cpu_percent <= 100 and 0 < heartbeat.memory_percent <= 100

    coordinator.router.send_multipart([coordinator.peer, VERSION, b"assign", b"\xc1garbage"])  # dropped, no crash
    coordinator.send(Shutdown("test over"))
    draining = coordinator.expect(Draining)
    assert isinstance(draining, Draining) and "test over" in draining.reason
    coordinator.expect(Goodbye)
    assert process.wait(10) == 0


def test_sigterm_drains_running_tasks_before_goodbye(coordinator: FakeCoordinator, start_worker: object) -> None:
    process = start_worker()  # type: ignore[operator]
    welcome(coordinator)
    coordinator.send(Assign([Assignment("slow", "actorsched.tasks:sleep", [0.5], {}, 5, 1, None)]))
    coordinator.expect(Started)
    process.send_signal(signal.SIGTERM)
    coordinator.expect(Draining)
    coordinator.send(Assign([echo("late", 1)]))  # ignored while draining
    outcomes = coordinator.outcomes(1)
    assert outcomes["slow"].ok and outcomes["slow"].value == 0.5
    coordinator.expect(Goodbye)
    assert process.wait(10) == 0
    assert not any(isinstance(m, Results) and any(o.task_id == "late" for o in m.outcomes)
                   for m in coordinator.seen)


def test_second_signal_kills_running_tasks_at_once(coordinator: FakeCoordinator, start_worker: object) -> None:
    process = start_worker()  # type: ignore[operator]
    welcome(coordinator)
    coordinator.send(Assign([Assignment("stuck", "actorsched.tasks:sleep", [60], {}, 5, 1, None)]))
    coordinator.expect(Started)
    process.send_signal(signal.SIGINT)
    coordinator.expect(Draining)
    process.send_signal(signal.SIGINT)
    coordinator.expect(Goodbye)
    assert process.wait(10) == 1


def test_timeout_cancel_and_reregister_report_held_tasks(coordinator: FakeCoordinator, start_worker: object) -> None:
    process = start_worker()  # type: ignore[operator]
    welcome(coordinator)
    coordinator.send(Assign([
        Assignment("timed", "actorsched.tasks:sleep", [60], {}, 5, 1, 0.3),
        Assignment("held", "actorsched.tasks:sleep", [60], {}, 5, 2, None),
    ]))
    outcomes = coordinator.outcomes(1)
    assert outcomes["timed"].error is not None and outcomes["timed"].error.type == "TimedOut"
    coordinator.send(Reregister("coordinator restarted"))
    register = coordinator.expect(Register)
    assert isinstance(register, Register) and register.running == [AttemptRef("held", 5, 2)]
    coordinator.send(Welcome("w1", 6, 0.2))
    # After re-registering, the Results of the last RESEND_WINDOW_S go again: a restarted coordinator may
    # never have read them.
    resent = coordinator.outcomes(1)
    assert list(resent) == ["timed"] and resent["timed"] == outcomes["timed"]
    coordinator.send(CancelTasks([AttemptRef("held", 5, 2)]))
    cancelled = coordinator.outcomes(1)["held"]
    assert cancelled.error is not None and cancelled.error.type == "Cancelled"
    coordinator.send(Shutdown("done"))
    coordinator.expect(Goodbye)
    assert process.wait(10) == 0


def test_refused_worker_exits_2(coordinator: FakeCoordinator, start_worker: object) -> None:
    process = start_worker()  # type: ignore[operator]
    coordinator.expect(Register)
    coordinator.send(Refused("unknown worker key"))
    assert process.wait(10) == 2


def test_register_is_retried_until_a_welcome_arrives(coordinator: FakeCoordinator, start_worker: object) -> None:
    process = start_worker()  # type: ignore[operator]
    coordinator.expect(Register)
    coordinator.expect(Register, timeout_s=5)  # no Welcome: sent again after ~2 s
    coordinator.send(Welcome("w1", 1, 0.2))
    coordinator.expect(Heartbeat)
    process.send_signal(signal.SIGTERM)
    coordinator.expect(Goodbye)
    assert process.wait(10) == 0


def test_a_bad_flag_value_is_one_line_on_stderr_and_exit_2() -> None:
    result = subprocess.run([sys.executable, "bin/worker", "--connect", "localhost:1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "tcp://HOST:PORT" in result.stderr and "--connect" in result.stderr
