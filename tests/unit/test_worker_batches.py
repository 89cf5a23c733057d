"""Batches of short jobs in the worker's child pool, its local priority queue and Release.

Real child processes (an :class:`Executor` driven like the worker's loop does) and, at
the end, a real ``bin/worker`` against the in-test coordinator of test_worker_process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from test_worker_executor import count, drive
from test_worker_process import FakeCoordinator, coordinator, start_worker, welcome  # noqa: F401  (fixtures)

from actorsched.protocol import (
    Assign,
    Assignment,
    AttemptRef,
    CancelTasks,
    Goodbye,
    Release,
    Released,
    Results,
    Shutdown,
    Started,
    TaskOutcome,
)
from actorsched.worker.executor import Executor, Job

TASKS = "actorsched.tasks"


@pytest.fixture
def pool() -> Iterator[Executor]:
    """A one-slot executor: every batch runs in the same child unless it dies."""
    executor = Executor(1)
    executor.start()
    try:
        yield executor
    finally:
        executor.stop()


def job(task_id: str, function: str, *args: object, short: bool = True, timeout_s: float = 0.0,
        priority: int = 0, attempt: int = 1) -> Job:
    return Job(task_id, 7, attempt, f"{TASKS}:{function}", list(args), {}, timeout_s, priority, short)


def error_type(outcome: TaskOutcome) -> str | None:
    return outcome.error.type if outcome.error is not None else None


# ----------------------------------------------------------------- executor


def test_short_untimed_jobs_queued_together_run_as_one_batch_in_one_child(pool: Executor) -> None:
    jobs = [job("p0", "pid"), job("e1", "echo", 1), job("p2", "pid"), job("p3", "pid"), job("e4", "echo", "x")]
    for item in jobs:
        pool.submit(item)
    assert pool.dispatch(time.monotonic()) == jobs  # all at once, in queue order
    assert pool.dispatch(time.monotonic()) == []
    outcomes = {o.task_id: o for o in drive(pool, count(5))}
    assert all(o.ok for o in outcomes.values()), outcomes
    pids = {outcomes[t].value for t in ("p0", "p2", "p3")}
    assert len(pids) == 1 and pids != {os.getpid()}
    assert (outcomes["e1"].value, outcomes["e4"].value) == (1, "x")
    assert pool.children_replaced == 0 and pool.is_empty()


def test_a_timed_or_long_job_is_never_batched(pool: Executor) -> None:
    batches: list[list[str]] = []
    for item in (job("timed", "echo", 0, timeout_s=5), job("s1", "echo", 1), job("s2", "echo", 2)):
        pool.submit(item)
    drive(pool, count(3), batches=batches)
    for item in (job("long", "echo", 0, short=False), job("s3", "echo", 3), job("s4", "echo", 4)):
        pool.submit(item)
    drive(pool, count(3), batches=batches)
    # a short job's batch stops at the first job that may not ride along
    for item in (job("s5", "echo", 5), job("long2", "echo", 0, short=False),
                 job("timed2", "echo", 0, timeout_s=5), job("s6", "echo", 6)):
        pool.submit(item)
    drive(pool, count(4), batches=batches)
    assert batches == [["timed"], ["s1", "s2"], ["long"], ["s3", "s4"], ["s5"], ["long2"], ["timed2"], ["s6"]]


@pytest.mark.parametrize("short", [False, True], ids=["one-by-one", "batched"])
def test_the_local_queue_runs_the_best_priority_first_and_fifo_within_a_priority(pool: Executor,
                                                                                  short: bool) -> None:
    pool.submit(job("blocker", "echo", 0, short=False))
    assert [j.task_id for j in pool.dispatch(time.monotonic())] == ["blocker"]  # the only child is busy
    for task_id, priority in (("a5", 5), ("b1", 1), ("c5", 5), ("d0", 0), ("e1", 1), ("f0", 0), ("g-2", -2)):
        pool.submit(job(task_id, "echo", task_id, short=short, priority=priority))
    outcomes = drive(pool, count(8))
    assert [o.task_id for o in outcomes] == ["blocker", "g-2", "d0", "f0", "b1", "e1", "a5", "c5"]
    assert all(o.ok for o in outcomes)


@pytest.mark.parametrize("how", ["crash", "sigkill"])
def test_a_child_killed_mid_batch_fails_only_the_running_job_and_the_rest_run_in_a_fresh_child(
        pool: Executor, how: str) -> None:
    victim = job("victim", "crash", 99) if how == "crash" else job("victim", "sleep", 30)
    batch = [job("p0", "pid"), victim, job("p2", "pid"), job("p3", "pid")]
    for item in batch:
        pool.submit(item)
    assert pool.dispatch(time.monotonic()) == batch
    (first,) = drive(pool, count(1))
    assert first.task_id == "p0" and first.ok
    if how == "sigkill":
        os.kill(first.value, signal.SIGKILL)  # p0 reported its child's pid: the one now running the victim
    outcomes = drive(pool, count(3))
    assert [o.task_id for o in outcomes] == ["victim", "p2", "p3"]  # the rest keep their old order
    assert error_type(outcomes[0]) == "ChildProcessDied"
    assert outcomes[0].error is not None
    assert ("exited with code 99" if how == "crash" else "SIGKILL") in outcomes[0].error.message
    assert outcomes[1].ok and outcomes[2].ok
    assert outcomes[1].value == outcomes[2].value != first.value  # one fresh child, one batch
    assert pool.children_replaced == 1 and pool.is_empty()


def test_release_gives_back_only_queued_unstarted_attempts_of_the_exact_attempt(pool: Executor) -> None:
    running = [job("r1", "echo", 1), job("r2", "echo", 2)]  # r2 waits in the child's batch: started
    for item in running:
        pool.submit(item)
    assert pool.dispatch(time.monotonic()) == running
    for item in (job("q1", "echo", 3), job("q2", "echo", 4, attempt=2), job("q3", "echo", 5)):
        pool.submit(item)
    refs = [AttemptRef("r1", 7, 1), AttemptRef("r2", 7, 1), AttemptRef("q1", 7, 1),
            AttemptRef("q2", 7, 1), AttemptRef("q2", 6, 2), AttemptRef("nobody", 7, 1)]  # q2: other attempts
    assert pool.release(refs) == [AttemptRef("q1", 7, 1)]
    assert pool.release(refs) == []  # already given back
    assert not pool.holds("q1") and pool.held_attempt("q2") == AttemptRef("q2", 7, 2)
    outcomes = drive(pool, lambda _: pool.is_empty())
    assert sorted(o.task_id for o in outcomes) == ["q2", "q3", "r1", "r2"]
    assert all(o.ok for o in outcomes)


@pytest.mark.parametrize("which", ["running", "waiting"])
def test_cancel_inside_a_running_batch_reports_cancelled_and_the_rest_of_the_batch_completes(
        pool: Executor, which: str) -> None:
    target = job("target", "sleep", 30) if which == "running" else job("target", "echo", "never")
    batch = [job("p0", "pid"), target, job("p2", "pid"), job("p3", "pid")]
    for item in batch:
        pool.submit(item)
    assert pool.dispatch(time.monotonic()) == batch
    before: list[TaskOutcome] = drive(pool, count(1)) if which == "running" else []  # then target is running
    cancelled = pool.cancel(target.ref, time.monotonic())
    assert cancelled is not None and error_type(cancelled) == "Cancelled"
    assert (cancelled.task_id, cancelled.epoch, cancelled.attempt) == ("target", 7, 1)
    assert pool.held_attempt("target") is None
    outcomes = before + drive(pool, lambda _: pool.is_empty())
    assert sorted(o.task_id for o in outcomes) == ["p0", "p2", "p3"]  # each once; target only as Cancelled
    assert all(o.ok for o in outcomes), outcomes
    assert pool.children_replaced == 1


# ----------------------------------------------------------------- a real worker process


def long_sleep(task_id: str) -> Assignment:
    return Assignment(task_id, f"{TASKS}:sleep", [30], {}, 5, 1, None, 0, False)


def test_worker_registers_its_prefetch_and_release_gives_back_only_the_queued_tasks(
        coordinator: FakeCoordinator, start_worker: object) -> None:  # noqa: F811
    process = start_worker("--slots", "1")  # type: ignore[operator]
    register = welcome(coordinator)
    assert (register.slots, register.prefetch) == (1, 16)
    coordinator.send(Assign([long_sleep("L0"), long_sleep("L1"), long_sleep("L2")]))
    started = coordinator.expect(Started)
    assert isinstance(started, Started) and started.attempts == [AttemptRef("L0", 5, 1)]
    refs = [AttemptRef(t, 5, 1) for t in ("L0", "L1", "L2")]
    coordinator.send(Release(refs))
    released = coordinator.expect(Released)
    assert isinstance(released, Released) and released.attempts == refs[1:]  # not the running one
    coordinator.send(CancelTasks([refs[0]]))
    outcome = coordinator.outcomes(1)["L0"]
    assert outcome.error is not None and outcome.error.type == "Cancelled"
    coordinator.send(Shutdown("test over"))  # nothing is held any more: drains at once
    coordinator.expect(Goodbye)
    assert process.wait(10) == 0
    assert not any(isinstance(m, Results) and any(o.task_id in ("L1", "L2") for o in m.outcomes)
                   for m in coordinator.seen)


def test_worker_with_one_slot_answers_every_short_task_of_an_assign(
        coordinator: FakeCoordinator, start_worker: object) -> None:  # noqa: F811
    process = start_worker("--slots", "1")  # type: ignore[operator]
    welcome(coordinator)
    assignments = [Assignment(f"s{i}", f"{TASKS}:echo", [{"i": i}], {}, 5, 1, None, 0, True) for i in range(12)]
    coordinator.send(Assign(assignments))
    outcomes = coordinator.outcomes(len(assignments))
    assert sorted(outcomes) == sorted(a.task_id for a in assignments)
    for item in assignments:
        outcome = outcomes[item.task_id]
        assert outcome.ok and (outcome.value, outcome.epoch, outcome.attempt) == (item.args[0], 5, 1), outcome
    coordinator.send(Shutdown("test over"))
    coordinator.expect(Goodbye)
    assert process.wait(10) == 0
