"""Issue 9 #7, #8, #18 in the TaskQueue's core: what it keeps, what it forgets, whom it bounds, who goes next.

A final task leaves memory once the shell says its row is durable (``forget``), unless
an unfinished task depends on it; then it leaves when that dependent finishes.  Counts
keep every task the journal knows.  Each client's unfinished tasks, and the bytes of
their arguments, are bounded.  Places in line are fair between clients.
"""

from __future__ import annotations

import random

from actorsched.config import TasksConfig
from actorsched.core.commands import MakeReady, SendToClient, SendToWorker
from actorsched.core.queue import TaskQueueCore, TaskRecord
from actorsched.core.states import TaskState
from actorsched.protocol import AttemptRef, CancelTasks, ErrorReply, SubmitReply, TaskOutcome, TaskSpec

S = TaskState
EPOCH = 2
A, B = b"client-a", b"client-b"
W1 = b"worker-key-1"


def spec(task_id: str, **kwargs: object) -> TaskSpec:
    return TaskSpec(task_id, "actorsched.tasks:echo", **kwargs)  # type: ignore[arg-type]


class Q(TaskQueueCore):
    """The core, remembering every ready task it hands out (as the Dispatcher would)."""

    ready: dict[str, object]

    def _flush(self, judge_now: bool = False) -> list:  # type: ignore[type-arg]
        out = super()._flush(judge_now)
        if not hasattr(self, "ready"):
            self.ready = {}
        self.ready.update((t.task_id, t) for c in out if isinstance(c, MakeReady) for t in c.tasks)
        return out


def core(**config: object) -> Q:
    config.setdefault("finished_in_memory", 0)  # forget at once unless a test keeps recent ones
    return Q(TasksConfig(**config), EPOCH, random.Random(1))  # type: ignore[arg-type]


def finish(q: Q, task_id: str, value: object = None) -> None:
    """Place, start and succeed the current attempt of ``task_id`` on W1."""
    q.worker_admitted(W1, "w1")
    task = q.tasks[task_id]
    q.tasks_assigned(W1, "w1", [q.ready.pop(task_id)], 1.0)  # type: ignore[list-item]
    q.tasks_started(W1, [AttemptRef(task_id, task.epoch, task.attempt)])
    q.outcomes_reported(W1, [TaskOutcome(task_id, task.epoch, task.attempt, True, value, None, 0.01)], 2.0)


def test_a_durable_final_task_leaves_memory_but_stays_counted() -> None:
    q = core()
    q.submit(A, 1, [spec("a", args=[1])], 0.0)
    finish(q, "a", 1)
    q.forget(["a"])
    assert "a" not in q.tasks and q.counters["forgotten"] == 1
    assert q.stats()["tasks"] == 1 and q.counts[S.SUCCEEDED] == 1 and q.stats()["in_memory"] == 0


def test_an_unfinished_task_that_depends_on_a_result_keeps_it_until_it_finishes() -> None:
    q = core()
    q.submit(A, 1, [spec("p")], 0.0)
    q.submit(A, 2, [spec("c", args=[{"__actorsched_ref__": "p"}])], 0.0)
    finish(q, "p", "value of p")
    q.forget(["p"])
    assert "p" in q.tasks, "c still needs p's result as its argument"
    finish(q, "c", "done")
    assert "p" not in q.tasks and q.counters["forgotten"] == 1  # released when c finished
    q.forget(["c"])
    assert q.tasks == {}


def test_recalled_tasks_are_not_counted_twice_and_are_forgotten_again() -> None:
    q = core()
    q.submit(A, 1, [spec("a")], 0.0)
    finish(q, "a")
    q.forget(["a"])
    record = TaskRecord(spec("a"), 1, S.SUCCEEDED, attempt=1, epoch=EPOCH, journaled=True)
    q.recall([record])
    assert q.tasks["a"] is record and q.counts[S.SUCCEEDED] == 1
    out = q.submit(A, 2, [spec("a")], 3.0)  # idempotent: no new task, no new run
    assert [c.message for c in out if isinstance(c, SendToClient)] == [SubmitReply(2, ["a"])]
    assert q.counters["submitted"] == 1
    q.forget(["a"])
    assert q.tasks == {}


def test_each_client_has_a_bound_of_unfinished_tasks() -> None:
    q = core(max_pending_per_client=2)
    q.submit(A, 1, [spec("a1"), spec("a2")], 0.0)
    (refused,) = q.submit(A, 2, [spec("a3")], 0.0)
    assert isinstance(refused, SendToClient) and isinstance(refused.message, ErrorReply)
    assert refused.message.code == "queue-full" and "max_pending_per_client=2" in refused.message.message
    assert "a3" not in q.tasks
    q.submit(B, 1, [spec("b1")], 0.0)  # another client is not held back
    assert "b1" in q.tasks
    finish(q, "a1")
    q.submit(A, 3, [spec("a3")], 0.0)  # one finished: room again
    assert "a3" in q.tasks and q.open_by_client == {A: 2, B: 1}


def test_the_bytes_of_unfinished_arguments_are_bounded() -> None:
    q = core(max_pending_bytes=100)
    q.submit(A, 1, [spec("a")], 0.0, packed=[b"x" * 60])
    (refused,) = q.submit(B, 1, [spec("b")], 0.0, packed=[b"x" * 60])
    assert isinstance(refused.message, ErrorReply) and "max_pending_bytes=100" in refused.message.message
    finish(q, "a")
    assert q.pending_bytes == 0
    q.submit(B, 2, [spec("b")], 0.0, packed=[b"x" * 60])
    assert q.pending_bytes == 60 and q.tasks["b"].packed == b"x" * 60


def test_a_result_adopted_after_a_restart_keeps_the_worker_that_reported_it() -> None:
    """Before: the attempt showed no worker (the journal does not record who held it)."""
    q = core()
    q.restore([TaskRecord(spec("a"), 1, S.QUEUED, attempt=1, epoch=EPOCH - 1)], 0.0)
    q.worker_admitted(W1, "w7")
    q.outcomes_reported(W1, [TaskOutcome("a", EPOCH - 1, 1, True, "late", None, 0.5)], 1.0)
    task = q.tasks["a"]
    assert task.state is S.SUCCEEDED and task.worker_id == "w7"
    assert task.history[-1].worker_id == "w7"
    assert task.history[-1].ended_at - task.history[-1].started_at == 0.5


def test_a_client_arriving_behind_a_flood_gets_the_head_of_the_line() -> None:
    q = core()
    q.submit(A, 1, [spec(f"a{i}") for i in range(100)], 10.0)
    q.worker_admitted(W1, "w1")
    q.tasks_assigned(W1, "w1", [q.ready.pop("a0")], 10.5)
    q.submit(B, 1, [spec("b1"), spec("b2")], 11.0)
    places = sorted(q.ready.values(), key=lambda t: t.since)  # type: ignore[attr-defined]
    order = [t.task_id for t in places]  # type: ignore[attr-defined]
    assert order[:4] == ["b1", "a1", "b2", "a2"], order[:6]
    # A client's own higher priority is not stuck behind its own flood either.
    q.submit(A, 2, [spec("urgent", priority=-1)], 12.0)
    assert q.ready["urgent"].since <= q.ready["a1"].since  # type: ignore[attr-defined]


def test_a_lost_task_keeps_its_place_and_an_idle_line_starts_now() -> None:
    q = core()
    q.submit(A, 1, [spec("a"), spec("b")], 10.0)
    place = q.ready["a"].since  # type: ignore[attr-defined]
    assert place == 10.0, "nothing waited: the line starts at now"
    q.worker_admitted(W1, "w1")
    q.tasks_assigned(W1, "w1", [q.ready.pop("a")], 10.5)
    q.worker_gone(W1, "w1", "killed", 11.0)
    assert q.ready["a"].since == place < q.ready["b"].since  # type: ignore[attr-defined]


def test_attempts_a_worker_never_starts_go_back_to_the_line() -> None:
    """Issue 9 #5: a peer that takes assignments and never starts them cannot sit on them."""
    q = core(start_timeout_s=30.0)
    q.submit(A, 1, [spec("a"), spec("b")], 0.0)
    q.worker_admitted(W1, "hoarder")
    q.tasks_assigned(W1, "hoarder", [q.ready.pop("a"), q.ready.pop("b")], 1.0)
    q.tasks_started(W1, [AttemptRef("b", EPOCH, 1)])
    assert q.tick(20.0) == []
    out = q.tick(40.0)
    (cancel,) = [c for c in out if isinstance(c, SendToWorker)]
    assert isinstance(cancel.message, CancelTasks) and [r.task_id for r in cancel.message.attempts] == ["a"]
    assert q.tasks["a"].state is S.QUEUED and q.tasks["a"].attempt == 2 and q.ready["a"].attempt == 2
    assert q.tasks["b"].state is S.RUNNING and q.counters["never_started"] == 1
    assert q.held[W1] == {"b": None}


def test_a_worker_lost_long_after_it_was_given_a_task_it_never_started_is_not_charged_a_death() -> None:
    """Fuzzing found fake workers that register, take tasks and go silent: each loss counted a
    'death' against the task, which was quarantined as KilledWorker although it never ran."""
    q = core(max_worker_deaths=2)
    q.submit(A, 1, [spec("victim"), spec("poison")], 0.0)
    for attempt, now in enumerate((10.0, 20.0, 30.0), start=1):
        q.worker_admitted(W1, "fake")
        q.tasks_assigned(W1, "fake", [q.ready.pop("victim")], now)
        q.worker_gone(W1, "fake", "silent for 5 s", now + 5.0)
        assert q.tasks["victim"].state is S.QUEUED and q.tasks["victim"].deaths == 0
        assert q.tasks["victim"].attempt == attempt + 1
    # One placed just before its worker died may have killed it: that still counts.
    for now in (40.0, 50.0):
        q.worker_admitted(W1, "w")
        q.tasks_assigned(W1, "w", [q.ready.pop("poison")], now)
        q.worker_gone(W1, "w", "connection closed", now + 0.01)
    assert q.tasks["poison"].state is S.FAILED and q.tasks["poison"].error is not None
    assert q.tasks["poison"].error.type == "KilledWorker"


def test_the_most_recent_small_results_stay_in_memory_up_to_the_bound() -> None:
    q = core(finished_in_memory=2)
    q.submit(A, 1, [spec("big"), spec("s1"), spec("s2"), spec("s3")], 0.0)
    finish(q, "big", "x" * 5000)
    for task_id in ("s1", "s2", "s3"):
        finish(q, task_id, 7)
    q.forget(["big", "s1", "s2", "s3"])
    assert set(q.tasks) == {"s2", "s3"}, "a large result leaves at once; of the small ones the 2 newest stay"
    assert q.counters["forgotten"] == 2
    q.drop_finished(0.0, 10.0)  # a purge covers them: they leave memory too
    assert q.tasks == {}
