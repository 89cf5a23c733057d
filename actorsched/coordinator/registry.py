"""WorkerRegistry actor: the pykka shell around :class:`~actorsched.core.registry.RegistryCore`.

Routes what the core decides: welcomes and re-register requests to the Transport,
workers joining, leaving and opening or closing to the Dispatcher, and to the
TaskQueue which incarnations are live (it requeues what a lost one held).  The
Dispatcher hears first, so a requeued task is not placed on the worker that lost it;
a placement that overtakes an ``AdmitWorker`` is requeued by the TaskQueue, so no
ordering is needed for correctness, only to avoid waste.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pykka

from actorsched.config import BreakerConfig, LivenessConfig, PlacementConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.supervision import SupervisedActor
from actorsched.core.commands import (
    AdmitWorker,
    CheckHeld,
    Command,
    ForgetWorker,
    JudgeAttempts,
    ReconcileRunning,
    SendToClient,
    SendToWorker,
)
from actorsched.core.liveness import LocalPauseDetected, ScanWorkers
from actorsched.core.registry import RegistryCore
from actorsched.protocol import Refused, WorkersReply

log = logging.getLogger(__name__)


class RegistryActor(SupervisedActor, pykka.ThreadingActor):
    def __init__(self, liveness: LivenessConfig, placement: PlacementConfig, epoch: int,
                 breaker: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.core = RegistryCore(liveness, placement, epoch, breaker)
        self.clock = clock
        self.queue: pykka.ActorRef[Any] | None = None
        self.dispatcher: pykka.ActorRef[Any] | None = None
        self.transport: Any = None

    def connect(self, queue: pykka.ActorRef[Any], dispatcher: pykka.ActorRef[Any], transport: Any) -> None:
        self.queue = queue
        self.dispatcher = dispatcher
        self.transport = transport

    def on_receive(self, message: Any) -> Any:
        now = self.clock()
        core = self.core
        if message == "infos":  # ask() from the status page and tests; the queue never asks us back
            held: Any = self.queue.ask("held", timeout=5) if self.queue is not None else {}
            return core.infos(now, held)
        out: list[Command] = []
        for event in message:
            match event:
                case ev.WorkersSeen(workers):
                    out += core.seen(workers, now)
                case ev.HeartbeatSeen(worker, beat):
                    out += core.heartbeat(worker, beat.cpu_percent, beat.memory_percent, now, beat.running)
                case ev.WorkerRegistered(worker, register):
                    answer = core.registered(worker, register, now)
                    refused = _refusal(answer)
                    if refused is None:
                        log.info("worker registered worker_id=%s host=%s pid=%d slots=%d", register.worker_id,
                                 register.host, register.pid, register.slots)
                    else:
                        log.warning("refused a registration from host=%s pid=%d: %s", register.host,
                                    register.pid, refused)
                    out += answer
                case ev.WorkerDraining(worker):
                    out += core.draining(worker, now)
                case ev.WorkerLeft(worker, reason):
                    out += core.goodbye(worker) if reason == "goodbye" else core.disconnected(worker)
                case JudgeAttempts(judgments):
                    out += core.judge(judgments, now)
                case ScanWorkers(scan_now):
                    out += core.scan(scan_now)
                case LocalPauseDetected(pause_now, paused_s):
                    log.warning("coordinator was paused for %.1f s; every worker gets a fresh heartbeat "
                                "window instead of being convicted", paused_s)
                    core.local_pause(pause_now)
                case ev.WorkersRequested(client, request_id, held):
                    out.append(SendToClient(client, WorkersReply(request_id, core.infos(now, held))))
                case ev.StatsRequested(client, request_id, stats):
                    ev.tell(self.queue, [ev.StatsRequested(client, request_id, {**stats, "workers": core.stats()})])
                case _:
                    log.error("WorkerRegistry got an unknown event %r", event)
        self._carry_out(out)
        return None

    def _carry_out(self, out: list[Command]) -> None:
        to_queue: list[Command] = []
        capacity: list[Command] = []
        sends: list[SendToClient | SendToWorker] = []
        for command in out:
            if isinstance(command, (SendToClient, SendToWorker)):
                sends.append(command)
            elif isinstance(command, (AdmitWorker, ForgetWorker, ReconcileRunning, CheckHeld)):
                if isinstance(command, ForgetWorker):
                    level = logging.WARNING if command.worker_died else logging.INFO
                    log.log(level, "worker removed worker_id=%s reason=%s", command.worker_id, command.reason)
                to_queue.append(command)
            else:
                capacity.append(command)
        # The Dispatcher first: it must know a worker is gone before its tasks come back.
        if capacity:
            ev.tell(self.dispatcher, capacity)
        if to_queue:
            ev.tell(self.queue, to_queue)
        if sends and self.transport is not None:
            self.transport.tell(sends)


def _refusal(commands: list[Command]) -> str | None:
    """The reason a registration was refused, None when it was welcomed."""
    for command in commands:
        if isinstance(command, SendToWorker) and isinstance(command.message, Refused):
            return command.message.reason
    return None
