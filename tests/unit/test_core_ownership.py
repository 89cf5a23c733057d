"""One owner: the TaskQueue's held index, driven directly with a fake clock.

The TaskQueue alone knows which worker incarnation holds which attempt
(``TaskQueueCore.held``); the Dispatcher only counts tasks outstanding per worker,
moved up by its own placements and down by the queue's ``FreeSlots``.  The harness
below plays the Dispatcher's count and the WorkerRegistry's orders, and after every
step checks that the two never drift:

* every task in a ``held`` set is ASSIGNED or RUNNING on that incarnation, and every
  ASSIGNED or RUNNING task is in its incarnation's ``held`` set (bar the tasks a
  ``ForgetWorker`` kept for the next ``ReconcileRunning``);
* for every admitted incarnation the Dispatcher's count equals ``len(held)``, and a
  count is never freed below zero;
* attempts only grow.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from actorsched.config import LivenessConfig, PlacementConfig, TasksConfig
from actorsched.core.commands import (
    AddWorker,
    AdmitWorker,
    CheckHeld,
    Command,
    ForgetWorker,
    FreeSlots,
    JudgeAttempts,
    MakeReady,
    ReadyTask,
    ReconcileRunning,
    RemoveWorker,
    SendToWorker,
)
from actorsched.core.queue import TaskQueueCore, TaskRecord
from actorsched.core.registry import RegistryCore
from actorsched.core.states import TaskState
from actorsched.protocol import AttemptRef, CancelTasks, ErrorInfo, Register, Release, TaskOutcome, TaskSpec

S = TaskState
EPOCH = 3
CLIENT = b"client-1"
K1, K2 = b"key-1", b"key-2"
IDS = {K1: "w1", K2: "w2"}
CONFIG = TasksConfig(max_attempts=5, retry_backoff_base_s=1.0, retry_backoff_cap_s=5.0,
                     max_pending_tasks=10_000, max_worker_deaths=3)

SHORT_S = TasksConfig().short_task_s


def spec(task_id: str, name: str = "actorsched.tasks:add", **kwargs: Any) -> TaskSpec:
    return TaskSpec(task_id, name, **kwargs)


class Owners:
    """A TaskQueueCore plus the Dispatcher's outstanding counts, checked after every step."""

    def __init__(self, config: TasksConfig = CONFIG) -> None:
        self.core = TaskQueueCore(config, EPOCH, random.Random(7))
        self.ready: dict[str, ReadyTask] = {}  # the last ReadyTask made for each task
        self.outstanding: dict[bytes, int] = {}  # as the Dispatcher counts them
        self.awaiting: set[str] = set()  # kept by a ForgetWorker for the next ReconcileRunning
        self.attempts_seen: dict[str, int] = {}

    # ------------------------------------------------------------- the invariants

    def check(self) -> None:
        core = self.core
        for key, held in core.held.items():
            for task_id in held:
                task = core.tasks[task_id]
                assert task.state in (S.ASSIGNED, S.RUNNING) and task.worker == key, (
                    f"{key!r} holds {task_id}, which is {task.state.value} on {task.worker!r}")
        for task_id, task in core.tasks.items():
            if task.state in (S.ASSIGNED, S.RUNNING) and task_id not in self.awaiting:
                assert task_id in core.held.get(task.worker, {}), (
                    f"{task_id} is {task.state.value} on {task.worker!r}, which does not hold it")
            assert task.attempt >= self.attempts_seen.get(task_id, 0), f"attempt of {task_id} went down"
            self.attempts_seen[task_id] = task.attempt
        for key, held in core.held.items():
            assert self.outstanding.get(key, 0) == len(held), (
                f"the Dispatcher counts {self.outstanding.get(key, 0)} on {key!r}, the queue holds {list(held)}")
        for key, count in self.outstanding.items():
            assert count >= 0, f"{key!r} was freed below zero"
            assert key in core.held or count == 0, f"{count} slots stay taken on unadmitted {key!r}"

    def take(self, out: list[Command]) -> list[Command]:
        """Play the Dispatcher's side of ``out``, then check."""
        for command in out:
            if isinstance(command, MakeReady):
                self.ready.update((t.task_id, t) for t in command.tasks)
            elif isinstance(command, FreeSlots) and command.worker in self.outstanding:
                self.outstanding[command.worker] -= command.count
        self.check()
        return out

    # ------------------------------------------------------------- steps

    def add(self, *specs: TaskSpec, now: float = 0.0) -> list[Command]:
        return self.take(self.core.submit(CLIENT, 1, list(specs), now))

    def admit(self, key: bytes, running: int = 0) -> None:
        """What AdmitWorker and AddWorker do."""
        self.core.worker_admitted(key)
        self.outstanding[key] = running
        self.check()

    def place(self, key: bytes, *task_ids: str, now: float = 0.0, worker_id: str = "") -> list[Command]:
        """The Dispatcher placed these tasks on ``key`` (counting them) and tells the queue."""
        self.outstanding[key] = self.outstanding.get(key, 0) + len(task_ids)
        return self.take(self.core.tasks_assigned(key, worker_id or IDS[key], [self.ready[t] for t in task_ids],
                                                  now))

    def start(self, key: bytes, *task_ids: str) -> None:
        self.core.tasks_started(key, [self.ref(t) for t in task_ids])
        self.check()

    def report(self, key: bytes, *outcomes: TaskOutcome, now: float = 0.0) -> list[Command]:
        return self.take(self.core.outcomes_reported(key, list(outcomes), now))

    def gone(self, key: bytes, now: float, died: bool = True, keep: frozenset[str] = frozenset(),
             worker_id: str = "") -> list[Command]:
        """What RemoveWorker and ForgetWorker do."""
        self.outstanding.pop(key, None)
        self.awaiting |= {t for t in keep if t in self.core.held.get(key, {})}
        return self.take(self.core.worker_gone(key, worker_id or IDS[key], "gone", now, died, keep))

    def reregister(self, key: bytes, worker_id: str, attempts: list[AttemptRef], now: float) -> list[Command]:
        """What AdmitWorker, AddWorker(running=len(attempts)) and ReconcileRunning do."""
        self.core.worker_admitted(key)
        self.outstanding[key] = len(attempts)
        out = self.core.worker_reports_running(key, worker_id, attempts, now)
        self.awaiting -= {ref.task_id for ref in attempts}
        return self.take(out)

    def route(self, orders: list[Command], now: float) -> list[Command]:
        """Carry out a RegistryCore's orders as one step, the way the actors do."""
        out: list[Command] = []
        for order in orders:
            if isinstance(order, RemoveWorker):
                self.outstanding.pop(order.worker, None)
            elif isinstance(order, AddWorker):
                self.outstanding[order.worker] = order.running
            elif isinstance(order, AdmitWorker):
                self.core.worker_admitted(order.worker)
            elif isinstance(order, ForgetWorker):
                self.awaiting |= {t for t in order.keep if t in self.core.held.get(order.worker, {})}
                out += self.core.worker_gone(order.worker, order.worker_id, order.reason, now, order.worker_died,
                                             order.keep)
            elif isinstance(order, ReconcileRunning):
                out += self.core.worker_reports_running(order.worker, order.worker_id, order.attempts, now)
                self.awaiting -= {ref.task_id for ref in order.attempts}
            elif isinstance(order, CheckHeld):
                out += self.core.check_held(order.worker, order.worker_id, order.holds, order.placed_before, now)
        return self.take(out)

    # ------------------------------------------------------------- reads

    def task(self, task_id: str) -> TaskRecord:
        return self.core.tasks[task_id]

    def state(self, task_id: str) -> TaskState:
        return self.core.tasks[task_id].state

    def ref(self, task_id: str) -> AttemptRef:
        task = self.task(task_id)
        return AttemptRef(task_id, task.epoch, task.attempt)

    def outcome(self, task_id: str, ok: bool = True, error_type: str = "ValueError",
                duration_s: float = 0.1) -> TaskOutcome:
        task = self.task(task_id)
        error = None if ok else ErrorInfo(error_type, f"{error_type} happened")
        return TaskOutcome(task_id, task.epoch, task.attempt, ok, "v" if ok else None, error, duration_s)

    def held(self, key: bytes) -> list[str]:
        return list(self.core.held.get(key, {}))


@pytest.fixture
def q() -> Iterator[Owners]:
    harness = Owners()
    yield harness
    harness.check()


def of(commands: list[Command], kind: type) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]


def made_ready(commands: list[Command]) -> dict[str, ReadyTask]:
    return {t.task_id: t for c in of(commands, MakeReady) for t in c.tasks}


def to_worker(commands: list[Command], kind: type) -> list[Any]:
    return [c.message for c in of(commands, SendToWorker) if isinstance(c.message, kind)]


# ----------------------------------------------------------------- the held index


def test_every_held_task_is_assigned_or_running_on_the_one_incarnation_that_holds_it(q: Owners) -> None:
    q.add(*(spec(t) for t in "abcde"))
    q.admit(K1)
    q.admit(K2)
    q.place(K1, "a", "b", now=1.0)
    q.place(K2, "c", "d", now=1.0)
    q.start(K1, "a")
    assert q.held(K1) == ["a", "b"] and q.held(K2) == ["c", "d"]
    q.report(K1, q.outcome("a"), q.outcome("b", ok=False), now=2.0)  # a done, b backs off
    assert q.held(K1) == [] and q.state("b") is S.RETRYING
    q.take(q.core.tick(100.0))
    q.place(K1, "b", "e", now=100.0)
    q.gone(K2, 101.0)  # c and d go back to the queue, owned by no one
    assert q.held(K2) == [] and K2 not in q.core.held
    assert (q.state("c"), q.state("d")) == (S.QUEUED, S.QUEUED)
    q.place(K1, "c", now=102.0)
    assert q.held(K1) == ["b", "e", "c"]  # in placement order
    assert q.core.held_counts() == {K1: (3, 2)}  # (held now, attempts finished: a and b's first)


def test_outcomes_free_slots_with_one_free_slots_per_worker(q: Owners) -> None:
    q.add(*(spec(t) for t in "abcd"))
    q.admit(K1)
    q.admit(K2)
    q.place(K1, "a", "b", "c")
    q.place(K2, "d")
    out = q.report(K1, q.outcome("a"), q.outcome("b", ok=False), q.outcome("c", ok=False, error_type="Cancelled"))
    assert of(out, FreeSlots) == [FreeSlots(K1, 3)]
    assert q.core.done_by[K1] == 3
    stale = q.report(K1, q.outcome("a"), q.outcome("d"))  # a duplicate, and another worker's task
    assert of(stale, FreeSlots) == []
    assert q.core.counters["repeated_outcomes"] == 1 and q.core.counters["stale_outcomes"] == 1
    assert of(q.report(K2, q.outcome("d")), FreeSlots) == [FreeSlots(K2, 1)]


def test_a_placement_cancelled_in_flight_frees_its_slot_and_is_called_back(q: Owners) -> None:
    q.add(spec("a"), spec("b"))
    q.admit(K1)
    q.take(q.core.cancel(CLIENT, 2, ["a"], False, 0.5))
    out = q.place(K1, "a", "b", now=1.0)
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)]
    (cancel,) = to_worker(out, CancelTasks)
    assert [r.task_id for r in cancel.attempts] == ["a"]
    assert q.held(K1) == ["b"]


def test_a_placement_on_an_unadmitted_worker_is_requeued_with_a_new_attempt_and_its_slots_freed(q: Owners) -> None:
    q.add(spec("a"), spec("b"), now=0.0)
    out = q.place(K1, "a", "b", now=3.0)  # the placement overtook AdmitWorker (or the worker left)
    assert of(out, FreeSlots) == [FreeSlots(K1, 2)]
    (cancel,) = to_worker(out, CancelTasks)
    assert cancel.attempts == [AttemptRef("a", EPOCH, 1), AttemptRef("b", EPOCH, 1)]  # the old attempts
    again = made_ready(out)
    assert {t: r.attempt for t, r in again.items()} == {"a": 2, "b": 2}
    assert again["a"].since == 0.0 and again["a"].avoid == ()  # its old place; nothing against the worker
    task = q.task("a")
    assert task.state is S.QUEUED and task.deaths == 0 and task.error is not None
    assert task.error.type == "AssignmentLost" and task.history[-1].outcome == "assignment lost"
    assert K1 not in q.core.held


def test_a_placement_on_a_worker_that_left_is_requeued_the_same_way(q: Owners) -> None:
    q.add(spec("a"))
    q.admit(K1)
    q.gone(K1, 1.0, died=False)
    out = q.place(K1, "a", now=2.0)
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)] and made_ready(out)["a"].attempt == 2


def test_a_gone_worker_s_tasks_are_requeued_except_the_ones_it_keeps(q: Owners) -> None:
    q.add(spec("a"), spec("b"), spec("c"))
    q.admit(K1)
    q.place(K1, "a", "b", "c", now=1.0)
    q.start(K1, "a", "b")
    out = q.gone(K1, 2.0, died=False, keep=frozenset({"b", "ghost"}))
    assert set(made_ready(out)) == {"a", "c"}
    assert q.state("b") is S.RUNNING and q.task("b").attempt == 1  # waits for its ReconcileRunning
    assert of(out, FreeSlots) == []  # the worker is gone from placement: nothing left to free
    assert K1 not in q.core.held and K1 not in q.core.done_by


def test_a_carried_over_task_is_claimed_by_the_new_incarnation_s_reconcile_running(q: Owners) -> None:
    registry = RegistryCore(LivenessConfig(), PlacementConfig(), EPOCH)
    q.add(spec("a"), spec("b"))
    q.route(registry.registered(K1, Register("w1", "h", 1, 2, [], []), 0.0), 0.0)
    q.place(K1, "a", "b", now=1.0)
    q.start(K1, "a")
    # w1 reconnects on a new connection, still running a; b never reached it.  The old
    # connection has been silent past suspect_after_s, so the new one may take the id.
    orders = registry.registered(K2, Register("w1", "h", 1, 2, [], [q.ref("a")]), 6.0)
    out = q.route(orders, 6.0)
    assert q.held(K2) == ["a"] and q.task("a").worker == K2
    assert (q.state("a"), q.task("a").attempt) == (S.RUNNING, 1)  # carried over, not run again
    assert made_ready(out)["b"].attempt == 2 and q.task("b").deaths == 0
    assert to_worker(out, CancelTasks) == []
    q.report(K2, q.outcome("a"), now=7.0)
    assert q.state("a") is S.SUCCEEDED and q.held(K2) == []


def test_a_re_registration_on_the_same_connection_keeps_what_it_still_runs(q: Owners) -> None:
    registry = RegistryCore(LivenessConfig(), PlacementConfig(), EPOCH)
    q.add(spec("a"), spec("b"))
    q.route(registry.registered(K1, Register("w1", "h", 1, 2, [], []), 0.0), 0.0)
    q.place(K1, "a", "b", now=1.0)
    out = q.route(registry.registered(K1, Register("w1", "h", 1, 2, [], [q.ref("b")]), 2.0), 2.0)
    assert q.held(K1) == ["b"] and q.task("b").attempt == 1
    assert made_ready(out)["a"].attempt == 2


def test_a_reported_attempt_that_is_no_longer_current_is_abandoned_and_frees_its_slot(q: Owners) -> None:
    q.add(spec("a"))
    q.admit(K1)
    q.place(K1, "a")
    stale = q.ref("a")
    q.gone(K1, 1.0)  # a is requeued under attempt 2
    out = q.reregister(K2, "w1", [stale, AttemptRef("ghost", EPOCH, 1)], 2.0)
    assert of(out, FreeSlots) == [FreeSlots(K2, 2)]
    (cancel,) = to_worker(out, CancelTasks)
    assert [r.task_id for r in cancel.attempts] == ["a", "ghost"]
    assert q.held(K2) == [] and q.state("a") is S.QUEUED


def test_a_kept_task_reported_under_an_attempt_that_is_not_current_is_not_orphaned() -> None:
    q = Owners()
    q.add(spec("a"))
    q.admit(K1)
    q.place(K1, "a", now=0.0)
    old = q.ref("a")
    q.take(q.core.check_held(K1, "w1", [], 5.0, 6.0))  # a was lost: attempt 2 ...
    q.place(K1, "a", now=7.0)  # ... placed on the same worker, which still runs attempt 1
    assert q.task("a").attempt == 2
    # w1 reconnects reporting attempt 1: keep={"a"} spares attempt 2 from the requeue, and
    # ReconcileRunning abandons attempt 1; attempt 2 then sits ASSIGNED on a gone incarnation.
    q.gone(K1, 8.0, died=False, keep=frozenset({"a"}))
    q.reregister(K2, "w1", [old], 8.0)  # the harness's check fails here: a is ASSIGNED on gone K1
    assert q.state("a") is S.QUEUED or q.task("a").worker == K2


# ----------------------------------------------------------------- checking what a worker holds


def test_check_held_requeues_only_settled_tasks_the_worker_does_not_hold(q: Owners) -> None:
    q.add(spec("lost"), spec("kept"), spec("fresh"), now=0.0)
    q.admit(K1)
    q.place(K1, "lost", "kept", now=1.0)
    q.place(K1, "fresh", now=9.5)
    # Placed at 1.0, before the settled line: not held means lost.  Placed at 9.5: maybe not listed yet.
    assert q.take(q.core.check_held(K1, "w1", ["kept"], 0.5, 2.5)) == []  # nothing settled yet
    out = q.take(q.core.check_held(K1, "w1", ["kept"], 8.0, 10.0))
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)]
    again = made_ready(out)
    assert set(again) == {"lost"} and again["lost"].attempt == 2 and again["lost"].since == 0.0
    assert q.task("lost").deaths == 0 and q.task("lost").history[-1].outcome == "assignment lost"
    assert q.held(K1) == ["kept", "fresh"]
    assert q.core.counters["lost_assignments"] == 1
    assert q.take(q.core.check_held(K2, "w2", [], 8.0, 10.0)) == []  # an incarnation it does not know


def test_a_missing_task_is_requeued_even_when_the_heartbeat_lists_one_that_finished_since(q: Owners) -> None:
    q.add(spec("lost"), spec("finished"))
    q.admit(K1)
    q.place(K1, "lost", "finished", now=1.0)
    # The heartbeat left the worker listing "finished" only; its outcome reached the queue first.
    q.report(K1, q.outcome("finished"), now=9.0)
    out = q.take(q.core.check_held(K1, "w1", ["finished"], 8.0, 10.0))
    assert set(made_ready(out)) == {"lost"}


# ----------------------------------------------------------------- take-back


def test_take_back_asks_only_for_the_newest_unstarted_tasks(q: Owners) -> None:
    q.add(*(spec(t) for t in "abcde"))
    q.admit(K1)
    q.place(K1, "a", "b", "c", "d", "e")
    q.start(K1, "a", "e")  # e started out of order: it is not taken back
    q.take(q.core.cancel(CLIENT, 2, ["d"], False, 0.0))  # d is being cancelled: not offered either
    out = q.take(q.core.take_back(K1, 2))
    (release,) = to_worker(out, Release)
    assert release.attempts == [q.ref("c"), q.ref("b")]
    assert of(out, FreeSlots) == []  # nothing moves until the worker answers
    assert q.held(K1) == ["a", "b", "c", "d", "e"]
    assert q.core.counters["take_back_asked"] == 2
    assert q.take(q.core.take_back(K2, 2)) == [] and q.take(q.core.take_back(K1, 0)) == []


def test_a_released_task_queues_again_in_its_old_place_with_the_same_attempt_and_frees_its_slot(q: Owners) -> None:
    q.add(spec("a"), spec("b"), now=0.0)
    q.admit(K1)
    q.place(K1, "a", "b", now=1.0)
    out = q.take(q.core.attempts_released(K1, [q.ref("b")], 2.0))
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)]
    again = made_ready(out)["b"]
    assert (again.attempt, again.epoch, again.ready_at) == (1, EPOCH, 2.0)
    assert again.since == q.task("b").since < 1.0  # its place from when it first queued, not now
    assert q.state("b") is S.QUEUED and q.task("b").history == [] and q.task("b").error is None
    assert q.held(K1) == ["a"] and q.core.counters["taken_back"] == 1
    q.admit(K2)
    q.place(K2, "b", now=3.0)  # placed elsewhere under the same attempt
    q.report(K2, q.outcome("b"), now=4.0)
    assert q.state("b") is S.SUCCEEDED


def test_a_stale_or_foreign_release_is_ignored(q: Owners) -> None:
    q.add(spec("a"), spec("b"))
    q.admit(K1)
    q.admit(K2)
    q.place(K1, "a", "b")
    q.start(K1, "b")
    a = q.ref("a")
    ignored = [
        q.core.attempts_released(K2, [a], 1.0),  # not the holder
        q.core.attempts_released(K1, [AttemptRef("a", EPOCH, 2)], 1.0),  # not the current attempt
        q.core.attempts_released(K1, [AttemptRef("a", EPOCH - 1, 1)], 1.0),  # not this epoch
        q.core.attempts_released(K1, [q.ref("b")], 1.0),  # started before the release: it runs on
        q.core.attempts_released(K1, [AttemptRef("ghost", EPOCH, 1)], 1.0),
    ]
    assert [q.take(out) for out in ignored] == [[]] * 5
    assert q.held(K1) == ["a", "b"] and q.core.counters["taken_back"] == 0
    q.take(q.core.attempts_released(K1, [a], 2.0))
    assert of(q.take(q.core.attempts_released(K1, [a], 2.0)), FreeSlots) == []  # a duplicate frees nothing


def test_a_released_task_a_client_cancelled_meanwhile_is_cancelled_not_queued(q: Owners) -> None:
    q.add(spec("a"))
    q.admit(K1)
    q.place(K1, "a")
    q.take(q.core.cancel(CLIENT, 2, ["a"], False, 0.5))
    out = q.take(q.core.attempts_released(K1, [q.ref("a")], 1.0))
    assert q.state("a") is S.CANCELLED and made_ready(out) == {}
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)]


# ----------------------------------------------------------------- deaths and lost assignments


def test_a_first_worker_death_reruns_at_once_without_backoff_and_keeps_its_place(q: Owners) -> None:
    q.add(spec("a"), now=0.0)
    q.admit(K1)
    q.place(K1, "a", now=1.0)
    q.start(K1, "a")
    out = q.gone(K1, 5.0)  # died holding it
    again = made_ready(out)["a"]
    assert (again.attempt, again.ready_at, again.since) == (2, 5.0, 0.0)
    assert again.avoid == ("w1",)
    task = q.task("a")
    assert task.state is S.QUEUED and task.deaths == 1 and task.history[-1].outcome == "worker lost"


def test_a_child_process_death_reruns_at_once_and_keeps_its_place(q: Owners) -> None:
    q.add(spec("a"), now=0.0)
    q.admit(K1)
    q.place(K1, "a", now=1.0)
    out = q.report(K1, q.outcome("a", ok=False, error_type="ChildProcessDied"), now=5.0)
    again = made_ready(out)["a"]
    assert (again.attempt, again.ready_at, again.since, q.task("a").deaths) == (2, 5.0, 0.0, 1)
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)]


def test_an_ordinary_failure_backs_off_and_queues_at_the_back(q: Owners) -> None:
    q.add(spec("a"), now=0.0)
    q.admit(K1)
    q.place(K1, "a", now=1.0)
    assert made_ready(q.report(K1, q.outcome("a", ok=False), now=5.0)) == {}
    assert q.state("a") is S.RETRYING
    again = made_ready(q.take(q.core.tick(100.0)))["a"]
    assert again.since == 100.0  # an error of the task's own: it lines up again


def test_deaths_quarantine_a_task_after_max_worker_deaths(q: Owners) -> None:
    q.add(spec("a"))
    for death in range(1, CONFIG.max_worker_deaths + 1):
        q.admit(K1)
        q.place(K1, "a", now=float(death))
        q.gone(K1, float(death))
    assert q.state("a") is S.FAILED and q.task("a").error.type == "KilledWorker"  # type: ignore[union-attr]


def test_a_lost_assignment_keeps_its_place_and_counts_no_death(q: Owners) -> None:
    q.add(spec("a"), now=0.0)
    q.admit(K1)
    q.place(K1, "a", now=1.0)
    out = q.take(q.core.worker_lost(K1, "w1", ["a"], "it never got it", 5.0, worker_died=False))
    assert of(out, FreeSlots) == [FreeSlots(K1, 1)]
    again = made_ready(out)["a"]
    assert (again.attempt, again.since, again.avoid) == (2, 0.0, ())
    assert q.task("a").deaths == 0 and q.held(K1) == []


def test_a_goodbye_requeues_in_the_old_place_without_a_death(q: Owners) -> None:
    q.add(spec("a"), now=0.0)
    q.admit(K1)
    q.place(K1, "a", now=1.0)
    again = made_ready(q.gone(K1, 5.0, died=False))["a"]
    assert (again.attempt, again.since, q.task("a").deaths) == (2, 0.0, 0)


# ----------------------------------------------------------------- run times and judgments


def test_a_name_is_short_after_it_runs_fast_and_long_after_it_runs_slow(q: Owners) -> None:
    fast = "pkg.mod:quick"
    (first,) = made_ready(q.add(spec("t1", fast))).values()
    assert not first.short  # never seen to finish: it needs a free slot
    q.admit(K1)
    q.place(K1, "t1")
    q.report(K1, q.outcome("t1", duration_s=SHORT_S / 10))
    (second,) = made_ready(q.add(spec("t2", fast))).values()
    assert second.short and q.core.durations[fast] == pytest.approx(SHORT_S / 10)
    q.place(K1, "t2")
    q.report(K1, q.outcome("t2", duration_s=1.0))  # one slow run moves the average past the line
    (third,) = made_ready(q.add(spec("t3", fast))).values()
    assert not third.short
    assert q.core.durations[fast] == pytest.approx(SHORT_S / 10 + 0.2 * (1.0 - SHORT_S / 10))
    (other,) = made_ready(q.add(spec("t4", "pkg.mod:other"))).values()
    assert not other.short  # per name


def test_a_failed_attempt_counts_towards_its_names_run_time(q: Owners) -> None:
    q.add(spec("a", "pkg.mod:f"))
    q.admit(K1)
    q.place(K1, "a")
    q.report(K1, q.outcome("a", ok=False, duration_s=0.01))
    assert q.core.durations["pkg.mod:f"] == pytest.approx(0.01)


def test_successes_are_batched_to_the_breakers_until_a_failure_is_judged_or_a_tick(q: Owners) -> None:
    q.add(spec("a"), spec("b"), spec("c", max_attempts=2))
    q.admit(K1)
    q.admit(K2)
    q.place(K1, "a", "c")
    assert of(q.report(K1, q.outcome("a")), JudgeAttempts) == []
    assert of(q.report(K1, q.outcome("c", ok=False), now=1.0), JudgeAttempts) == []  # c's blame is unknown yet
    assert of(q.take(q.core.tick(0.5)), JudgeAttempts) == [JudgeAttempts([("w1", True)])]
    assert of(q.take(q.core.tick(0.6)), JudgeAttempts) == []  # nothing pending
    q.take(q.core.tick(100.0))
    q.place(K2, "b", "c", now=100.0)
    assert of(q.report(K2, q.outcome("b")), JudgeAttempts) == []
    # c works on w2, so its failure on w1 blames w1: that goes at once, with what waited.
    out = q.report(K2, q.outcome("c"))
    assert of(out, JudgeAttempts) == [JudgeAttempts([("w2", True), ("w2", True), ("w1", False)])]


def test_a_full_batch_of_successes_goes_to_the_breakers_without_waiting_for_a_tick() -> None:
    batch = 4096
    q = Owners(TasksConfig(max_pending_tasks=2 * batch))
    q.add(*(spec(f"t{i}") for i in range(batch + 1)))
    q.admit(K1)
    q.place(K1, *(f"t{i}" for i in range(batch + 1)))
    assert of(q.report(K1, *(q.outcome(f"t{i}") for i in range(batch - 1))), JudgeAttempts) == []
    (judge,) = of(q.report(K1, q.outcome(f"t{batch - 1}")), JudgeAttempts)
    assert judge.judgments == [("w1", True)] * batch
    assert of(q.report(K1, q.outcome(f"t{batch}")), JudgeAttempts) == []


# ----------------------------------------------------------------- after a restart


def test_a_result_of_an_in_doubt_attempt_from_an_admitted_worker_is_adopted_and_committed() -> None:
    """After our restart a worker re-registers with nothing running, then reports the outcome it held.

    The adopted attempt never occupied a slot the Dispatcher counted (AddWorker said running=0),
    so it must free none either: the harness's count would go below zero.
    """
    q = Owners()
    record = TaskRecord(spec("a"), 1, S.QUEUED, attempt=1, epoch=EPOCH - 1)
    q.take(q.core.restore([record], 0.0))
    q.reregister(K1, "w1", [], 1.0)
    q.report(K1, TaskOutcome("a", EPOCH - 1, 1, True, "kept", None, 0.1), now=2.0)
    assert q.state("a") is S.SUCCEEDED and q.task("a").value == "kept"
