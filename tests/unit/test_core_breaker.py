"""Circuit breaker: pure core, fake clock."""

from __future__ import annotations

from actorsched.config import BreakerConfig, LivenessConfig, PlacementConfig, TasksConfig
from actorsched.core.breaker import SLICES, Breaker, BreakerState
from actorsched.core.commands import JudgeAttempts, ReadyTask, SetAccepting
from actorsched.core.placement import DispatcherCore
from actorsched.core.queue import TaskQueueCore
from actorsched.core.registry import RegistryCore
from actorsched.protocol import ErrorInfo, Register, TaskOutcome, TaskSpec

CONFIG = BreakerConfig()


def test_a_breaker_opens_when_more_than_half_of_ten_judged_attempts_failed() -> None:
    breaker = Breaker()
    changes = [breaker.judge(i % 5 != 0, float(i), CONFIG) for i in range(10)]  # 8 ok, 2 failed
    assert breaker.state is BreakerState.CLOSED and set(changes) == {None}
    breaker = Breaker()
    for i in range(9):
        assert breaker.judge(i < 3, float(i), CONFIG) is None  # 6 failures but fewer than 10 attempts
    assert breaker.judge(False, 9.0, CONFIG) is BreakerState.OPEN


def test_old_attempts_leave_the_window() -> None:
    breaker = Breaker()
    for i in range(9):
        breaker.judge(False, float(i), CONFIG)
    assert breaker.judge(False, 9.0 + CONFIG.window_s, CONFIG) is None  # the first nine are too old
    assert breaker.state is BreakerState.CLOSED


def test_an_open_breaker_goes_half_open_after_open_s_and_one_success_closes_it() -> None:
    breaker = Breaker()
    for _ in range(10):
        breaker.judge(False, 0.0, CONFIG)
    assert breaker.state is BreakerState.OPEN
    assert breaker.tick(CONFIG.open_s - 1, CONFIG) is None
    assert breaker.tick(CONFIG.open_s, CONFIG) is BreakerState.HALF_OPEN
    assert breaker.judge(True, CONFIG.open_s + 1, CONFIG) is BreakerState.CLOSED


def test_a_failed_probe_opens_the_breaker_again() -> None:
    breaker = Breaker(state=BreakerState.HALF_OPEN)
    assert breaker.judge(False, 100.0, CONFIG) is BreakerState.OPEN
    assert breaker.opened_until == 100.0 + CONFIG.open_s


def test_the_registry_closes_an_open_worker_and_lets_one_probe_through_when_half_open() -> None:
    registry = RegistryCore(LivenessConfig(), PlacementConfig(), epoch=1)
    registry.registered(b"k1", Register("w1", "h", 1, 4, [], []), 0.0)
    out = registry.judge([("w1", False)] * 10, 1.0)
    assert out == [SetAccepting(b"k1", False, probe=False)]
    assert registry.infos(1.0)[0].breaker == "open"
    registry.heartbeat(b"k1", 0.0, 0.0, 1.0 + CONFIG.open_s)
    out = [c for c in registry.scan(1.0 + CONFIG.open_s) if isinstance(c, SetAccepting)]
    assert out == [SetAccepting(b"k1", True, probe=True)]
    dispatcher = DispatcherCore(PlacementConfig())
    dispatcher.worker_up(b"k1", "w1", 4, (), 0)
    dispatcher.worker_accepting(b"k1", True, probe=True)
    dispatcher.tasks_ready([ReadyTask(f"t{i}", 0, i, 1, 1, "m:f", [], {}, None, (), 0.0) for i in range(3)])
    (placement,) = dispatcher.dispatch()
    assert len(placement.tasks) == 1  # one probe at a time
    assert registry.judge([("w1", True)], 40.0) == [SetAccepting(b"k1", True, probe=False)]


def test_only_failures_of_tasks_that_succeeded_elsewhere_are_judged_against_a_worker() -> None:
    queue = TaskQueueCore(TasksConfig(retry_backoff_base_s=0.01, retry_backoff_cap_s=0.01), epoch=1)
    queue.submit(b"c", 1, [TaskSpec("good-elsewhere", "m:f"), TaskSpec("bad-everywhere", "m:f", max_attempts=2)],
                 0.0)
    judged: list[tuple[str, bool]] = []

    def run(task_id: str, worker: bytes, worker_id: str, ok: bool, now: float) -> None:
        ready = next(r for r in queue_ready if r.task_id == task_id)
        queue.worker_admitted(worker)
        queue.tasks_assigned(worker, worker_id, [ready], now)
        outcome = TaskOutcome(task_id, 1, ready.attempt, ok, None if not ok else 1,
                              None if ok else ErrorInfo("RuntimeError", "x"), 0.0)
        for command in queue.outcomes_reported(worker, [outcome], now):
            if isinstance(command, JudgeAttempts):
                judged.extend(command.judgments)
        queue_ready.extend(r for c in queue.tick(now + 1) for r in getattr(c, "tasks", []))

    queue_ready = [ReadyTask(t, 0, i, 1, 1, "m:f", [], {}, None, (), 0.0)
                   for i, t in enumerate(["good-elsewhere", "bad-everywhere"], 1)]
    run("good-elsewhere", b"k1", "w1", False, 1.0)
    run("bad-everywhere", b"k1", "w1", False, 1.0)
    queue_ready = [r for r in queue_ready if r.attempt == 2]
    run("good-elsewhere", b"k2", "w2", True, 3.0)
    run("bad-everywhere", b"k2", "w2", False, 3.0)
    # The success counts for w2; w1 is blamed only for the task that then succeeded on w2.
    assert judged == [("w2", True), ("w1", False)]


def test_the_window_holds_counts_per_slice_not_an_entry_per_attempt() -> None:
    """Issue 9 #7: at 5,000 attempts/s the window used to hold 300,000 entries (~19 MB per worker)."""
    config = BreakerConfig(window_s=60.0, min_attempts=10, failure_ratio=0.5)
    breaker = Breaker()
    for i in range(300_000):
        breaker.judge(True, i / 5000, config)
    assert len(breaker.judged) <= SLICES + 1 and breaker.attempts <= 300_000
    assert 60 * 5000 - 2 * 5000 <= breaker.attempts <= 60 * 5000  # one minute's worth, to a slice
    for i in range(300_000, 300_000 + 400_000):  # mostly failures for 80 s: the old successes age out
        state = breaker.judge(i % 5 == 0, i / 5000, config)
        if state is not None:
            break
    assert breaker.state.value == "open"
