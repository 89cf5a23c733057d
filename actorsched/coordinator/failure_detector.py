"""FailureDetector actor: the coordinator's clock.

A timer thread tells it ``"tick"`` every ``tick_interval_s``; the pure
:class:`~actorsched.core.liveness.LivenessCore` turns ticks into scan and pause
verdicts for the WorkerRegistry and timer firings for the TaskQueue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from actorsched.config import LivenessConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.supervision import SupervisedActor
from actorsched.core.liveness import LivenessCore, LocalPauseDetected, ScanWorkers, TimersDue


class FailureDetectorActor(SupervisedActor, pykka.ThreadingActor):
    def __init__(self, config: LivenessConfig, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any],
                 tick_interval_s: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.core = LivenessCore(config.scan_interval_s, config.pause_threshold_s, clock())
        self.queue = queue
        self.registry = registry
        self.tick_interval_s = tick_interval_s
        self._ticks_stopped = threading.Event()
        self._thread = threading.Thread(target=self._tick_forever, name="failure-detector-ticks", daemon=True)

    def on_start(self) -> None:
        self._thread.start()

    def on_stop(self) -> None:
        self._ticks_stopped.set()

    def _tick_forever(self) -> None:
        while not self._ticks_stopped.wait(self.tick_interval_s):
            try:
                self.actor_ref.tell("tick")
            except pykka.ActorDeadError:
                return

    def on_receive(self, message: Any) -> Any:
        if message != "tick":
            return None
        for verdict in self.core.tick(self.clock()):
            if isinstance(verdict, TimersDue):
                ev.tell(self.queue, [verdict])
            elif isinstance(verdict, (ScanWorkers, LocalPauseDetected)):
                ev.tell(self.registry, [verdict])
        return None
