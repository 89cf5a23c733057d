"""The failure detector's pure core: ticks in, scan and pause verdicts out.

The detector is the coordinator's only sense of time passing.  It is ticked every
``tick_interval_s`` by a timer thread; from the gaps between ticks it decides when to
scan workers for silence and notices when the coordinator itself was stopped: a gap
far longer than a tick means *we* were paused (SIGSTOP, swap, a long GC), and every
worker gets a fresh heartbeat window instead of being convicted for our silence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScanWorkers:
    now: float


@dataclass(frozen=True, slots=True)
class LocalPauseDetected:
    now: float
    paused_s: float


@dataclass(frozen=True, slots=True)
class TimersDue:
    now: float


LivenessCommand = ScanWorkers | LocalPauseDetected | TimersDue


class LivenessCore:
    def __init__(self, scan_interval_s: float, pause_threshold_s: float, now: float) -> None:
        self.scan_interval_s = scan_interval_s
        self.pause_threshold_s = pause_threshold_s
        self.last_tick = now
        self.next_scan = now + scan_interval_s
        self.pauses = 0

    def tick(self, now: float) -> list[LivenessCommand]:
        gap = now - self.last_tick
        self.last_tick = now
        out: list[LivenessCommand] = [TimersDue(now)]
        if gap > self.pause_threshold_s:
            # Our own silence: restart every worker's window and postpone the scan.
            self.pauses += 1
            self.next_scan = now + self.scan_interval_s
            out.append(LocalPauseDetected(now, gap))
            return out
        if now >= self.next_scan:
            self.next_scan = now + self.scan_interval_s
            out.append(ScanWorkers(now))
        return out
