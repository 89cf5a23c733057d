"""Regression tests for problems a code review found: each failed before its fix."""

from __future__ import annotations

from pathlib import Path

from actorsched.config import TasksConfig
from actorsched.coordinator.journal import Journal, JournalRow
from actorsched.core.commands import MakeReady, ReadyTask
from actorsched.core.queue import REF_KEY, TaskQueueCore, TaskRecord
from actorsched.core.states import TaskState
from actorsched.protocol import ErrorInfo, TaskOutcome, TaskSpec

W = b"worker-key"


def ready_of(out: list[object]) -> list[ReadyTask]:
    return [t for c in out if isinstance(c, MakeReady) for t in c.tasks]


def run_to_success(queue: TaskQueueCore, task: ReadyTask, value: object, now: float) -> None:
    queue.worker_admitted(W)
    queue.tasks_assigned(W, "w", [task], now)
    queue.outcomes_reported(W, [TaskOutcome(task.task_id, task.epoch, task.attempt, True, value, None, 0.0)], now)


def test_a_result_still_referenced_by_an_unfinished_task_survives_a_purge() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=1)
    (a,) = ready_of(queue.submit(b"c", 1, [TaskSpec("a", "m:f")], 0.0))
    run_to_success(queue, a, 41, 1.0)
    (b,) = ready_of(queue.submit(b"c", 2, [TaskSpec("b", "m:f", args=[{REF_KEY: "a"}])], 2.0))
    assert queue.purge(0.0, 3.0) == []  # b still needs a's result
    assert b.args == [41]
    run_to_success(queue, b, 42, 4.0)
    assert sorted(queue.purge(0.0, 5.0)) == ["a", "b"]


def test_a_reference_to_a_purged_result_fails_the_task_instead_of_crashing() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=2)
    spec = TaskSpec("b", "m:f", args=[{REF_KEY: "gone"}])
    record = TaskRecord(spec, 1, TaskState.QUEUED, attempt=1, epoch=1)
    queue.restore([record], 0.0)
    queue.tick(queue.config.restart_grace_s + 1)
    assert record.state is TaskState.FAILED and record.error is not None and "purged" in record.error.message


def test_a_malformed_reference_is_passed_through_not_resolved() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=1)
    (a,) = ready_of(queue.submit(b"c", 1, [TaskSpec("a", "m:f")], 0.0))
    run_to_success(queue, a, 1, 1.0)
    (b,) = ready_of(queue.submit(b"c", 2, [TaskSpec("b", "m:f", args=[{REF_KEY: "a"}, {REF_KEY: 7}])], 2.0))
    assert b.args == [1, {REF_KEY: 7}]


def test_a_retry_timer_of_a_cancelled_and_purged_task_is_skipped() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=1)
    (a,) = ready_of(queue.submit(b"c", 1, [TaskSpec("a", "m:f")], 0.0))
    queue.worker_admitted(W)
    queue.tasks_assigned(W, "w", [a], 0.0)
    queue.outcomes_reported(W, [TaskOutcome("a", 1, 1, False, None, ErrorInfo("RuntimeError", "x"), 0.0)], 1.0)
    assert queue.tasks["a"].state is TaskState.RETRYING
    queue.cancel(b"c", 2, ["a"], True, 1.0)
    assert queue.purge(0.0, 1.0) == ["a"]
    assert queue.tick(100.0) == []


def test_a_requeue_is_journaled_so_attempts_and_deaths_survive_a_restart() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=1)
    (a,) = ready_of(queue.submit(b"c", 1, [TaskSpec("a", "m:f")], 0.0))
    queue.worker_admitted(W)
    queue.tasks_assigned(W, "w", [a], 0.0)
    queue.dirty.clear()
    queue.worker_lost(W, "w", ["a"], "killed", 1.0)
    assert "a" in queue.dirty and queue.tasks["a"].attempt == 2 and queue.tasks["a"].deaths == 1


def test_unwatch_forgets_the_watch_at_once() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=1)
    queue.submit(b"c", 1, [TaskSpec(f"t{i}", "m:f") for i in range(3)], 0.0)
    queue.watch(b"c", 7, ["t0", "t1", "t2"])
    queue.unwatch(b"c", 7)
    assert queue._watchers == {} and queue._watch_tasks == {}


def test_the_result_of_an_attempt_in_doubt_after_a_restart_is_committed() -> None:
    queue = TaskQueueCore(TasksConfig(), epoch=2)
    queue.restore([TaskRecord(TaskSpec("a", "m:f"), 1, TaskState.QUEUED, attempt=1, epoch=1)], 0.0)
    queue.outcomes_reported(W, [TaskOutcome("a", 1, 1, True, "late but current", None, 0.5)], 0.5)
    assert queue.tasks["a"].state is TaskState.SUCCEEDED and queue.tasks["a"].value == "late but current"


def test_a_purge_and_a_resubmit_of_the_same_id_in_one_group_commit_keep_the_task(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    row = JournalRow("x", 1, "QUEUED", 1, 1, 0, None, b"\x91\xa1x", None, None, [])
    journal.write([row])
    resubmitted = JournalRow("x", 2, "QUEUED", 1, 1, 0, None, b"\x91\xa1x", None, None, [])
    journal.write_batches([([], ["x"]), ([resubmitted], [])])
    assert [r.seq for r in journal.rows()] == [2]
    journal.close()
