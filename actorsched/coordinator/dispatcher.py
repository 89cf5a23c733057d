"""Dispatcher actor: the pykka shell around :class:`~actorsched.core.placement.DispatcherCore`.

After every batch of events it places what it can.  For each placement it tells the
TaskQueue *before* the Transport sends the Assign, so the queue cannot see a result for
a placement it has not heard of.  When nothing waits and a worker sits idle it asks the
TaskQueue to take prefetched tasks back from the fullest worker.
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
    AddWorker,
    DispatcherOrder,
    FreeSlots,
    MakeReady,
    RemoveWorker,
    SendToWorker,
    SetAccepting,
    UpdateLoad,
    WithdrawTasks,
)
from actorsched.core.placement import DispatcherCore
from actorsched.protocol import Assign, Assignment
from actorsched.recordcodec import record_builder

log = logging.getLogger(__name__)
_assignment = record_builder(Assignment)  # one per task: skips the frozen dataclass's per-field __setattr__


class DispatcherActor(SupervisedActor, pykka.ThreadingActor):
    def __init__(self, config: PlacementConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.core = DispatcherCore(config)
        self.clock = clock
        self.queue: pykka.ActorRef[Any] | None = None
        self.transport: Any = None

    def connect(self, queue: pykka.ActorRef[Any], transport: Any) -> None:
        self.queue = queue
        self.transport = transport

    def on_receive(self, message: list[DispatcherOrder]) -> None:
        core = self.core
        for order in message:
            match order:
                case MakeReady(tasks):
                    core.tasks_ready(tasks)
                case FreeSlots(worker, count):
                    core.slots_freed(worker, count)
                case WithdrawTasks(task_ids):
                    core.tasks_withdrawn(task_ids)
                case UpdateLoad(worker, cpu, memory):
                    core.worker_load(worker, cpu, memory)
                case AddWorker(worker, worker_id, slots, tags, running, prefetch):
                    core.worker_up(worker, worker_id, slots, tags, running, prefetch)
                case RemoveWorker(worker):
                    core.worker_down(worker)
                case SetAccepting(worker, accepting, probe):
                    core.worker_accepting(worker, accepting, probe)
                case _:
                    log.error("Dispatcher got an unknown order %r", order)
        now = self.clock()
        placements = core.dispatch(now)
        take_backs = core.take_backs(now)
        if take_backs:
            ev.tell(self.queue, take_backs)
        if not placements:
            return
        workers = core.workers
        ev.tell(self.queue, [ev.TasksPlaced(p.worker, workers[p.worker].worker_id, p.tasks) for p in placements])
        self.transport.tell([
            SendToWorker(p.worker, Assign([
                _assignment(t.task_id, t.name, t.args, t.kwargs, t.epoch, t.attempt, t.timeout_s, t.priority, t.short,
                            t.trace)
                for t in p.tasks
            ]))
            for p in placements
        ])
