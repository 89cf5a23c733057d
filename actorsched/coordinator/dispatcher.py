"""Dispatcher actor: the pykka shell around :class:`~actorsched.core.placement.DispatcherCore`.

After every batch of events it places what it can.  For each placement it tells the
TaskQueue and the WorkerRegistry *before* the Transport sends the Assign, so neither
can see a result for a placement it has not heard of.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pykka

from actorsched.config import PlacementConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.supervision import SupervisedActor
from actorsched.core.commands import (
    MakeReady,
    SendToWorker,
    SlotsFreed,
    WithdrawTasks,
    WorkerAccepting,
    WorkerDown,
    WorkerLoad,
    WorkerUp,
)
from actorsched.core.placement import DispatcherCore
from actorsched.protocol import Assign, Assignment

log = logging.getLogger(__name__)


class DispatcherActor(SupervisedActor, pykka.ThreadingActor):
    def __init__(self, config: PlacementConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.core = DispatcherCore(config)
        self.clock = clock
        self.queue: pykka.ActorRef[Any] | None = None
        self.registry: pykka.ActorRef[Any] | None = None
        self.transport: Any = None

    def connect(self, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any], transport: Any) -> None:
        self.queue = queue
        self.registry = registry
        self.transport = transport

    def on_receive(self, message: Any) -> Any:
        core = self.core
        for event in message:
            match event:
                case MakeReady(tasks):
                    core.tasks_ready(tasks)
                case SlotsFreed(worker, count):
                    core.slots_freed(worker, count)
                case WithdrawTasks(task_ids):
                    core.tasks_withdrawn(task_ids)
                case WorkerLoad(worker, cpu, memory):
                    core.worker_load(worker, cpu, memory)
                case WorkerUp(worker, worker_id, slots, tags, running):
                    core.worker_up(worker, worker_id, slots, tags, running)
                case WorkerDown(worker):
                    core.worker_down(worker)
                case WorkerAccepting(worker, accepting, probe):
                    core.worker_accepting(worker, accepting, probe)
                case _:
                    log.error("Dispatcher got an unknown event %r", event)
        placements = core.dispatch(self.clock())
        if not placements:
            return None
        placed = [ev.TasksPlaced(p.worker, core.workers[p.worker].worker_id, p.tasks) for p in placements]
        assert self.queue is not None and self.registry is not None
        ev.tell(self.queue, placed)
        ev.tell(self.registry, placed)
        self.transport.tell([
            SendToWorker(p.worker, Assign([
                Assignment(t.task_id, t.name, t.args, t.kwargs, t.epoch, t.attempt, t.timeout_s) for t in p.tasks
            ]))
            for p in placements
        ])
        return None
