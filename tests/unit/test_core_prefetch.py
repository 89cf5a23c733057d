"""DispatcherCore with prefetch: short tasks may wait in a worker's own queue, long ones need a free slot.

Pure: ready tasks, capacity orders and a fake ``now`` in, placements and take-backs out.
"""

from __future__ import annotations

import itertools

import pytest

from actorsched.config import PlacementConfig
from actorsched.core.commands import Placement, ReadyTask, TakeBack
from actorsched.core.placement import TAKE_BACK_INTERVAL_S, DispatcherCore

K1, K2, K3 = b"key-1", b"key-2", b"key-3"
_seq = itertools.count(1)


def ready(task_id: str, priority: int = 0, short: bool = False, since: float = 0.0,
          seq: int | None = None) -> ReadyTask:
    return ReadyTask(task_id, priority, next(_seq) if seq is None else seq, 1, 1, "m:f", [], {}, None, (), since,
                     since=since, short=short)


def shorts(prefix: str, count: int, priority: int = 0) -> list[ReadyTask]:
    return [ready(f"{prefix}{i}", priority, short=True) for i in range(count)]


def longs(prefix: str, count: int, priority: int = 0) -> list[ReadyTask]:
    return [ready(f"{prefix}{i}", priority) for i in range(count)]


def placed_ids(placements: list[Placement]) -> list[str]:
    return [t.task_id for p in placements for t in p.tasks]


def by_worker(placements: list[Placement]) -> dict[bytes, list[str]]:
    out: dict[bytes, list[str]] = {}
    for p in placements:
        out.setdefault(p.worker, []).extend(t.task_id for t in p.tasks)
    return out


@pytest.fixture
def dispatcher() -> DispatcherCore:
    return DispatcherCore(PlacementConfig(aging_s_per_priority=0.0))  # strict priority; aging is tested apart


# ----------------------------------------------------------------- slots and prefetch room


def test_a_worker_with_one_slot_and_prefetch_four_takes_five_short_tasks_but_only_one_long_one(
        dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 1, (), 0, prefetch=4)
    dispatcher.tasks_ready(shorts("s", 7))
    assert placed_ids(dispatcher.dispatch()) == ["s0", "s1", "s2", "s3", "s4"]
    assert dispatcher.workers[K1].outstanding == 5 and dispatcher.dispatch() == []

    dispatcher = DispatcherCore(PlacementConfig(aging_s_per_priority=0.0))
    dispatcher.worker_up(K1, "w1", 1, (), 0, prefetch=4)
    dispatcher.tasks_ready(longs("l", 3))
    assert placed_ids(dispatcher.dispatch()) == ["l0"]
    assert dispatcher.dispatch() == []  # prefetch room is for short tasks only
    dispatcher.slots_freed(K1, 1)
    assert placed_ids(dispatcher.dispatch()) == ["l1"]


def test_a_long_task_waits_while_short_ones_fill_the_prefetch_room(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 2, (), 0, prefetch=2)
    dispatcher.tasks_ready([ready("long", 1), *shorts("s", 4, 0)])  # the shorts come first by priority
    assert by_worker(dispatcher.dispatch()) == {K1: ["s0", "s1", "s2", "s3"]}
    assert dispatcher.workers[K1].free == -2 and "long" in dispatcher.entries
    dispatcher.slots_freed(K1, 3)  # one slot free again
    assert placed_ids(dispatcher.dispatch()) == ["long"]


def test_a_long_task_goes_to_a_worker_with_a_free_slot_even_if_a_full_one_scores_lower(
        dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 4, (), 4, prefetch=4)  # every slot busy; score 1.0
    dispatcher.worker_up(K2, "w2", 2, (), 1)  # a free slot, but busy and loaded; score 0.5 + 0.5 + 0.25
    dispatcher.worker_load(K2, 100.0, 100.0)
    dispatcher.tasks_ready([ready("long")])
    assert by_worker(dispatcher.dispatch()) == {K2: ["long"]}
    dispatcher.tasks_ready([ready("short", short=True)])
    assert by_worker(dispatcher.dispatch()) == {K1: ["short"]}  # a short one takes the lower score


def test_a_worker_without_prefetch_takes_short_tasks_only_into_free_slots(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 2, (), 0)
    dispatcher.tasks_ready(shorts("s", 5))
    assert placed_ids(dispatcher.dispatch()) == ["s0", "s1"]


def test_a_probe_worker_takes_one_task_and_no_prefetch(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 4, (), 0, prefetch=4)
    dispatcher.worker_accepting(K1, True, probe=True)  # half-open breaker
    dispatcher.tasks_ready(shorts("s", 5))
    assert placed_ids(dispatcher.dispatch()) == ["s0"]
    assert dispatcher.dispatch() == []
    dispatcher.worker_accepting(K1, True, probe=False)  # closed again: slots and prefetch
    assert len(placed_ids(dispatcher.dispatch())) == 4
    dispatcher = DispatcherCore(PlacementConfig(aging_s_per_priority=0.0))
    dispatcher.worker_up(K1, "w1", 4, (), 0, prefetch=4)
    dispatcher.worker_accepting(K1, True, probe=True)
    dispatcher.tasks_ready(longs("l", 2))
    assert placed_ids(dispatcher.dispatch()) == ["l0"]


# ----------------------------------------------------------------- order across the two heaps


def test_priority_order_holds_across_the_short_and_the_long_heaps(dispatcher: DispatcherCore) -> None:
    dispatcher.tasks_ready([ready("long-p2", 2), ready("short-p0", 0, short=True), ready("long-p1", 1),
                            ready("short-p3", 3, short=True), ready("short-p1", 1, short=True)])
    dispatcher.worker_up(K1, "w1", 8, (), 0)
    assert placed_ids(dispatcher.dispatch()) == ["short-p0", "long-p1", "short-p1", "long-p2", "short-p3"]


def test_submit_order_holds_across_the_two_heaps_within_a_priority(dispatcher: DispatcherCore) -> None:
    dispatcher.tasks_ready([ready("first", short=True), ready("second"), ready("third", short=True),
                            ready("fourth")])
    dispatcher.worker_up(K1, "w1", 1, (), 0)
    order = []
    for _ in range(4):
        order += placed_ids(dispatcher.dispatch())
        dispatcher.slots_freed(K1, 1)
    assert order == ["first", "second", "third", "fourth"]


def test_a_task_that_kept_its_place_in_line_goes_before_newer_tasks_of_its_priority() -> None:
    dispatcher = DispatcherCore(PlacementConfig(aging_s_per_priority=60.0))
    # Requeued after its worker died: a later submit order, but its place in line from t=0.
    dispatcher.tasks_ready([ready("newer", since=10.0, seq=1), ready("rerun", since=0.0, seq=2)])
    dispatcher.worker_up(K1, "w1", 1, (), 0)
    assert placed_ids(dispatcher.dispatch()) == ["rerun"]


def test_a_better_priority_short_task_made_ready_later_waits_behind_at_most_the_prefetch_depth(
        dispatcher: DispatcherCore) -> None:
    slots, prefetch = 1, 4
    dispatcher.worker_up(K1, "w1", slots, (), 0, prefetch=prefetch)
    dispatcher.tasks_ready(shorts("low", 20, priority=5))
    assert len(placed_ids(dispatcher.dispatch())) == slots + prefetch
    dispatcher.tasks_ready([ready("urgent", 0, short=True)])
    dispatcher.slots_freed(K1, 1)
    ahead = dispatcher.workers[K1].outstanding
    # The promise: placed in the first round with room, before any worse task, so on its
    # worker no more than ``prefetch`` unstarted tasks are ahead of it.
    assert placed_ids(dispatcher.dispatch()) == ["urgent"]
    assert ahead - slots <= prefetch


def test_a_better_priority_long_task_made_ready_later_is_not_overtaken_by_worse_short_tasks(
        dispatcher: DispatcherCore) -> None:
    slots, prefetch = 1, 4
    dispatcher.worker_up(K1, "w1", slots, (), 0, prefetch=prefetch)
    dispatcher.tasks_ready(shorts("low", 20, priority=5))
    dispatcher.dispatch()
    dispatcher.tasks_ready([ready("urgent-long", 0)])
    overtook: list[str] = []
    for _ in range(slots + prefetch):  # at worst, everything already on the worker finishes first
        dispatcher.slots_freed(K1, 1)
        placed = placed_ids(dispatcher.dispatch())
        if "urgent-long" in placed:
            break
        overtook += placed
    assert overtook == [] and "urgent-long" not in dispatcher.entries


# ----------------------------------------------------------------- take-back


def fill(dispatcher: DispatcherCore, key: bytes, worker_id: str, slots: int, prefetch: int) -> None:
    """A worker holding ``slots + prefetch`` short tasks."""
    dispatcher.worker_up(key, worker_id, slots, (), 0, prefetch=prefetch)
    dispatcher.tasks_ready(shorts(f"{worker_id}-", slots + prefetch))
    assert len(placed_ids(dispatcher.dispatch())) == slots + prefetch


def test_take_backs_ask_the_fullest_holder_for_half_its_excess_when_another_worker_is_idle(
        dispatcher: DispatcherCore) -> None:
    fill(dispatcher, K1, "w1", 1, 4)  # excess 4
    fill(dispatcher, K2, "w2", 1, 2)  # excess 2
    assert dispatcher.take_backs(1.0) == []  # no one idle
    dispatcher.worker_up(K3, "w3", 1, (), 0)
    assert dispatcher.take_backs(1.0) == [TakeBack(K1, 2)]  # one idle worker: one request, to the fullest
    assert dispatcher.take_back_requests == 1


def test_take_backs_ask_as_many_holders_as_workers_sit_idle(dispatcher: DispatcherCore) -> None:
    fill(dispatcher, K1, "w1", 1, 3)  # excess 3: half rounds up
    fill(dispatcher, K2, "w2", 2, 2)  # excess 2
    dispatcher.worker_up(K3, "w3", 1, (), 0)
    dispatcher.worker_up(b"key-4", "w4", 1, (), 0)
    assert dispatcher.take_backs(1.0) == [TakeBack(K1, 2), TakeBack(K2, 1)]


def test_no_take_back_while_tasks_wait_to_be_placed(dispatcher: DispatcherCore) -> None:
    fill(dispatcher, K1, "w1", 1, 4)
    dispatcher.worker_up(K2, "w2", 1, (), 0)
    dispatcher.tasks_ready([ready("waiting")])  # not yet dispatched
    assert dispatcher.take_backs(1.0) == []  # the idle worker gets the waiting task instead
    assert by_worker(dispatcher.dispatch()) == {K2: ["waiting"]}


def test_no_take_back_from_a_worker_holding_less_than_two_beyond_its_slots(dispatcher: DispatcherCore) -> None:
    fill(dispatcher, K1, "w1", 2, 1)
    dispatcher.worker_up(K2, "w2", 1, (), 0)
    assert dispatcher.take_backs(1.0) == []


def test_an_idle_worker_that_is_closed_asks_for_nothing(dispatcher: DispatcherCore) -> None:
    fill(dispatcher, K1, "w1", 1, 4)
    dispatcher.worker_up(K2, "w2", 1, (), 0)
    dispatcher.worker_accepting(K2, False)
    assert dispatcher.take_backs(1.0) == []


def test_a_holder_is_not_asked_twice_within_the_take_back_interval(dispatcher: DispatcherCore) -> None:
    fill(dispatcher, K1, "w1", 1, 4)
    dispatcher.worker_up(K2, "w2", 1, (), 0)
    assert dispatcher.take_backs(1.0) == [TakeBack(K1, 2)]
    assert dispatcher.take_backs(1.0 + TAKE_BACK_INTERVAL_S / 2) == []  # the answer may be on its way
    assert dispatcher.take_backs(1.0 + TAKE_BACK_INTERVAL_S) == [TakeBack(K1, 2)]
