"""RegistryCore driven directly with a fake clock: registration, heartbeats, suspicion, loss.

The registry owns incarnations, liveness, load and breakers; which tasks an incarnation
holds is the TaskQueue's fact (see ``test_core_ownership.py``).  So these tests assert the
orders the registry gives: ``AdmitWorker``/``ForgetWorker``/``ReconcileRunning``/``CheckHeld``
to the TaskQueue, ``AddWorker``/``RemoveWorker``/``UpdateLoad``/``SetAccepting`` to the Dispatcher.
"""

from __future__ import annotations

import pytest

from actorsched.config import LivenessConfig, PlacementConfig
from actorsched.core.commands import (
    AddWorker,
    AdmitWorker,
    CheckHeld,
    Command,
    ForgetWorker,
    ReconcileRunning,
    RemoveWorker,
    SendToWorker,
    SetAccepting,
    UpdateLoad,
)
from actorsched.core.registry import RegistryCore, WorkerState, load_score
from actorsched.protocol import AttemptRef, Refused, Register, Reregister, Shutdown, Welcome

EPOCH = 5
LIVENESS = LivenessConfig(heartbeat_interval_s=1.0, suspect_after_s=5.0, worker_timeout_s=15.0,
                          scan_interval_s=5.0, pause_threshold_s=3.0)
K1 = b"key-1"
K2 = b"key-2"


def register(worker_id: str = "w1", slots: int = 4, tags: list[str] | None = None,
             running: list[str] | None = None, prefetch: int = 0) -> Register:
    refs = [AttemptRef(t, EPOCH - 1, 1) for t in running or []]
    return Register(worker_id, "host-a", 1234, slots, tags or [], refs, prefetch)


@pytest.fixture
def registry() -> RegistryCore:
    return RegistryCore(LIVENESS, PlacementConfig(), EPOCH)


def of(commands: list[Command], kind: type) -> list[Command]:
    return [c for c in commands if isinstance(c, kind)]


def kinds(commands: list[Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


def open_breaker(registry: RegistryCore, worker_id: str, now: float) -> None:
    registry.judge([(worker_id, False)] * registry.breaker_config.min_attempts, now)


# ----------------------------------------------------------------- registration


def test_registration_is_welcomed_admitted_to_the_queue_and_announced_to_placement(registry: RegistryCore) -> None:
    out = registry.registered(K1, register("w1", 4, ["gpu"], prefetch=3), 0.0)
    assert out == [
        SendToWorker(K1, Welcome("w1", EPOCH, 1.0)),
        AdmitWorker(K1, "w1"),
        AddWorker(K1, "w1", 4, ("gpu",), 0, 3),
    ]
    assert registry.workers[K1].state is WorkerState.ALIVE
    assert registry.by_id["w1"] == K1


def test_a_re_registering_worker_reports_the_tasks_it_still_runs(registry: RegistryCore) -> None:
    out = registry.registered(K1, register("w1", 4, running=["t1", "t2"]), 0.0)
    (up,) = of(out, AddWorker)
    assert up.running == 2  # type: ignore[union-attr]
    # The queue decides which of them are current: the registry only passes the report on.
    assert of(out, ReconcileRunning) == [
        ReconcileRunning(K1, "w1", [AttemptRef("t1", EPOCH - 1, 1), AttemptRef("t2", EPOCH - 1, 1)])]
    assert kinds(out).index("AdmitWorker") < kinds(out).index("ReconcileRunning")


def test_a_worker_whose_breaker_is_open_registers_closed_for_new_tasks(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    open_breaker(registry, "w1", 1.0)
    registry.goodbye(K1)
    out = registry.registered(K2, register("w1"), 2.0)  # an open breaker outlives the connection
    assert of(out, SetAccepting) == [SetAccepting(K2, False)]
    assert kinds(out).index("AddWorker") < kinds(out).index("SetAccepting")


def test_a_closed_breaker_is_forgotten_when_its_worker_leaves(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.judge([("w1", True)], 1.0)
    registry.goodbye(K1)
    assert registry.breakers == {}
    assert of(registry.registered(K2, register("w1"), 2.0), SetAccepting) == []


# ----------------------------------------------------------------- heartbeats and liveness


def test_a_heartbeat_from_an_unknown_peer_asks_it_to_register_again(registry: RegistryCore) -> None:
    out = registry.heartbeat(b"stranger", 10.0, 20.0, 1.0)
    assert out == [SendToWorker(b"stranger", Reregister("unknown worker connection; register again"))]
    assert registry.counters["unknown_peer"] == 1
    assert registry.workers == {}


def test_a_heartbeat_reports_the_workers_load(registry: RegistryCore) -> None:
    registry.registered(K1, register(), 0.0)
    assert registry.heartbeat(K1, 30.0, 40.0, 1.0) == [UpdateLoad(K1, 30.0, 40.0)]
    assert registry.workers[K1].last_seen == 1.0


def test_a_heartbeat_listing_held_tasks_asks_the_queue_to_check_what_settled_two_intervals_ago(
        registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    out = registry.heartbeat(K1, 0.0, 0.0, 10.0, ["t1", "t2"])
    # Within two heartbeat intervals of its placement a task may simply not be listed yet.
    assert out == [UpdateLoad(K1, 0.0, 0.0), CheckHeld(K1, "w1", ["t1", "t2"], 10.0 - 2 * 1.0)]
    assert of(registry.heartbeat(K1, 0.0, 0.0, 11.0, []), CheckHeld) == [CheckHeld(K1, "w1", [], 9.0)]


def test_a_silent_worker_is_suspected_then_recovers_on_its_next_heartbeat(registry: RegistryCore) -> None:
    registry.registered(K1, register(), 0.0)
    assert registry.scan(5.0) == []  # exactly suspect_after_s is not yet suspect
    assert registry.scan(5.1) == [SetAccepting(K1, False)]
    assert registry.workers[K1].state is WorkerState.SUSPECT
    assert registry.scan(6.0) == []  # suspected once, not on every scan
    out = registry.heartbeat(K1, 0.0, 0.0, 7.0)
    assert SetAccepting(K1, True) in out
    assert registry.workers[K1].state is WorkerState.ALIVE
    assert registry.scan(11.0) == []


def test_any_message_from_a_suspect_worker_proves_it_alive(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w2"), 0.0)
    registry.scan(6.0)
    assert registry.seen([K1, b"stranger", K2], 7.0) == [SetAccepting(K1, True), SetAccepting(K2, True)]
    assert registry.workers[K1].last_seen == registry.workers[K2].last_seen == 7.0
    assert registry.seen([b"stranger"], 8.0) == []


def test_a_worker_silent_past_the_timeout_is_removed_and_the_queue_told_it_died(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w2"), 0.0)
    registry.heartbeat(K2, 0.0, 0.0, 14.0)
    assert registry.scan(15.0) == [SetAccepting(K1, False)]
    out = registry.scan(15.5)
    assert of(out, RemoveWorker) == [RemoveWorker(K1)]
    (gone,) = of(out, ForgetWorker)
    assert (gone.worker, gone.worker_id, gone.worker_died, gone.keep) == (  # type: ignore[union-attr]
        K1, "w1", True, frozenset())
    assert "silent" in gone.reason  # type: ignore[union-attr]
    assert set(registry.workers) == {K2} and "w1" not in registry.by_id


def test_a_lost_worker_leaves_placement_before_the_queue_requeues_what_it_held(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    # The Dispatcher must know it is gone before its tasks come back, or they go straight back to it.
    assert kinds(registry.scan(20.0)) == ["RemoveWorker", "ForgetWorker"]


def test_after_a_local_pause_no_worker_is_convicted_for_our_silence(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w2"), 0.0)
    registry.local_pause(60.0)  # we were stopped from ~0 s to 60 s
    assert registry.scan(60.0) == []
    assert registry.scan(65.0) == []
    assert set(registry.workers) == {K1, K2}
    assert registry.scan(65.1) == [SetAccepting(K1, False), SetAccepting(K2, False)]
    out = registry.scan(75.1)  # still silent a full timeout after the pause: now they are lost
    assert of(out, RemoveWorker) == [RemoveWorker(K1), RemoveWorker(K2)]


# ----------------------------------------------------------------- incarnations


def test_a_claim_on_a_live_workers_id_from_another_connection_is_refused_and_the_holder_keeps_it(
        registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.heartbeat(K1, 0.0, 0.0, 4.0)
    out = registry.registered(K2, register("w1"), 6.0)  # the holder was heard from 2 s ago
    (refusal,) = out
    assert isinstance(refusal, SendToWorker) and refusal.worker == K2
    assert isinstance(refusal.message, Refused)
    reason = refusal.message.reason
    assert "'w1'" in reason and "in use" in reason and "pid 1234" in reason and "--worker-id" in reason
    # Nothing happened to the holder: no Shutdown, no removal, no requeue.
    assert set(registry.workers) == {K1} and registry.by_id["w1"] == K1
    assert registry.counters["claims_refused"] == 1 and registry.counters["superseded"] == 0
    assert registry.heartbeat(K1, 0.0, 0.0, 7.0) == [UpdateLoad(K1, 0.0, 0.0)]
    # The refused connection is no worker: its heartbeats are from an unknown peer.
    assert isinstance(registry.heartbeat(K2, 0, 0, 7.0)[0].message, Reregister)  # type: ignore[union-attr]


def test_a_claim_is_refused_up_to_suspect_after_s_of_silence_and_welcomed_past_it(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    assert of(registry.registered(K2, register("w1"), 5.0), Welcome) == []  # exactly suspect_after_s: still live
    out = registry.registered(K2, register("w1"), 5.1)
    assert SendToWorker(K2, Welcome("w1", EPOCH, 1.0)) in out and RemoveWorker(K1) in out
    assert registry.by_id["w1"] == K2


def test_a_draining_worker_keeps_its_id_until_it_leaves(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.draining(K1, 1.0)
    assert [type(c.message) for c in of(registry.registered(K2, register("w1"), 2.0), SendToWorker)] == [  # type: ignore[attr-defined]
        Refused]
    registry.goodbye(K1)
    out = registry.registered(K2, register("w1"), 3.0)
    assert SendToWorker(K2, Welcome("w1", EPOCH, 1.0)) in out
    assert not [c for c in out if isinstance(c, SendToWorker) and isinstance(c.message, (Shutdown, Refused))]


def test_after_a_local_pause_a_claim_on_a_live_workers_id_is_still_refused(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.local_pause(60.0)  # our silence, not theirs
    assert [type(c.message) for c in of(registry.registered(K2, register("w1"), 61.0), SendToWorker)] == [  # type: ignore[attr-defined]
        Refused]


@pytest.mark.parametrize("gone", ["goodbye", "disconnected"])
def test_a_worker_back_on_a_new_connection_after_the_old_one_is_gone_is_welcomed_at_once(
        registry: RegistryCore, gone: str) -> None:
    registry.registered(K1, register("w1"), 0.0)
    getattr(registry, gone)(K1)
    out = registry.registered(K2, register("w1"), 0.5)
    assert SendToWorker(K2, Welcome("w1", EPOCH, 1.0)) in out and AdmitWorker(K2, "w1") in out
    assert registry.counters["claims_refused"] == 0


def test_a_registration_under_a_silent_workers_id_supersedes_the_old_incarnation(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.scan(5.1)  # SUSPECT: silent past suspect_after_s, e.g. a network cut or a frozen host
    out = registry.registered(K2, register("w1"), 6.0)
    assert RemoveWorker(K1) in out
    # A supersession is no death: nothing it held counts against its tasks.
    assert ForgetWorker(K1, "w1", "superseded by a new registration of w1", worker_died=False) in out
    (shutdown,) = [c for c in of(out, SendToWorker) if c.worker == K1]  # type: ignore[union-attr]
    assert isinstance(shutdown.message, Shutdown)  # type: ignore[union-attr]
    assert SendToWorker(K2, Welcome("w1", EPOCH, 1.0)) in out
    assert AdmitWorker(K2, "w1") in out and AddWorker(K2, "w1", 4, (), 0) in out
    assert set(registry.workers) == {K2} and registry.by_id["w1"] == K2
    assert registry.counters["superseded"] == 1
    # The old incarnation is fenced out: its heartbeats are from an unknown peer.
    assert isinstance(registry.heartbeat(K1, 0, 0, 7.0)[0].message, Reregister)  # type: ignore[union-attr]
    # And should it register again, the id is now the new, live incarnation's.
    assert [type(c.message) for c in of(registry.registered(K1, register("w1"), 7.0), SendToWorker)] == [  # type: ignore[attr-defined]
        Refused]


def test_a_superseding_registration_carries_over_what_it_reports_running(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    out = registry.registered(K2, register("w1", running=["t1"]), 6.0)
    (gone,) = of(out, ForgetWorker)
    assert gone.keep == frozenset({"t1"})  # type: ignore[union-attr]
    # The queue forgets the old incarnation (keeping t1) before the new one claims t1.
    assert kinds(out).index("ForgetWorker") < kinds(out).index("AdmitWorker") < kinds(out).index("ReconcileRunning")


def test_a_late_goodbye_from_a_superseded_incarnation_does_not_remove_the_new_one(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    registry.registered(K2, register("w1"), 6.0)
    assert registry.goodbye(K1) == [] and registry.disconnected(K1) == []
    assert set(registry.workers) == {K2} and registry.by_id["w1"] == K2


def test_a_registration_again_on_the_same_connection_replaces_the_record(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1", running=[]), 0.0)
    out = registry.registered(K1, register("w1", running=["t1"]), 1.0)
    assert of(out, RemoveWorker) == [RemoveWorker(K1)]
    assert of(out, ForgetWorker) == [
        ForgetWorker(K1, "w1", "re-registered on the same connection", worker_died=False, keep=frozenset({"t1"}))]
    assert not [c for c in out if isinstance(c, SendToWorker) and isinstance(c.message, Shutdown)]
    # Forgotten first, admitted again after: the new incarnation's held index starts afresh.
    assert kinds(out).index("ForgetWorker") < kinds(out).index("AdmitWorker")
    assert of(out, AddWorker) == [AddWorker(K1, "w1", 4, (), 1)]
    assert registry.workers[K1].last_seen == 1.0


def test_goodbye_removes_the_worker_at_once_without_counting_a_death(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    out = registry.goodbye(K1)
    # A drain is no death: its tasks are requeued without counting one against them.
    assert out == [RemoveWorker(K1), ForgetWorker(K1, "w1", "said goodbye", worker_died=False)]
    assert registry.workers == {} and registry.by_id == {}
    assert registry.counters["goodbyes"] == 1
    assert registry.goodbye(K1) == []


def test_a_closed_connection_removes_the_worker_at_once_as_a_death(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    assert registry.disconnected(K1) == [RemoveWorker(K1), ForgetWorker(K1, "w1", "its connection closed")]
    assert registry.disconnected(K1) == []


def test_a_draining_worker_gets_no_new_tasks_and_is_not_suspected(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    assert registry.draining(K1, 1.0) == [SetAccepting(K1, False)]
    assert registry.workers[K1].state is WorkerState.DRAINING
    assert registry.scan(10.0) == []
    assert registry.heartbeat(K1, 0.0, 0.0, 11.0) == [UpdateLoad(K1, 0.0, 0.0)]  # stays closed
    assert registry.draining(b"stranger", 1.0) == []


# ----------------------------------------------------------------- reads


def test_worker_infos_report_load_heartbeat_age_and_the_queues_counts(registry: RegistryCore) -> None:
    registry.registered(K2, register("w2", slots=2, tags=["gpu"]), 0.0)
    registry.registered(K1, register("w1", slots=4), 0.0)
    registry.heartbeat(K2, 50.0, 20.0, 1.0)
    infos = registry.infos(3.0, {K2: (1, 7)})  # (running, done) come from the TaskQueue, which owns them
    assert [i.worker_id for i in infos] == ["w1", "w2"]
    w1, w2 = infos
    assert (w2.running, w2.tasks_done, w2.slots, w2.tags, w2.state, w2.heartbeat_age_s) == (
        1, 7, 2, ["gpu"], "ALIVE", 2.0)
    assert w2.load_score == round(0.5 + 0.5 * 0.5 + 0.25 * 0.2, 3)
    assert (w1.running, w1.tasks_done, w1.breaker) == (0, 0, "closed")  # a worker the queue has no count for
    assert [i.running for i in registry.infos(3.0)] == [0, 0]


def test_stats_count_workers_slots_prefetch_and_events(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1", slots=4, prefetch=8), 0.0)
    registry.registered(K2, register("w2", slots=2), 0.0)
    registry.registered(b"key-3", register("w2", slots=1), 1.0)  # w2 is live: refused
    registry.heartbeat(K1, 0.0, 0.0, 5.5)
    registry.registered(b"key-3", register("w2", slots=1), 6.0)  # w2 silent past suspect_after_s: superseded
    stats = registry.stats()
    assert (stats["workers"], stats["slots"], stats["prefetch"]) == (2, 5, 8)
    assert (stats["registered"], stats["superseded"], stats["removed"], stats["claims_refused"]) == (3, 1, 1, 1)


def test_load_score_weighs_busy_slots_cpu_and_memory() -> None:
    config = PlacementConfig(running_weight=1.0, cpu_weight=0.5, memory_weight=0.25)
    assert load_score(0, 4, 0.0, 0.0, config) == 0.0
    assert load_score(2, 4, 100.0, 100.0, config) == pytest.approx(0.5 + 0.5 + 0.25)
    assert load_score(1, 0, 0.0, 0.0, config) == 1.0  # no division by zero


def test_a_judged_success_counts_for_its_workers_breaker(registry: RegistryCore) -> None:
    registry.registered(K1, register("w1"), 0.0)
    assert registry.judge([("w1", True)], 1.0) == []
    breaker = registry.breakers["w1"]
    assert (breaker.attempts, breaker.failures) == (1, 0)
