"""LivenessCore driven with a fake clock: timers every tick, scans at intervals, local pauses."""

from __future__ import annotations

from actorsched.core.liveness import LivenessCore, LocalPauseDetected, ScanWorkers, TimersDue


def make(now: float = 100.0) -> LivenessCore:
    return LivenessCore(scan_interval_s=5.0, pause_threshold_s=3.0, now=now)


def test_every_tick_makes_timers_due() -> None:
    core = make()
    for step in range(1, 20):
        now = 100.0 + step * 0.5
        assert core.tick(now)[0] == TimersDue(now)


def test_workers_are_scanned_once_per_scan_interval() -> None:
    core = make(100.0)
    scans = []
    for step in range(1, 41):  # 20 s of half-second ticks
        now = 100.0 + step * 0.5
        scans += [c.now for c in core.tick(now) if isinstance(c, ScanWorkers)]
    assert scans == [105.0, 110.0, 115.0, 120.0]


def test_no_scan_before_the_first_interval_has_passed() -> None:
    core = make(0.0)
    assert core.tick(2.5) == [TimersDue(2.5)]
    assert core.tick(4.99) == [TimersDue(4.99)]
    assert core.tick(5.0) == [TimersDue(5.0), ScanWorkers(5.0)]


def test_a_gap_over_the_pause_threshold_is_a_local_pause_and_skips_the_scan() -> None:
    core = make(0.0)
    core.tick(1.0)
    out = core.tick(61.0)  # we were stopped for a minute: far past the scan time too
    assert out == [TimersDue(61.0), LocalPauseDetected(61.0, 60.0)]
    assert core.pauses == 1
    # The scan is postponed a full interval after the pause.
    for now in (62.0, 63.0, 64.0, 65.0, 65.9):
        assert core.tick(now) == [TimersDue(now)]
    assert core.tick(66.0) == [TimersDue(66.0), ScanWorkers(66.0)]


def test_a_gap_at_the_pause_threshold_is_not_a_pause() -> None:
    core = make(0.0)
    out = core.tick(3.0)
    assert out == [TimersDue(3.0)]
    assert core.pauses == 0
    assert core.tick(6.0) == [TimersDue(6.0), ScanWorkers(6.0)]
