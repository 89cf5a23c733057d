"""TaskQueueCore driven directly: events and a fake ``now`` in, commands out.

Every test runs against a harness that checks the core's invariants after every call
and at the end: each task in exactly one state, ``counts`` and ``open_count`` matching
the records, one owner per assigned task, and attempts that never decrease.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from actorsched.config import TasksConfig
from actorsched.core.commands import Command, MakeReady, ReadyTask, SendToClient, SendToWorker, WithdrawTasks
from actorsched.core.queue import TaskQueueCore, TaskRecord
from actorsched.core.states import FINAL_STATES, NOT_FOUND, TaskState
from actorsched.protocol import (
    AttemptRef,
    CancelReply,
    CancelTasks,
    ErrorInfo,
    ErrorReply,
    QueryReply,
    SubmitReply,
    TaskOutcome,
    TasksDone,
    TaskSpec,
)

S = TaskState
EPOCH = 3
CLIENT = b"client-1"
OTHER_CLIENT = b"client-2"
W1 = b"worker-key-1"
W2 = b"worker-key-2"
CONFIG = TasksConfig(max_attempts=3, retry_backoff_base_s=0.1, retry_backoff_cap_s=5.0,
                     max_pending_tasks=100, max_worker_deaths=3)


def spec(task_id: str, **kwargs: Any) -> TaskSpec:
    return TaskSpec(task_id, "actorsched.tasks:add", **kwargs)


class QueueHarness:
    """Wraps a TaskQueueCore: every call is forwarded, then the invariants are checked."""

    def __init__(self, config: TasksConfig = CONFIG, epoch: int = EPOCH) -> None:
        self.core = TaskQueueCore(config, epoch, random.Random(7))
        self.ready: dict[str, ReadyTask] = {}
        self.attempts_seen: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.core, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            for command in result or ():
                if isinstance(command, MakeReady):
                    self.ready.update((t.task_id, t) for t in command.tasks)
            self.check()
            return result
        return call

    def check(self) -> None:
        core = self.core
        states = Counter(task.state.value for task in core.tasks.values())
        assert all(isinstance(task.state, TaskState) for task in core.tasks.values())
        assert {s: states.get(s.value, 0) for s in TaskState} == core.counts
        assert core.open_count == sum(1 for t in core.tasks.values() if t.state not in FINAL_STATES)
        for task_id, task in core.tasks.items():
            assert task.attempt >= self.attempts_seen.get(task_id, 0), f"attempt of {task_id} went down"
            self.attempts_seen[task_id] = task.attempt
            if task.state in (S.ASSIGNED, S.RUNNING):
                assert task.worker, f"{task_id} is {task.state.value} without an owner"
                held = core.held.get(task.worker)
                assert held is None or task_id in held, f"{task_id} runs on a worker that does not list it"
        for worker, held in core.held.items():  # one owner: each held task names this worker
            for task_id in held:
                task = core.tasks[task_id]
                assert task.state in (S.ASSIGNED, S.RUNNING) and task.worker == worker, (task_id, task.state)

    # ------------------------------------------------------------- shortcuts

    def state(self, task_id: str) -> TaskState:
        return self.core.tasks[task_id].state

    def task(self, task_id: str) -> TaskRecord:
        return self.core.tasks[task_id]

    def add(self, *specs: TaskSpec, now: float = 0.0) -> list[Command]:
        out: list[Command] = self.submit(CLIENT, 1, list(specs), now)
        assert any(isinstance(c, SendToClient) and isinstance(c.message, SubmitReply) for c in out), out
        return out

    def assign(self, task_id: str, worker: bytes = W1, now: float = 0.0) -> list[Command]:
        self.core.worker_admitted(worker)
        result: list[Command] = self.tasks_assigned(worker, worker.decode(), [self.ready[task_id]], now)
        return result

    def error(self, task_id: str) -> ErrorInfo:
        error = self.task(task_id).error
        assert error is not None, f"{task_id} has no error"
        return error

    def ref(self, task_id: str) -> AttemptRef:
        task = self.task(task_id)
        return AttemptRef(task_id, task.epoch, task.attempt)

    def run(self, task_id: str, worker: bytes = W1, now: float = 0.0) -> None:
        """Assign and start the task's current attempt on ``worker``."""
        self.assign(task_id, worker, now)
        self.tasks_started(worker, [self.ref(task_id)])
        assert self.state(task_id) is S.RUNNING

    def outcome(self, task_id: str, ok: bool = True, value: Any = None, error: ErrorInfo | None = None,
                attempt: int | None = None, epoch: int | None = None) -> TaskOutcome:
        task = self.task(task_id)
        return TaskOutcome(task_id, task.epoch if epoch is None else epoch,
                           task.attempt if attempt is None else attempt, ok, value, error, 0.1)

    def succeed(self, task_id: str, value: Any = "ok", worker: bytes = W1, now: float = 0.0) -> list[Command]:
        result: list[Command] = self.outcomes_reported(worker, [self.outcome(task_id, True, value)], now)
        return result

    def fail(self, task_id: str, error_type: str = "ValueError", worker: bytes = W1,
             now: float = 0.0) -> list[Command]:
        error = ErrorInfo(error_type, f"{error_type} happened", "tb")
        result: list[Command] = self.outcomes_reported(worker, [self.outcome(task_id, False, None, error)], now)
        return result


@pytest.fixture
def q() -> Iterator[QueueHarness]:
    harness = QueueHarness()
    yield harness
    harness.check()


def replies(commands: list[Command], kind: type) -> list[Any]:
    return [c.message for c in commands if isinstance(c, SendToClient) and isinstance(c.message, kind)]


def to_worker(commands: list[Command], kind: type) -> list[SendToWorker]:
    return [c for c in commands if isinstance(c, SendToWorker) and isinstance(c.message, kind)]


def made_ready(commands: list[Command]) -> list[ReadyTask]:
    return [t for c in commands if isinstance(c, MakeReady) for t in c.tasks]


def withdrawn(commands: list[Command]) -> list[str]:
    return [t for c in commands if isinstance(c, WithdrawTasks) for t in c.task_ids]


# ----------------------------------------------------------------- submit


def test_submit_is_acknowledged_and_makes_the_task_ready_with_attempt_one(q: QueueHarness) -> None:
    out = q.submit(CLIENT, 9, [spec("a", args=[1, 2], priority=4, tags=["gpu"], timeout_s=2.0)], 10.0)
    assert replies(out, SubmitReply) == [SubmitReply(9, ["a"])]
    assert [c.client for c in out if isinstance(c, SendToClient)] == [CLIENT]
    (ready,) = made_ready(out)
    assert (ready.task_id, ready.attempt, ready.epoch, ready.priority) == ("a", 1, EPOCH, 4)
    assert (ready.args, ready.tags, ready.timeout_s, ready.ready_at) == ([1, 2], ("gpu",), 2.0, 10.0)
    assert q.state("a") is S.QUEUED
    assert "a" in q.core.dirty


def test_a_task_without_a_timeout_gets_the_configured_default() -> None:
    core = TaskQueueCore(TasksConfig(default_timeout_s=30.0), EPOCH)
    (ready,) = made_ready(core.submit(CLIENT, 1, [spec("a")], 0.0))
    assert ready.timeout_s == 30.0
    core = TaskQueueCore(TasksConfig(default_timeout_s=0.0), EPOCH)
    (ready,) = made_ready(core.submit(CLIENT, 1, [spec("a")], 0.0))
    assert ready.timeout_s is None


def test_tasks_keep_their_priority_and_submit_order(q: QueueHarness) -> None:
    out = q.submit(CLIENT, 1, [spec("low", priority=5), spec("high", priority=-5), spec("mid")], 0.0)
    ready = made_ready(out)
    assert [(t.task_id, t.priority) for t in ready] == [("low", 5), ("high", -5), ("mid", 0)]
    assert [t.seq for t in ready] == sorted(t.seq for t in ready)


def test_a_task_waits_for_its_dependencies_and_is_queued_when_they_all_succeed(q: QueueHarness) -> None:
    out = q.add(spec("p1"), spec("p2"), spec("child", deps=["p1", "p2"]))
    assert {t.task_id for t in made_ready(out)} == {"p1", "p2"}
    assert q.state("child") is S.WAITING
    q.run("p1")
    assert made_ready(q.succeed("p1")) == []
    assert q.state("child") is S.WAITING
    q.run("p2")
    (ready,) = made_ready(q.succeed("p2"))
    assert (ready.task_id, ready.attempt) == ("child", 1)
    assert q.state("child") is S.QUEUED


def test_a_dependency_on_an_already_succeeded_task_is_queued_at_once(q: QueueHarness) -> None:
    q.add(spec("p"))
    q.run("p")
    q.succeed("p")
    out = q.submit(CLIENT, 2, [spec("child", deps=["p"])], 1.0)
    assert [t.task_id for t in made_ready(out)] == ["child"]


def test_a_dependent_listed_before_its_dependency_in_one_batch_is_accepted(q: QueueHarness) -> None:
    out = q.submit(CLIENT, 1, [spec("child", deps=["parent"]), spec("parent")], 0.0)
    assert replies(out, SubmitReply) == [SubmitReply(1, ["child", "parent"])]
    assert [t.task_id for t in made_ready(out)] == ["parent"]
    assert q.state("child") is S.WAITING


@pytest.mark.parametrize(("specs", "code", "words"), [
    ([], "bad-request", ["at least one"]),
    ([spec("a"), TaskSpec("b", "no_colon")], "bad-request", ["'b'", "no_colon"]),
    ([TaskSpec("b", ":f")], "bad-request", ["':f'"]),
    ([TaskSpec("b", "m:")], "bad-request", ["'m:'"]),
    ([TaskSpec("", "m:f")], "bad-request", ["task_id"]),
    ([spec("a"), spec("b", priority=1_000_001)], "bad-request", ["'b'", "priority", "1000001"]),
    ([spec("b", priority=-1_000_001)], "bad-request", ["priority", "-1000001"]),
    ([spec("b", timeout_s=-1.0)], "bad-request", ["timeout_s", "-1.0"]),
    ([spec("b", max_attempts=0)], "bad-request", ["max_attempts", "0"]),
    ([spec("a"), spec("b", deps=["b"])], "bad-request", ["'b'", "itself"]),
    ([spec("a"), spec("b", deps=["ghost"])], "bad-request", ["'b'", "'ghost'"]),
    ([spec("x", deps=["y"]), spec("y", deps=["z"]), spec("z", deps=["x"])], "bad-request",
     ["cycle", "x", "y", "z"]),
    ([spec("a"), spec("a", priority=2)], "conflict", ["'a'", "twice"]),
])
def test_a_bad_batch_is_rejected_whole_and_nothing_is_added(
    q: QueueHarness, specs: list[TaskSpec], code: str, words: list[str],
) -> None:
    out = q.submit(CLIENT, 5, specs, 0.0)
    (reply,) = replies(out, ErrorReply)
    assert (reply.request_id, reply.code) == (5, code)
    for word in words:
        assert word in reply.message
    assert q.core.tasks == {} and made_ready(out) == [] and replies(out, SubmitReply) == []
    assert q.core.counters["rejected_batches"] == 1


def test_a_cycle_message_names_the_path_of_ids(q: QueueHarness) -> None:
    (reply,) = replies(q.submit(CLIENT, 1, [spec("x", deps=["y"]), spec("y", deps=["x"])], 0.0), ErrorReply)
    assert "x -> y -> x" in reply.message or "y -> x -> y" in reply.message


def test_a_batch_that_would_overflow_max_pending_tasks_is_refused_whole() -> None:
    q = QueueHarness(TasksConfig(max_pending_tasks=3))
    q.add(spec("a"), spec("b"))
    out = q.submit(CLIENT, 2, [spec("c"), spec("d")], 0.0)
    (reply,) = replies(out, ErrorReply)
    assert reply.code == "queue-full" and "max_pending_tasks=3" in reply.message
    assert set(q.core.tasks) == {"a", "b"}
    q.add(spec("c"))  # exactly at the limit is fine
    q.check()


def test_finished_tasks_do_not_count_against_max_pending_tasks() -> None:
    q = QueueHarness(TasksConfig(max_pending_tasks=1))
    q.add(spec("a"))
    q.run("a")
    q.succeed("a")
    q.add(spec("b"))
    q.check()


def test_resubmitting_an_id_with_different_content_is_a_conflict(q: QueueHarness) -> None:
    q.add(spec("a", args=[1]))
    out = q.submit(CLIENT, 2, [spec("b"), spec("a", args=[2])], 1.0)
    (reply,) = replies(out, ErrorReply)
    assert reply.code == "conflict" and "'a'" in reply.message
    assert set(q.core.tasks) == {"a"} and q.task("a").spec.args == [1]


def test_resubmitting_an_identical_task_is_idempotent(q: QueueHarness) -> None:
    q.add(spec("a", args=[1]))
    q.run("a")
    out = q.submit(CLIENT, 2, [spec("a", args=[1]), spec("b")], 1.0)
    assert replies(out, SubmitReply) == [SubmitReply(2, ["a", "b"])]
    assert [t.task_id for t in made_ready(out)] == ["b"]
    assert q.state("a") is S.RUNNING and q.task("a").attempt == 1
    assert q.core.counters["submitted"] == 2


# ----------------------------------------------------------------- running


def test_placement_and_start_move_the_task_to_assigned_then_running(q: QueueHarness) -> None:
    q.add(spec("a"))
    assert q.assign("a", W1) == []
    assert q.state("a") is S.ASSIGNED and q.task("a").worker == W1
    q.tasks_started(W1, [q.ref("a")])
    assert q.state("a") is S.RUNNING


def test_a_start_report_from_another_worker_or_attempt_is_ignored(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.assign("a", W1)
    q.tasks_started(W2, [q.ref("a")])
    q.tasks_started(W1, [AttemptRef("a", EPOCH, 2)])
    q.tasks_started(W1, [AttemptRef("a", EPOCH - 1, 1)])
    assert q.state("a") is S.ASSIGNED


def test_a_placement_of_a_task_cancelled_in_flight_is_called_back(q: QueueHarness) -> None:
    q.add(spec("a"))
    ready = q.ready["a"]
    q.cancel(CLIENT, 2, ["a"], False, 1.0)
    out = q.tasks_assigned(W1, "w1", [ready], 1.0)
    assert to_worker(out, CancelTasks) == [SendToWorker(W1, CancelTasks([AttemptRef("a", EPOCH, 1)]))]
    assert q.state("a") is S.CANCELLED


def test_a_successful_outcome_commits_the_value_and_tells_watchers_once(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    assert q.watch(CLIENT, 11, ["a"]) == []
    assert q.watch(OTHER_CLIENT, 12, ["a"]) == []
    out = q.succeed("a", {"sum": 3})
    assert q.state("a") is S.SUCCEEDED and q.task("a").value == {"sum": 3}
    done = [(c.client, c.message) for c in out if isinstance(c, SendToClient) and isinstance(c.message, TasksDone)]
    assert sorted(client for client, _ in done) == [CLIENT, OTHER_CLIENT]
    for _, message in done:
        (info,) = message.tasks
        assert (info.task_id, info.state, info.value) == ("a", "SUCCEEDED", {"sum": 3})
    # A duplicate outcome is stale and tells nobody again.
    again = q.outcomes_reported(W1, [q.outcome("a", True, "other")], 2.0)
    assert replies(again, TasksDone) == []
    assert q.task("a").value == {"sum": 3}


def test_watching_a_finished_or_unknown_task_answers_at_once(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    q.succeed("a")
    (done,) = replies(q.watch(CLIENT, 3, ["a", "ghost", "a"]), TasksDone)
    assert [(i.task_id, i.state) for i in done.tasks] == [("a", "SUCCEEDED"), ("ghost", NOT_FOUND)]


def test_a_submit_that_watches_reports_its_tasks_under_its_own_request_id(q: QueueHarness) -> None:
    out = q.submit(CLIENT, 21, [spec("a"), spec("b")], 0.0, True)
    assert [c.message for c in out if isinstance(c, SendToClient)] == [SubmitReply(21, ["a", "b"])]
    q.run("a")
    (done,) = replies(q.succeed("a", 5), TasksDone)
    assert done.request_id == 21 and [(i.task_id, i.value) for i in done.tasks] == [("a", 5)]
    # Resubmitting a finished task with watch answers at once, after the acknowledgement.
    again = [c.message for c in q.submit(CLIENT, 22, [spec("a")], 1.0, True) if isinstance(c, SendToClient)]
    assert [type(m) for m in again] == [SubmitReply, TasksDone]
    assert again[1].request_id == 22 and again[1].tasks[0].state == "SUCCEEDED"


def test_a_rejected_submit_watches_nothing(q: QueueHarness) -> None:
    out = q.submit(CLIENT, 23, [spec("a", deps=["ghost"])], 0.0, True)
    assert [type(c.message) for c in out if isinstance(c, SendToClient)] == [ErrorReply]
    assert q.core._watchers == {}


def test_an_unwatched_request_gets_no_tasks_done(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.watch(CLIENT, 3, ["a"])
    q.unwatch(CLIENT, 3)
    q.run("a")
    assert replies(q.succeed("a"), TasksDone) == []


@pytest.mark.parametrize("stale", ["attempt", "epoch", "worker"])
def test_a_stale_outcome_is_counted_and_not_committed(q: QueueHarness, stale: str) -> None:
    q.add(spec("a"))
    q.run("a")
    outcome = q.outcome("a", True, "stale-value", attempt=2 if stale == "attempt" else None,
                        epoch=EPOCH - 1 if stale == "epoch" else None)
    out = q.outcomes_reported(W2 if stale == "worker" else W1, [outcome], 1.0)
    assert out == []
    assert q.state("a") is S.RUNNING and q.task("a").value is None
    assert q.core.counters["stale_outcomes"] == 1
    q.succeed("a", "real-value")
    assert q.task("a").value == "real-value"


def test_an_outcome_of_an_earlier_attempt_is_stale_after_a_requeue(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a", W1)
    old = q.outcome("a", True, "late")
    q.worker_lost(W1, "w1", ["a"], "silent", 1.0)
    q.run("a", W2)
    q.outcomes_reported(W1, [old], 2.0)
    assert q.state("a") is S.RUNNING and q.core.counters["stale_outcomes"] == 1


def test_at_most_one_result_is_committed_per_task(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    first = q.outcome("a", True, "first")
    failure = q.outcome("a", False, None, ErrorInfo("ValueError", "late failure"))
    q.outcomes_reported(W1, [first, failure, first], 1.0)
    assert q.state("a") is S.SUCCEEDED and q.task("a").value == "first" and q.task("a").error is None
    # the committed attempt reported again (as a worker re-sends after a reconnection) is counted apart
    assert q.core.counters["repeated_outcomes"] == 2 and q.core.counters["stale_outcomes"] == 0
    assert [h.outcome for h in q.task("a").history] == ["succeeded"]
    q.outcomes_reported(W1, [q.outcome("a", True, "other epoch", epoch=EPOCH - 1)], 2.0)
    assert q.core.counters["stale_outcomes"] == 1 and q.core.counters["repeated_outcomes"] == 2


def test_an_outcome_for_an_unknown_task_is_stale(q: QueueHarness) -> None:
    q.outcomes_reported(W1, [TaskOutcome("ghost", EPOCH, 1, True, 1, None, 0.1)], 0.0)
    assert q.core.counters["stale_outcomes"] == 1


# ----------------------------------------------------------------- failure and retry


def test_a_failure_with_attempts_left_retries_after_the_backoff(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    out = q.fail("a", now=10.0)
    assert q.state("a") is S.RETRYING and made_ready(out) == []
    assert q.error("a").type == "ValueError"
    retry_at = q.task("a").retry_at
    assert 10.0 + 0.05 <= retry_at <= 10.0 + 0.1
    assert q.tick(10.0 + 0.049) == []
    assert q.state("a") is S.RETRYING
    (ready,) = made_ready(q.tick(retry_at))
    assert (ready.task_id, ready.attempt, ready.epoch) == ("a", 2, EPOCH)
    assert q.state("a") is S.QUEUED and q.core.counters["retries"] == 1
    assert [(h.attempt, h.outcome) for h in q.task("a").history] == [(1, "failed")]


def test_a_failure_on_the_last_attempt_fails_the_task_with_its_error(q: QueueHarness) -> None:
    q.add(spec("a", max_attempts=2))
    q.watch(CLIENT, 4, ["a"])
    q.run("a")
    q.fail("a", now=1.0)
    q.tick(100.0)
    q.run("a")
    out = q.fail("a", "KeyError", now=101.0)
    assert q.state("a") is S.FAILED
    assert q.task("a").error == ErrorInfo("KeyError", "KeyError happened", "tb")
    (done,) = replies(out, TasksDone)
    assert done.tasks[0].state == "FAILED" and done.tasks[0].error.type == "KeyError"
    assert [h.attempt for h in done.tasks[0].history] == [1, 2]


def test_max_attempts_from_the_config_applies_when_the_task_sets_none() -> None:
    q = QueueHarness(TasksConfig(max_attempts=1))
    q.add(spec("a"))
    q.run("a")
    q.fail("a")
    assert q.state("a") is S.FAILED


def test_retry_on_limits_retries_to_the_listed_error_types(q: QueueHarness) -> None:
    q.add(spec("a", retry_on=["IOError"]), spec("b", retry_on=["IOError"]), spec("c", retry_on=["IOError"]))
    for task_id in "abc":
        q.run(task_id)
    q.fail("a", "ValueError")
    q.fail("b", "IOError")
    q.fail("c", "builtins.IOError")
    assert (q.state("a"), q.state("b"), q.state("c")) == (S.FAILED, S.RETRYING, S.RETRYING)


def test_a_timeout_is_retried_even_when_retry_on_does_not_list_it(q: QueueHarness) -> None:
    q.add(spec("a", retry_on=["IOError"]))
    q.run("a")
    q.fail("a", "TimedOut")
    assert q.state("a") is S.RETRYING


@pytest.mark.parametrize("error_type", ["TaskNotAllowed", "TaskNotFound", "ResultNotSerializable"])
def test_a_non_retryable_error_fails_the_task_at_once(q: QueueHarness, error_type: str) -> None:
    q.add(spec("a", max_attempts=5))
    q.run("a")
    q.fail("a", error_type)
    assert q.state("a") is S.FAILED and q.error("a").type == error_type
    assert q.tick(1000.0) == []


def test_a_failure_without_error_details_still_fails_cleanly() -> None:
    q = QueueHarness(TasksConfig(max_attempts=1))
    q.add(spec("a"))
    q.run("a")
    q.outcomes_reported(W1, [q.outcome("a", False, None, None)], 0.0)
    assert q.state("a") is S.FAILED and q.error("a").type == "UnknownError"


def test_a_lost_worker_requeues_its_tasks_at_once_with_the_next_attempt(q: QueueHarness) -> None:
    q.add(spec("a"), spec("b"))
    q.run("a", W1)
    q.assign("b", W1)
    out = q.worker_lost(W1, "w1", ["a", "b"], "silent for 16 s", 5.0)
    ready = {t.task_id: t for t in made_ready(out)}
    assert set(ready) == {"a", "b"}
    assert ready["a"].attempt == 2 and ready["b"].attempt == 2 and ready["a"].ready_at == 5.0
    assert q.state("a") is S.QUEUED and q.task("a").worker == b""
    assert q.task("a").history[-1].outcome == "worker lost"
    assert "silent for 16 s" in (q.task("a").history[-1].error or ErrorInfo("", "")).message
    assert q.core.counters["requeued_lost"] == 2


def test_a_lost_report_about_another_worker_or_a_finished_task_is_ignored(q: QueueHarness) -> None:
    q.add(spec("a"), spec("b"))
    q.run("a", W1)
    q.run("b", W1)
    q.succeed("b")
    out = q.worker_lost(W2, "w2", ["a", "b", "ghost"], "gone", 1.0)
    assert out == [] and q.state("a") is S.RUNNING and q.state("b") is S.SUCCEEDED


def test_a_task_that_keeps_killing_its_workers_is_quarantined() -> None:
    q = QueueHarness(TasksConfig(max_attempts=10, max_worker_deaths=3))
    q.add(spec("a"))
    q.watch(CLIENT, 1, ["a"])
    for death in range(1, 3):
        q.run("a", W1)
        q.worker_lost(W1, "w1", ["a"], f"death {death}", float(death))
        assert q.state("a") is S.QUEUED and q.task("a").attempt == death + 1
    q.run("a", W1)
    out = q.worker_lost(W1, "w1", ["a"], "death 3", 3.0)
    assert q.state("a") is S.FAILED
    assert q.error("a").type == "KilledWorker" and "3" in q.error("a").message
    assert made_ready(out) == []
    (done,) = replies(out, TasksDone)
    assert done.tasks[0].error.type == "KilledWorker"


def test_a_child_process_death_counts_as_a_worker_death() -> None:
    q = QueueHarness(TasksConfig(max_attempts=10, max_worker_deaths=2))
    q.add(spec("a", retry_on=["OnlyThis"]))
    q.run("a")
    since = q.task("a").since
    out = q.fail("a", "ChildProcessDied", now=5.0)
    # retried despite retry_on, at once (a death is no error of the task: no backoff), in its old place
    assert q.state("a") is S.QUEUED and q.task("a").deaths == 1
    (again,) = made_ready(out)
    assert again.since == since and again.attempt == 2
    q.run("a", W2)
    q.worker_lost(W2, "w2", ["a"], "gone", 101.0)
    assert q.state("a") is S.FAILED and q.error("a").type == "KilledWorker"


# ----------------------------------------------------------------- cancel


def test_cancelling_a_queued_task_cancels_it_and_withdraws_it_from_placement(q: QueueHarness) -> None:
    q.add(spec("a"), spec("b"))
    out = q.cancel(CLIENT, 7, ["a"], False, 1.0)
    assert replies(out, CancelReply) == [CancelReply(7, ["a"])]
    assert withdrawn(out) == ["a"]
    assert q.state("a") is S.CANCELLED and q.state("b") is S.QUEUED
    assert q.error("a").type == "Cancelled"


def test_cancelling_a_retrying_or_waiting_task_cancels_it_at_once(q: QueueHarness) -> None:
    q.add(spec("a"), spec("p"), spec("w", deps=["p"]))
    q.run("a")
    q.fail("a")
    out = q.cancel(CLIENT, 7, ["a", "w"], False, 1.0)
    assert replies(out, CancelReply) == [CancelReply(7, ["a", "w"])]
    assert withdrawn(out) == []
    assert made_ready(q.tick(1000.0)) == []


def test_cancelling_an_unknown_or_finished_task_cancels_nothing(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    q.succeed("a")
    out = q.cancel(CLIENT, 8, ["a", "ghost"], True, 1.0)
    assert replies(out, CancelReply) == [CancelReply(8, [])]
    assert q.state("a") is S.SUCCEEDED


def test_cancelling_a_running_task_waits_for_its_worker_to_confirm(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a", W1)
    out = q.cancel(CLIENT, 9, ["a"], False, 1.0)
    assert replies(out, CancelReply) == []
    assert to_worker(out, CancelTasks) == [SendToWorker(W1, CancelTasks([AttemptRef("a", EPOCH, 1)]))]
    assert q.state("a") is S.RUNNING
    assert to_worker(q.cancel(OTHER_CLIENT, 1, ["a"], False, 1.5), CancelTasks) == []  # asked only once
    out = q.fail("a", "Cancelled", worker=W1, now=2.0)
    assert q.state("a") is S.CANCELLED
    assert sorted((c.client, c.message) for c in out
                  if isinstance(c, SendToClient) and isinstance(c.message, CancelReply)) == [
        (CLIENT, CancelReply(9, ["a"])), (OTHER_CLIENT, CancelReply(1, ["a"]))]


def test_a_running_task_that_finishes_before_the_cancel_lands_stays_succeeded(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    q.cancel(CLIENT, 9, ["a"], False, 1.0)
    out = q.succeed("a", 5)
    assert q.state("a") is S.SUCCEEDED
    assert replies(out, CancelReply) == [CancelReply(9, [])]


def test_a_cancelled_running_task_whose_worker_is_lost_is_cancelled_not_retried(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a")
    q.cancel(CLIENT, 9, ["a"], False, 1.0)
    out = q.worker_lost(W1, "w1", ["a"], "gone", 2.0)
    assert q.state("a") is S.CANCELLED and made_ready(out) == []
    assert replies(out, CancelReply) == [CancelReply(9, ["a"])]


def test_a_cascading_cancel_cancels_every_dependent_and_lists_them(q: QueueHarness) -> None:
    q.add(spec("root"), spec("child", deps=["root"]), spec("grandchild", deps=["child"]), spec("other"))
    out = q.cancel(CLIENT, 3, ["root"], True, 1.0)
    assert q.state("child") is S.CANCELLED and q.state("grandchild") is S.CANCELLED
    assert q.state("other") is S.QUEUED
    (reply,) = replies(out, CancelReply)
    assert sorted(reply.cancelled) == ["child", "grandchild", "root"]
    assert "dependency root was cancelled" in q.error("child").message


def test_a_cascading_cancel_of_a_running_task_cancels_its_dependents_at_once(q: QueueHarness) -> None:
    q.add(spec("root"), spec("child", deps=["root"]))
    q.run("root")
    out = q.cancel(CLIENT, 3, ["root"], True, 1.0)
    assert q.state("child") is S.CANCELLED and replies(out, CancelReply) == []
    out = q.fail("root", "Cancelled", now=2.0)
    assert replies(out, CancelReply) == [CancelReply(3, ["child", "root"])]


def test_a_failed_dependency_fails_its_dependents_with_the_cause(q: QueueHarness) -> None:
    q.add(spec("p", max_attempts=1), spec("c", deps=["p"]), spec("gc", deps=["c"]))
    q.watch(CLIENT, 5, ["gc"])
    q.run("p")
    out = q.fail("p")
    assert q.state("c") is S.FAILED and q.state("gc") is S.FAILED
    assert q.task("c").error == ErrorInfo("DependencyFailed", "dependency p failed")
    assert "dependency c failed" in q.error("gc").message
    (done,) = replies(out, TasksDone)
    assert done.tasks[0].task_id == "gc" and done.tasks[0].state == "FAILED"


def test_a_task_submitted_on_a_failed_dependency_fails_at_once(q: QueueHarness) -> None:
    q.add(spec("p", max_attempts=1))
    q.run("p")
    q.fail("p")
    out = q.submit(CLIENT, 2, [spec("c", deps=["p"])], 1.0)
    assert replies(out, SubmitReply) == [SubmitReply(2, ["c"])]
    assert q.state("c") is S.FAILED and made_ready(out) == []
    assert q.error("c").message == "dependency p failed"


# ----------------------------------------------------------------- reads


def test_a_query_of_an_unknown_id_answers_not_found(q: QueueHarness) -> None:
    q.add(spec("a", priority=2))
    (reply,) = replies(q.query(CLIENT, 4, ["ghost", "a"]), QueryReply)
    assert reply.request_id == 4
    assert (reply.tasks[0].task_id, reply.tasks[0].state) == ("ghost", NOT_FOUND)
    assert (reply.tasks[1].state, reply.tasks[1].priority, reply.tasks[1].attempt) == ("QUEUED", 2, 1)


def test_stats_count_tasks_by_state(q: QueueHarness) -> None:
    q.add(spec("a"), spec("b"))
    q.run("a")
    stats = q.core.stats()
    assert stats["tasks"] == 2 and stats["open"] == 2 and stats["epoch"] == EPOCH
    assert stats["states"]["RUNNING"] == 1 and stats["states"]["QUEUED"] == 1


# ----------------------------------------------------------------- backoff


def test_backoff_grows_with_the_attempt_and_stays_within_its_jitter_bounds() -> None:
    # Equal jitter: attempt n waits between c/2 and c, c = min(cap, base * 2 ** (n - 1)).
    config = TasksConfig(retry_backoff_base_s=0.1, retry_backoff_cap_s=5.0)
    core = TaskQueueCore(config, EPOCH, random.Random(1))
    for _ in range(200):
        previous = 0.0
        for attempt in range(1, 12):
            ceiling = min(5.0, 0.1 * 2 ** (attempt - 1))
            wait = core.backoff_s(attempt)
            assert ceiling / 2 <= wait <= ceiling
            if ceiling < 5.0:  # below the cap, an attempt's floor is the previous attempt's ceiling
                assert wait >= previous
            previous = wait
        assert 2.5 <= core.backoff_s(50) <= 5.0


# ----------------------------------------------------------------- restore


def record(task_spec: TaskSpec, seq: int, state: TaskState, attempt: int, **kwargs: Any) -> TaskRecord:
    return TaskRecord(task_spec, seq, state, attempt=attempt, epoch=EPOCH - 1, **kwargs)


def test_restore_keeps_final_tasks_and_places_the_others_again_under_the_new_epoch() -> None:
    q = QueueHarness()
    records = [
        record(spec("done"), 1, S.SUCCEEDED, 1, value=42),
        record(spec("failed"), 2, S.FAILED, 3, error=ErrorInfo("ValueError", "x")),
        record(spec("queued"), 3, S.QUEUED, 1),
        record(spec("running"), 4, S.RUNNING, 2, worker=W1, worker_id="w1"),
        record(spec("retrying"), 5, S.RETRYING, 1),
        record(spec("waiting", deps=["running"]), 6, S.WAITING, 0),
        record(spec("after-done", deps=["done"]), 7, S.WAITING, 0),
    ]
    out = q.restore(records, 100.0)
    assert q.state("done") is S.SUCCEEDED and q.task("done").value == 42
    assert q.state("failed") is S.FAILED
    assert [t.task_id for t in made_ready(out)] == ["after-done"]
    # A task that was backing off is due at once; ones that may still be running on a
    # worker wait restart_grace_s for it to re-register and report them.
    ready = {t.task_id: t for t in made_ready(q.tick(100.0))}
    assert set(ready) == {"retrying"}
    ready.update((t.task_id, t) for t in made_ready(q.tick(100.0 + q.core.config.restart_grace_s)))
    assert set(ready) == {"retrying", "queued", "running"}
    # In-doubt tasks keep their attempt number (the new epoch fences the old one out);
    # the task that was backing off after a failure gets its next attempt.
    assert (ready["queued"].attempt, ready["running"].attempt, ready["retrying"].attempt) == (1, 2, 2)
    assert all(t.epoch == EPOCH for t in ready.values())
    assert q.state("waiting") is S.WAITING
    q.run("running")
    q.succeed("running")
    assert q.state("waiting") is S.QUEUED
    assert q.core.open_count == 4  # queued, retrying, waiting, after-done
    # New submissions continue the submit order after the restored tasks.
    (new,) = made_ready(q.submit(CLIENT, 1, [spec("new")], 101.0))
    assert new.seq > 7


def test_a_late_result_of_an_attempt_from_before_the_restart_is_stale() -> None:
    q = QueueHarness()
    q.restore([record(spec("a"), 1, S.RUNNING, 1, worker=W1, worker_id="w1")], 0.0)
    q.tick(q.core.config.restart_grace_s)
    q.run("a", W1)
    q.outcomes_reported(W1, [TaskOutcome("a", EPOCH - 1, 1, True, "old", None, 0.1)], 1.0)
    assert q.state("a") is S.RUNNING and q.core.counters["stale_outcomes"] == 1


def test_a_worker_that_re_registers_after_a_restart_keeps_its_attempt_and_its_result_counts() -> None:
    q = QueueHarness()
    q.restore([record(spec("a"), 1, S.QUEUED, 1)], 0.0)
    out = q.core.worker_reports_running(W1, "w1", [AttemptRef("a", EPOCH - 1, 1)], 1.0)
    assert q.state("a") is S.ASSIGNED and not [c for c in out if isinstance(c, SendToWorker)]
    assert made_ready(q.tick(q.core.config.restart_grace_s + 1)) == []  # adopted: the grace timer is disarmed
    q.outcomes_reported(W1, [TaskOutcome("a", EPOCH - 1, 1, True, "kept", None, 0.1)], 5.0)
    assert q.state("a") is S.SUCCEEDED and q.task("a").value == "kept"


def test_a_re_registering_worker_is_told_to_abandon_attempts_that_are_no_longer_current(q: QueueHarness) -> None:
    q.add(spec("a"))
    q.run("a", W1)
    q.core.worker_lost(W1, "w1", ["a"], "silent", 1.0)
    out = q.core.worker_reports_running(W2, "w1", [AttemptRef("a", EPOCH, 1), AttemptRef("ghost", EPOCH, 1)], 2.0)
    (cancel,) = [c for c in out if isinstance(c, SendToWorker)]
    assert cancel.worker == W2 and isinstance(cancel.message, CancelTasks)
    assert {r.task_id for r in cancel.message.attempts} == {"a", "ghost"}


def test_restore_fails_a_waiting_task_whose_dependency_already_failed() -> None:
    q = QueueHarness()
    out = q.restore([
        record(spec("p"), 1, S.FAILED, 1, error=ErrorInfo("ValueError", "x")),
        record(spec("c", deps=["p"]), 2, S.WAITING, 0),
    ], 0.0)
    assert made_ready(out) == []
    assert q.state("c") is S.FAILED
    assert "dependency p failed" in q.error("c").message


def test_a_watched_task_that_is_retried_is_reported_only_when_final(q: QueueHarness) -> None:
    q.add(spec("a", max_attempts=2))
    q.watch(CLIENT, 1, ["a"])
    q.run("a")
    assert replies(q.fail("a", now=1.0), TasksDone) == []
    assert replies(q.tick(100.0), TasksDone) == []
    q.run("a")
    (done,) = replies(q.succeed("a", "v", now=101.0), TasksDone)
    assert [(i.task_id, i.state, i.attempt) for i in done.tasks] == [("a", "SUCCEEDED", 2)]


def test_one_watch_of_several_tasks_reports_each_as_it_finishes(q: QueueHarness) -> None:
    q.add(spec("a"), spec("b"))
    q.watch(CLIENT, 1, ["a", "b"])
    q.run("a")
    q.run("b", W2)
    assert [i.task_id for i in replies(q.succeed("b", worker=W2), TasksDone)[0].tasks] == ["b"]
    assert [i.task_id for i in replies(q.succeed("a"), TasksDone)[0].tasks] == ["a"]


def test_a_retry_avoids_workers_where_it_failed_or_crashed_but_not_where_its_assignment_was_lost(
        q: QueueHarness) -> None:
    w1, w2 = W1.decode(), W2.decode()  # the harness's worker ids
    q.add(spec("a"), spec("b"))
    q.run("a", W1)
    q.fail("a", worker=W1)
    (retry,) = made_ready(q.tick(60.0))
    assert retry.avoid == (w1,)
    q.run("a", W2)
    (lost,) = made_ready(q.worker_lost(W2, w2, ["a"], "the worker does not hold it", 61.0, worker_died=False))
    assert lost.avoid == (w1,)  # w2 never got it: nothing against w2
    q.run("b", W2)
    (crashed,) = made_ready(q.worker_lost(W2, w2, ["b"], "connection closed", 62.0))  # the worker died
    assert crashed.avoid == (w2,)
