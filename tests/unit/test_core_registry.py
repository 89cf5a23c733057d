"""RegistryCore driven directly with a fake clock: registration, heartbeats, suspicion, loss."""

from __future__ import annotations

import pytest

from actorsched.config import LivenessConfig, PlacementConfig
from actorsched.core.commands import (
    Command,
    RequeueLost,
    SendToWorker,
    SlotsFreed,
    WorkerAccepting,
    WorkerDown,
    WorkerLoad,
    WorkerUp,
)
from actorsched.core.registry import RegistryCore, WorkerState, load_score
from actorsched.protocol import AttemptRef, ErrorInfo, Register, Reregister, Shutdown, TaskOutcome, Welcome

EPOCH = 5
LIVENESS = LivenessConfig(heartbeat_interval_s=1.0, suspect_after_s=5.0, worker_timeout_s=15.0,
                          scan_interval_s=5.0, pause_threshold_s=3.0)
K1 = b"key-1"
K2 = b"key-2"


def register(worker_id: str = "w1", slots: int = 4, tags: list[str] | None = None,
             running: list[str] | None = None) -> Register:
    refs = [AttemptRef(t, EPOCH - 1, 1) for t in running or []]
    return Register(worker_id, "host-a", 1234, slots, tags or [], refs)


@pytest.fixture
def registry() -> RegistryCore:
    return RegistryCore(LIVENESS, PlacementConfig(), EPOCH)


def of(commands: list[Command], kind: type) -> list[Command]:
    return [c for c in commands if isinstance(c, kind)]


def test_registration_is_welcomed_and_announced_to_placement(registry: RegistryCore) -> None:
    out = registry.registered(K1, register("w1", 4, ["gpu"]), 0.0)
    assert of(out, SendToWorker) == [SendToWorker(K1, Welcome("w1", EPOCH, 1.0))]
    assert of(out, WorkerUp) == [WorkerUp(K1, "w1", 4, ("gpu",), 0)]
    assert registry.workers[K1].state is WorkerState.ALIVE
    assert registry.by_id["w1"] == K1


def test_a_re_registering_worker_reports_the_tasks_it_still_runs(registry: RegistryCore) -> None:
    out = registry.registered(K1, register("w1", 4, running=["t1", "t2"]), 0.0)
    (up,) = of(out, WorkerUp)
    assert up.running == 2  # type: ignore[union-attr]
    assert set(registry.workers[K1].running) == {"t1", "t2"}


def test_a_heartbeat_from_an_unknown_peer_asks_it_to_register_again(registry: RegistryCore) -> None:
    out = registry.heartbeat(b"stranger", 10.0, 20.0, 1.0)
    assert out == [SendToWorker(b"stranger", Reregister("unknown worker connection; register again"))]
    assert registry.counters["unknown_peer"] == 1
    assert registry.workers == {}


def test_a_heartbeat_reports_the_workers_load(registry: RegistryCore) -> None:
    registry.registered(K1, register(), 0.0)
    assert registry.heartbeat(K1, 30.0, 40.0, 1.0) == [WorkerLoad(K1, 30.0, 40.0)]
    assert registry.workers[K1].last_seen == 1.0


def test_a_silent_worker_is_suspected_then_recovers_on_its_next_heartbeat(registry: RegistryCore) -> None:
    registry.registered(K1, register(), 0.0)
    assert registry.scan(5.0) == []  # exactly suspect_after_s is not yet suspect
    assert registry.scan(5.1) == [WorkerAccepting(K1, False)]
    assert registry.workers[K1].state is WorkerState.SUSPECT
    assert registry.scan(6.0) == []  # suspected once, not on every scan
    out = registry.heartbeat(K1, 0.0, 0.0, 7.0)
    assert WorkerAccepting(K1, True) in out
    assert registry.workers[K1].state is WorkerState.ALIVE
    assert registry.scan(11.0) == []


def test_any_message_from_a_suspect_worker_proves_it_alive(registry: RegistryCore) -> None:
    registry.registered(K1, register(), 0.0)
    registry.scan(6.0)
    assert registry.seen(K1, 7.0) == [WorkerAccepting(K1, True)]
    assert registry.seen(b"stranger", 7.0) == []


def test_a_worker_silent_past_the_timeout_is_lost_and_its_tasks_requeued(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w2"), 0.0)
    registry.tasks_assigned(K1, "w1", ["t2", "t1"])
    registry.heartbeat(K2, 0.0, 0.0, 14.0)
    assert registry.scan(15.0) == [WorkerAccepting(K1, False)]
    out = registry.scan(15.5)
    assert of(out, WorkerDown) == [WorkerDown(K1)]
    (lost,) = of(out, RequeueLost)
    assert (lost.worker, lost.worker_id, lost.task_ids) == (K1, "w1", ["t1", "t2"])  # type: ignore[union-attr]
    assert "silent" in lost.reason  # type: ignore[union-attr]
    assert set(registry.workers) == {K2} and "w1" not in registry.by_id


def test_a_lost_worker_without_tasks_is_removed_without_a_requeue(registry: RegistryCore) -> None:
    registry.registered(K1, register(), 0.0)
    assert registry.scan(20.0) == [WorkerDown(K1)]


def test_after_a_local_pause_no_worker_is_convicted_for_our_silence(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w2"), 0.0)
    registry.tasks_assigned(K1, "w1", ["t1"])
    registry.local_pause(60.0)  # we were stopped from ~0 s to 60 s
    assert registry.scan(60.0) == []
    assert registry.scan(65.0) == []
    assert set(registry.workers) == {K1, K2}
    assert registry.scan(65.1) == [WorkerAccepting(K1, False), WorkerAccepting(K2, False)]
    out = registry.scan(75.1)  # still silent a full timeout after the pause: now they are lost
    assert of(out, WorkerDown) == [WorkerDown(K1), WorkerDown(K2)]


def test_a_second_registration_of_a_worker_id_supersedes_the_old_incarnation(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.tasks_assigned(K1, "w1", ["t1"])
    out = registry.registered(K2, register("w1"), 1.0)
    assert WorkerDown(K1) in out
    assert RequeueLost(K1, "w1", ["t1"], "superseded by a new registration of w1", worker_died=False) in out
    (shutdown,) = [c for c in of(out, SendToWorker) if c.worker == K1]  # type: ignore[union-attr]
    assert isinstance(shutdown.message, Shutdown)  # type: ignore[union-attr]
    assert SendToWorker(K2, Welcome("w1", EPOCH, 1.0)) in out
    assert WorkerUp(K2, "w1", 4, (), 0) in out
    assert set(registry.workers) == {K2} and registry.by_id["w1"] == K2
    assert registry.counters["superseded"] == 1
    # The old incarnation is fenced out: its heartbeats are from an unknown peer.
    assert isinstance(registry.heartbeat(K1, 0, 0, 2.0)[0].message, Reregister)  # type: ignore[union-attr]


def test_a_registration_again_on_the_same_connection_replaces_the_record(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1", running=[]), 0.0)
    registry.tasks_assigned(K1, "w1", ["t1"])
    out = registry.registered(K1, register("w1", running=["t1"]), 1.0)
    assert of(out, WorkerDown) == [WorkerDown(K1)]
    assert not [c for c in out if isinstance(c, SendToWorker) and isinstance(c.message, Shutdown)]
    assert set(registry.workers[K1].running) == {"t1"}


def test_finished_tasks_free_slots_only_for_tasks_the_worker_held(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w2"), 0.0)
    registry.tasks_assigned(K1, "w1", ["t1", "t2"])
    registry.tasks_assigned(K2, "w2", ["t3"])
    out = registry.tasks_finished(K1, outcomes("t1", "t3", "ghost"), 1.0)
    assert out == [SlotsFreed(K1, 1)]
    assert set(registry.workers[K1].running) == {"t2"} and registry.workers[K1].tasks_done == 1
    assert registry.tasks_finished(K1, outcomes("t1"), 2.0) == []  # a duplicate frees nothing
    assert registry.tasks_finished(b"stranger", outcomes("t3"), 2.0) == []
    assert set(registry.workers[K2].running) == {"t3"}


def test_an_assignment_to_a_worker_that_already_left_is_handed_back(registry: RegistryCore) -> None:
    out = registry.tasks_assigned(K1, "w1", ["t1", "t2"])
    assert out == [RequeueLost(K1, "w1", ["t1", "t2"], "worker left before the assignment reached it")]


def test_goodbye_removes_the_worker_at_once_and_requeues_its_tasks(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.tasks_assigned(K1, "w1", ["t1"])
    out = registry.goodbye(K1)
    # A drain is no death: the tasks are requeued without counting one against them.
    assert out == [WorkerDown(K1), RequeueLost(K1, "w1", ["t1"], "said goodbye", worker_died=False)]
    assert registry.workers == {} and registry.by_id == {}
    assert registry.goodbye(K1) == []


def test_a_closed_connection_removes_the_worker_at_once(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    assert registry.disconnected(K1) == [WorkerDown(K1)]
    assert registry.disconnected(K1) == []


def test_a_draining_worker_gets_no_new_tasks_and_is_not_suspected(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    assert registry.draining(K1, 1.0) == [WorkerAccepting(K1, False)]
    assert registry.workers[K1].state is WorkerState.DRAINING
    assert registry.scan(10.0) == []
    assert registry.heartbeat(K1, 0.0, 0.0, 11.0) == [WorkerLoad(K1, 0.0, 0.0)]  # stays closed
    assert registry.draining(b"stranger", 1.0) == []


def test_worker_infos_report_load_and_heartbeat_age(registry: RegistryCore) -> None:
    registry.registered(K2, register("w2", slots=2, tags=["gpu"]), 0.0)
    registry.registered(K1, register("w1", slots=4), 0.0)
    registry.tasks_assigned(K2, "w2", ["t1"])
    registry.heartbeat(K2, 50.0, 20.0, 1.0)
    infos = registry.infos(3.0)
    assert [i.worker_id for i in infos] == ["w1", "w2"]
    w2 = infos[1]
    assert (w2.running, w2.slots, w2.tags, w2.state, w2.heartbeat_age_s) == (1, 2, ["gpu"], "ALIVE", 2.0)
    assert w2.load_score == round(0.5 + 0.5 * 0.5 + 0.25 * 0.2, 3)
    assert registry.stats()["workers"] == 2 and registry.stats()["running"] == 1


def test_load_score_weighs_busy_slots_cpu_and_memory() -> None:
    config = PlacementConfig(running_weight=1.0, cpu_weight=0.5, memory_weight=0.25)
    assert load_score(0, 4, 0.0, 0.0, config) == 0.0
    assert load_score(2, 4, 100.0, 100.0, config) == pytest.approx(0.5 + 0.5 + 0.25)
    assert load_score(1, 0, 0.0, 0.0, config) == 1.0  # no division by zero


def test_a_task_the_heartbeat_does_not_list_is_requeued_once_its_assignment_has_settled() -> None:
    registry = RegistryCore(LivenessConfig(), PlacementConfig(), epoch=1)
    registry.registered(K1, Register("w1", "h", 1, 2, [], []), 0.0)
    registry.tasks_assigned(K1, "w1", ["lost", "kept"], 1.0)
    registry.tasks_assigned(K1, "w1", ["fresh"], 9.5)
    # Within two heartbeat intervals of its placement a task may simply not be listed yet.
    assert not [c for c in registry.heartbeat(K1, 0.0, 0.0, 2.5, ["kept"]) if isinstance(c, RequeueLost)]
    out = registry.heartbeat(K1, 0.0, 0.0, 10.0, ["kept"])
    (lost,) = [c for c in out if isinstance(c, RequeueLost)]
    assert lost.task_ids == ["lost"] and not lost.worker_died and "lost" in lost.reason
    assert SlotsFreed(K1, 1) in out
    assert set(registry.workers[K1].running) == {"kept", "fresh"}


def outcomes(*task_ids: str) -> list[TaskOutcome]:
    return [TaskOutcome(task_id, 1, 1, False, None, ErrorInfo("RuntimeError", "x"), 0.0) for task_id in task_ids]


def test_a_success_reported_by_a_worker_counts_for_its_breaker() -> None:
    registry = RegistryCore(LivenessConfig(), PlacementConfig(), epoch=1)
    registry.registered(K1, Register("w1", "h", 1, 2, [], []), 0.0)
    registry.tasks_assigned(K1, "w1", ["t1"], 0.0)
    registry.tasks_finished(K1, [TaskOutcome("t1", 1, 1, True, 1, None, 0.0)], 1.0)
    assert list(registry.breakers["w1"].judged) == [(1.0, True)]
