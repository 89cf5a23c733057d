"""DispatcherCore driven directly: the ready heap, free capacity and the placement policy."""

from __future__ import annotations

import itertools

import pytest

from actorsched.config import PlacementConfig
from actorsched.core.commands import Placement, ReadyTask
from actorsched.core.placement import DispatcherCore

K1, K2, K3 = b"key-1", b"key-2", b"key-3"
_seq = itertools.count(1)


def ready(task_id: str, priority: int = 0, ready_at: float = 0.0, tags: tuple[str, ...] = (),
          attempt: int = 1) -> ReadyTask:
    return ReadyTask(task_id, priority, next(_seq), attempt, 1, "m:f", [], {}, None, tags, ready_at, since=ready_at)


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


def test_nothing_is_placed_without_workers_or_without_tasks(dispatcher: DispatcherCore) -> None:
    assert dispatcher.dispatch() == []
    dispatcher.tasks_ready([ready("a")])
    assert dispatcher.dispatch() == []
    assert "a" in dispatcher.entries  # it waits for capacity


def test_a_smaller_priority_runs_first_and_fifo_within_a_priority(dispatcher: DispatcherCore) -> None:
    dispatcher.tasks_ready([ready("p5-first", 5), ready("p0-first", 0), ready("pm3", -3),
                            ready("p0-second", 0), ready("p5-second", 5)])
    order = []
    dispatcher.worker_up(K1, "w1", 1, (), 0)
    for _ in range(5):
        (placement,) = dispatcher.dispatch()
        order += [t.task_id for t in placement.tasks]
        dispatcher.slots_freed(K1, 1)
    assert order == ["pm3", "p0-first", "p0-second", "p5-first", "p5-second"]


def test_a_worker_never_gets_more_tasks_than_its_free_slots(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 3, (), 1)  # registered already running one task
    dispatcher.worker_up(K2, "w2", 1, (), 0)
    dispatcher.tasks_ready([ready(f"t{i}") for i in range(10)])
    placements = dispatcher.dispatch()
    counts = {k: len(v) for k, v in by_worker(placements).items()}
    assert counts == {K1: 2, K2: 1}
    assert len(dispatcher.entries) == 7 and dispatcher.free_slots() == 0
    assert dispatcher.dispatch() == []


def test_freed_slots_restore_capacity(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 2, (), 0)
    dispatcher.tasks_ready([ready(f"t{i}") for i in range(5)])
    assert len(placed_ids(dispatcher.dispatch())) == 2
    dispatcher.slots_freed(K1, 1)
    assert placed_ids(dispatcher.dispatch()) == ["t2"]
    dispatcher.slots_freed(K1, 5)  # more than outstanding never goes negative
    assert dispatcher.workers[K1].outstanding == 0
    assert placed_ids(dispatcher.dispatch()) == ["t3", "t4"]
    dispatcher.slots_freed(b"gone", 1)  # an unknown worker is ignored


def test_the_worker_with_the_lowest_load_score_wins() -> None:
    dispatcher = DispatcherCore(PlacementConfig(running_weight=1.0, cpu_weight=0.5, memory_weight=0.25))
    dispatcher.worker_up(K1, "busy-slots", 4, (), 2)  # 0.5
    dispatcher.worker_up(K2, "busy-cpu", 4, (), 0)
    dispatcher.worker_load(K2, 80.0, 0.0)  # 0.4
    dispatcher.worker_up(K3, "busy-memory", 4, (), 0)
    dispatcher.worker_load(K3, 0.0, 100.0)  # 0.25
    dispatcher.tasks_ready([ready("a")])
    assert by_worker(dispatcher.dispatch()) == {K3: ["a"]}


def test_load_reports_change_the_choice_of_worker(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 4, (), 0)
    dispatcher.worker_up(K2, "w2", 4, (), 0)
    dispatcher.worker_load(K1, 90.0, 90.0)
    dispatcher.tasks_ready([ready("a")])
    assert by_worker(dispatcher.dispatch()) == {K2: ["a"]}
    dispatcher.worker_load(b"gone", 1.0, 1.0)  # an unknown worker is ignored


def test_a_batch_spreads_across_equal_workers(dispatcher: DispatcherCore) -> None:
    for key in (K1, K2, K3):
        dispatcher.worker_up(key, key.decode(), 4, (), 0)
    dispatcher.tasks_ready([ready(f"t{i}") for i in range(6)])
    counts = {k: len(v) for k, v in by_worker(dispatcher.dispatch()).items()}
    assert counts == {K1: 2, K2: 2, K3: 2}
    assert dispatcher.placed == 6


def test_placements_are_cut_into_assign_batches() -> None:
    dispatcher = DispatcherCore(PlacementConfig(max_assign_batch=2))
    dispatcher.worker_up(K1, "w1", 5, (), 0)
    dispatcher.tasks_ready([ready(f"t{i}") for i in range(5)])
    placements = dispatcher.dispatch()
    assert [len(p.tasks) for p in placements] == [2, 2, 1]
    assert all(p.worker == K1 for p in placements)


def test_a_tagged_task_goes_only_to_a_worker_with_all_its_tags(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "plain", 4, (), 0)
    dispatcher.worker_up(K2, "gpu-only", 4, ("gpu",), 0)
    dispatcher.worker_up(K3, "gpu-ssd", 4, ("gpu", "ssd", "x"), 3)  # busiest, but the only match
    dispatcher.tasks_ready([ready("needs-both", tags=("gpu", "ssd")), ready("needs-gpu", tags=("gpu",))])
    assert by_worker(dispatcher.dispatch()) == {K3: ["needs-both"], K2: ["needs-gpu"]}


def test_an_unplaceable_tagged_task_does_not_block_untagged_tasks_behind_it(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 2, (), 0)
    dispatcher.tasks_ready([ready("tpu", priority=-10, tags=("tpu",)), ready("a"), ready("b")])
    assert sorted(placed_ids(dispatcher.dispatch())) == ["a", "b"]
    assert "tpu" in dispatcher.entries
    dispatcher.worker_up(K2, "tpu-box", 1, ("tpu",), 0)
    assert by_worker(dispatcher.dispatch()) == {K2: ["tpu"]}


def test_withdrawn_tasks_are_not_placed(dispatcher: DispatcherCore) -> None:
    dispatcher.tasks_ready([ready("a"), ready("b")])
    dispatcher.tasks_withdrawn(["a", "ghost"])
    dispatcher.worker_up(K1, "w1", 4, (), 0)
    assert placed_ids(dispatcher.dispatch()) == ["b"]


def test_a_superseded_attempt_is_not_placed(dispatcher: DispatcherCore) -> None:
    dispatcher.tasks_ready([ready("a", attempt=1)])
    dispatcher.tasks_withdrawn(["a"])
    dispatcher.tasks_ready([ready("a", attempt=2)])
    dispatcher.worker_up(K1, "w1", 4, (), 0)
    (placement,) = dispatcher.dispatch()
    assert [(t.task_id, t.attempt) for t in placement.tasks] == [("a", 2)]


def test_a_worker_not_accepting_gets_nothing_until_reopened(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 4, (), 0)
    dispatcher.worker_accepting(K1, False)
    dispatcher.tasks_ready([ready("a")])
    assert dispatcher.dispatch() == [] and dispatcher.free_slots() == 0
    dispatcher.worker_accepting(K1, True)
    assert placed_ids(dispatcher.dispatch()) == ["a"]


def test_a_worker_that_went_down_gets_nothing(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 4, (), 0)
    dispatcher.worker_up(K2, "w2", 4, (), 0)
    dispatcher.worker_down(K1)
    dispatcher.tasks_ready([ready("a"), ready("b")])
    assert by_worker(dispatcher.dispatch()) == {K2: ["a", "b"]}


def test_without_aging_a_low_priority_task_waits_behind_every_newer_high_priority_one(
    dispatcher: DispatcherCore,
) -> None:
    dispatcher.tasks_ready([ready("old-low", priority=5, ready_at=0.0)])
    dispatcher.tasks_ready([ready("new-high", priority=0, ready_at=1_000_000.0)])
    dispatcher.worker_up(K1, "w1", 1, (), 0)
    assert placed_ids(dispatcher.dispatch()) == ["new-high"]


@pytest.mark.parametrize("aging_s", [1.0, 2.5, 10.0])
def test_with_aging_an_old_low_priority_task_overtakes_newer_high_priority_ones_after_a_bound(
    aging_s: float,
) -> None:
    # A task ages one priority level per aging_s seconds, so a task of priority p_low that
    # became ready at t0 runs before every task of priority p_high < p_low that becomes
    # ready after t0 + aging_s * (p_low - p_high): that is the starvation bound.
    p_low, p_high, t0 = 5, 0, 100.0
    bound = t0 + aging_s * (p_low - p_high)
    for newer_at, old_wins in [(t0, False), (bound - 0.01 * aging_s, False), (bound + 0.01 * aging_s, True)]:
        dispatcher = DispatcherCore(PlacementConfig(aging_s_per_priority=aging_s))
        dispatcher.tasks_ready([ready("old-low", priority=p_low, ready_at=t0)])
        dispatcher.tasks_ready([ready(f"new-high-{i}", priority=p_high, ready_at=newer_at) for i in range(3)])
        dispatcher.worker_up(K1, "w1", 1, (), 0)
        first = placed_ids(dispatcher.dispatch())
        assert (first == ["old-low"]) is old_wins, (newer_at, first)


def test_aging_is_on_by_default_with_a_bound_of_a_minute_per_priority_level() -> None:
    assert PlacementConfig().aging_s_per_priority == 60.0


def test_with_aging_priority_still_orders_tasks_that_became_ready_together() -> None:
    dispatcher = DispatcherCore(PlacementConfig(aging_s_per_priority=1.0))
    dispatcher.tasks_ready([ready("low", 3, 50.0), ready("high", 1, 50.0), ready("mid", 2, 50.0)])
    dispatcher.worker_up(K1, "w1", 3, (), 0)
    assert placed_ids(dispatcher.dispatch()) == ["high", "mid", "low"]


def test_a_tagged_task_taking_a_middle_worker_keeps_every_slot_count_right(dispatcher: DispatcherCore) -> None:
    dispatcher.worker_up(K1, "w1", 2, (), 0)
    dispatcher.worker_up(K2, "w2", 1, ("gpu",), 0)
    dispatcher.worker_up(K3, "w3", 2, (), 0)
    dispatcher.worker_load(K1, 10.0, 0.0)  # so that the gpu worker is not the least loaded
    dispatcher.tasks_ready([ready("gpu-1", tags=("gpu",)), ready("gpu-2", tags=("gpu",))]
                           + [ready(f"t{i}") for i in range(6)])
    placements = by_worker(dispatcher.dispatch())
    assert placements[K2] == ["gpu-1"]
    assert len(placements[K1]) == 2 and len(placements[K3]) == 2
    assert all(c.outstanding <= c.slots for c in dispatcher.workers.values())
    assert set(dispatcher.entries) == {"gpu-2", "t4", "t5"}


def test_a_retry_goes_to_a_worker_where_it_has_not_failed_unless_no_other_can_take_it() -> None:
    dispatcher = DispatcherCore(PlacementConfig())
    dispatcher.worker_up(b"k1", "w1", 4, (), 0)
    dispatcher.worker_up(b"k2", "w2", 1, (), 0)
    retry = ReadyTask("t", 0, 1, 2, 1, "m:f", [], {}, None, (), 0.0, avoid=("w1",))
    dispatcher.tasks_ready([retry])
    (placement,) = dispatcher.dispatch()
    assert placement.worker == b"k2"  # w1 is less loaded, but the task failed there
    again = ReadyTask("u", 0, 2, 2, 1, "m:f", [], {}, None, (), 0.0, avoid=("w1", "w2"))
    dispatcher.tasks_ready([again])
    (placement,) = dispatcher.dispatch()
    assert placement.worker == b"k1"  # failed everywhere: any free worker will do


def test_a_retry_waits_for_a_busy_worker_where_it_has_not_failed_rather_than_go_back() -> None:
    dispatcher = DispatcherCore(PlacementConfig())
    dispatcher.worker_up(b"k1", "w1", 4, (), 0)  # where the task failed: free, as a broken worker is
    dispatcher.worker_up(b"k2", "w2", 1, (), 0)
    dispatcher.tasks_ready([ready("busy")])
    assert by_worker(dispatcher.dispatch()) == {b"k1": ["busy"]}
    dispatcher.tasks_ready([ready("fill")])
    dispatcher.worker_load(b"k1", 100.0, 100.0)  # make w2 the choice for plain tasks
    assert by_worker(dispatcher.dispatch()) == {b"k2": ["fill"]}
    retry = ReadyTask("t", 0, 9, 2, 1, "m:f", [], {}, None, (), 0.0, avoid=("w1",))
    dispatcher.tasks_ready([retry])
    assert dispatcher.dispatch() == []  # w2 is full: wait for it, not back to w1
    dispatcher.slots_freed(b"k2", 1)
    assert by_worker(dispatcher.dispatch()) == {b"k2": ["t"]}
    dispatcher.worker_accepting(b"k2", False, False)  # w2 stops taking tasks: w1 is all there is
    dispatcher.tasks_ready([ReadyTask("u", 0, 10, 2, 1, "m:f", [], {}, None, (), 0.0, avoid=("w1",))])
    assert by_worker(dispatcher.dispatch()) == {b"k1": ["u"]}


def test_a_waiting_retry_goes_back_to_a_worker_where_it_failed_once_retry_elsewhere_s_is_over() -> None:
    dispatcher = DispatcherCore(PlacementConfig(retry_elsewhere_s=2.0))
    dispatcher.worker_up(b"k1", "w1", 1, (), 0)
    dispatcher.worker_up(b"k2", "w2", 1, (), 0)
    dispatcher.worker_load(b"k1", 100.0, 100.0)
    dispatcher.tasks_ready([ready("fill")])
    assert by_worker(dispatcher.dispatch(10.0)) == {b"k2": ["fill"]}  # w2 is now busy
    dispatcher.tasks_ready([ReadyTask("t", 0, 9, 2, 1, "m:f", [], {}, None, (), 10.0, avoid=("w1",))])
    assert dispatcher.dispatch(11.9) == []  # still waiting for w2
    assert by_worker(dispatcher.dispatch(12.0)) == {b"k1": ["t"]}  # waited long enough: any free worker
