"""The worker registry's pure core: worker incarnations, their tasks and their liveness.

Theory of operation
-------------------
A worker *incarnation* is one connection, keyed by its ZeroMQ routing id; the
human ``worker_id`` names the process.  The registry owns incarnations, their
liveness, load and circuit breakers; which tasks an incarnation holds is the
TaskQueue's fact, so the registry tells it ``AdmitWorker`` when one joins and
``ForgetWorker`` when one goes, and it requeues what that one held.

Liveness: every message from a worker refreshes ``last_seen``.  A worker silent for
``suspect_after_s`` is SUSPECT (closed for new tasks); silent for
``worker_timeout_s`` it is declared lost and every task it held goes back to the
queue.  A goodbye or a closed connection removes it at once.

One connection per ``worker_id``: a live, heartbeating worker keeps its id, and a
registration claiming it from another connection is ``Refused`` with the reason (a
typo'd ``--worker-id``, or any holder of a shared CURVE fleet key, must not evict a
working process).  A claim wins only once the holder is gone (its goodbye or closed
connection already removed it) or silent past ``suspect_after_s``: that is a worker
process restarted, or reconnected after a network cut, whose old connection has not
been noticed closed yet; the old incarnation is then superseded and fenced out.  The
same connection registering again (a ``Reregister`` after a coordinator restart) is
always welcome.

Local-pause guard: if the coordinator itself stopped (SIGSTOP, swap) the silence is
ours, not the workers'; :meth:`RegistryCore.local_pause` restarts every worker's
window instead of convicting them all on waking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from actorsched.core.breaker import Breaker, BreakerState
from actorsched.core.commands import (
    AddWorker,
    AdmitWorker,
    CheckHeld,
    Command,
    ForgetWorker,
    PeerKey,
    ReconcileRunning,
    RemoveWorker,
    SendToWorker,
    SetAccepting,
    UpdateLoad,
)
from actorsched.protocol import Refused, Register, Reregister, Shutdown, Welcome, WorkerInfo
from actorsched.settings import BreakerConfig, LivenessConfig, PlacementConfig


class WorkerState(Enum):
    ALIVE = "ALIVE"
    SUSPECT = "SUSPECT"
    DRAINING = "DRAINING"


@dataclass(slots=True)
class WorkerRecord:
    key: PeerKey
    worker_id: str
    host: str
    pid: int
    slots: int
    tags: tuple[str, ...]
    last_seen: float
    state: WorkerState = WorkerState.ALIVE
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    prefetch: int = 0


def load_score(running: int, slots: int, cpu_percent: float, memory_percent: float,
               config: PlacementConfig) -> float:
    """Lower is better: busy slots, then measured CPU and memory, by configured weights."""
    return (config.running_weight * running / max(slots, 1)
            + config.cpu_weight * cpu_percent / 100.0
            + config.memory_weight * memory_percent / 100.0)


class RegistryCore:
    def __init__(self, liveness: LivenessConfig, placement: PlacementConfig, epoch: int,
                 breaker: BreakerConfig | None = None) -> None:
        self.liveness = liveness
        self.placement = placement
        self.breaker_config = breaker or BreakerConfig()
        self.breakers: dict[str, Breaker] = {}  # by worker id: survives reconnections
        self.epoch = epoch
        self.workers: dict[PeerKey, WorkerRecord] = {}
        self.by_id: dict[str, PeerKey] = {}
        self.counters = {"registered": 0, "removed": 0, "goodbyes": 0, "superseded": 0, "claims_refused": 0,
                         "unknown_peer": 0}

    # ------------------------------------------------------------------ events

    def registered(self, key: PeerKey, message: Register, now: float) -> list[Command]:
        out: list[Command] = []
        reported = frozenset(ref.task_id for ref in message.running)
        old_key = self.by_id.get(message.worker_id)
        if old_key is not None and old_key != key:
            holder = self.workers[old_key]
            silent_s = now - holder.last_seen
            if silent_s <= self.liveness.suspect_after_s:
                # The holder is alive: the claim, not the holder, is the mistake.
                self.counters["claims_refused"] += 1
                return [SendToWorker(key, Refused(
                    f"worker id {message.worker_id!r} is in use by a live worker (host {holder.host}, pid "
                    f"{holder.pid}, heard from {max(silent_s, 0.0):.1f} s ago); give this worker another "
                    f"--worker-id, or stop that one first (the id is free once it leaves, or once it is silent "
                    f"for suspect_after_s={self.liveness.suspect_after_s} s)"))]
            # The holder went quiet: this is most likely the same worker back on a new
            # connection.  The newest registration wins, the old one is fenced; what the
            # new one reports running is carried over, not requeued.
            self.counters["superseded"] += 1
            out += self._remove(old_key, f"superseded by a new registration of {message.worker_id}", reported,
                                died=False)
            out.append(SendToWorker(old_key, Shutdown(f"worker id {message.worker_id} registered again")))
        if key in self.workers:
            out += self._remove(key, "re-registered on the same connection", reported, died=False)
        record = WorkerRecord(key, message.worker_id, message.host, message.pid, message.slots,
                              tuple(message.tags), now, prefetch=message.prefetch)
        self.workers[key] = record
        self.by_id[message.worker_id] = key
        self.counters["registered"] += 1
        out.append(SendToWorker(key, Welcome(message.worker_id, self.epoch, self.liveness.heartbeat_interval_s)))
        out.append(AdmitWorker(key, message.worker_id))
        out.append(AddWorker(key, message.worker_id, message.slots, record.tags, len(reported), message.prefetch))
        if message.worker_id in self.breakers:
            out.append(self._accepting(record))
        if message.running:
            out.append(ReconcileRunning(key, message.worker_id, list(message.running)))
        return out

    def heartbeat(self, key: PeerKey, cpu_percent: float, memory_percent: float, now: float,
                  holds: list[str] | None = None) -> list[Command]:
        """A heartbeat: load for placement and, in ``holds``, the task ids the worker holds.

        The TaskQueue checks ``holds`` against what it placed there: a task placed more
        than two heartbeat intervals ago that the worker does not hold never reached it
        (or its result was lost) and goes back to the queue rather than stay ASSIGNED
        forever on a live worker.
        """
        record = self.workers.get(key)
        if record is None:
            self.counters["unknown_peer"] += 1
            return [SendToWorker(key, Reregister("unknown worker connection; register again"))]
        out = self._seen(record, now)
        record.cpu_percent = cpu_percent
        record.memory_percent = memory_percent
        out.append(UpdateLoad(key, cpu_percent, memory_percent))
        if holds is not None:
            out.append(CheckHeld(key, record.worker_id, holds, now - 2 * self.liveness.heartbeat_interval_s))
        return out

    def seen(self, keys: Iterable[PeerKey], now: float) -> list[Command]:
        """Any message from a known worker proves it alive."""
        out: list[Command] = []
        for key in keys:
            record = self.workers.get(key)
            if record is not None:
                out += self._seen(record, now)
        return out

    def draining(self, key: PeerKey, now: float) -> list[Command]:
        record = self.workers.get(key)
        if record is None:
            return []
        record.state = WorkerState.DRAINING
        record.last_seen = now
        return [self._accepting(record)]

    def goodbye(self, key: PeerKey) -> list[Command]:
        if key not in self.workers:
            return []
        self.counters["goodbyes"] += 1
        return self._remove(key, "said goodbye", died=False)

    def disconnected(self, key: PeerKey) -> list[Command]:
        if key not in self.workers:
            return []
        return self._remove(key, "its connection closed")

    def scan(self, now: float) -> list[Command]:
        """Suspect and convict silent workers."""
        out: list[Command] = []
        for key, record in list(self.workers.items()):
            silent_s = now - record.last_seen
            if silent_s > self.liveness.worker_timeout_s:
                out += self._remove(key, f"silent for {silent_s:.1f} s (worker_timeout_s="
                                         f"{self.liveness.worker_timeout_s})")
            elif silent_s > self.liveness.suspect_after_s and record.state is WorkerState.ALIVE:
                record.state = WorkerState.SUSPECT
                out.append(self._accepting(record))
        for worker_id, breaker in self.breakers.items():
            if breaker.tick(now, self.breaker_config) is not None and worker_id in self.by_id:
                out.append(self._accepting(self.workers[self.by_id[worker_id]]))
        return out

    def judge(self, judgments: list[tuple[str, bool]], now: float) -> list[Command]:
        """Feed judged attempts to the circuit breakers; open or close workers accordingly."""
        if not self.breaker_config.enabled:
            return []
        out: list[Command] = []
        for worker_id, ok in judgments:
            breaker = self.breakers.get(worker_id)
            if breaker is None:
                breaker = self.breakers[worker_id] = Breaker()
            changed = breaker.judge(ok, now, self.breaker_config)
            if changed is not None and worker_id in self.by_id:
                out.append(self._accepting(self.workers[self.by_id[worker_id]]))
        return out

    def local_pause(self, now: float) -> None:
        """We were stopped, not them: give every worker a fresh window."""
        for record in self.workers.values():
            record.last_seen = now

    # ------------------------------------------------------------------ reads

    def infos(self, now: float, held: dict[PeerKey, tuple[int, int]] | None = None) -> list[WorkerInfo]:
        """Every worker; ``held`` (from the TaskQueue, which owns it) gives each one's (running, done) counts."""
        held = held or {}
        infos = []
        for r in sorted(self.workers.values(), key=lambda r: r.worker_id):
            running, done = held.get(r.key, (0, 0))
            infos.append(WorkerInfo(
                r.worker_id, r.host, r.pid, r.slots, running,
                round(load_score(running, r.slots, r.cpu_percent, r.memory_percent, self.placement), 3),
                r.cpu_percent, r.memory_percent, r.state.value, list(r.tags), round(now - r.last_seen, 3),
                done, self._breaker_state(r.worker_id),
            ))
        return infos

    def _breaker_state(self, worker_id: str) -> str:
        breaker = self.breakers.get(worker_id)
        return breaker.state.value if breaker is not None else BreakerState.CLOSED.value

    def stats(self) -> dict[str, int]:
        return {"workers": len(self.workers), "slots": sum(r.slots for r in self.workers.values()),
                "prefetch": sum(r.prefetch for r in self.workers.values()), **self.counters}

    # ------------------------------------------------------------------ internals

    def _seen(self, record: WorkerRecord, now: float) -> list[Command]:
        record.last_seen = now
        if record.state is WorkerState.SUSPECT:
            record.state = WorkerState.ALIVE
            return [self._accepting(record)]
        return []

    def _accepting(self, record: WorkerRecord) -> SetAccepting:
        """What the dispatcher may give this worker, from its liveness and its breaker."""
        breaker = self.breakers.get(record.worker_id)
        state = breaker.state if breaker is not None else BreakerState.CLOSED
        accepting = record.state is WorkerState.ALIVE and state is not BreakerState.OPEN
        return SetAccepting(record.key, accepting, probe=state is BreakerState.HALF_OPEN)

    def _remove(self, key: PeerKey, reason: str, keep: frozenset[str] = frozenset(),
                died: bool = True) -> list[Command]:
        """Forget a worker incarnation; the TaskQueue requeues its tasks.

        ``died`` False (a goodbye, a re-registration) requeues them without counting a
        worker death against them: only unexplained losses point at a poison task.
        """
        record = self.workers.pop(key)
        if self.by_id.get(record.worker_id) == key:
            del self.by_id[record.worker_id]
        self.counters["removed"] += 1
        out: list[Command] = [RemoveWorker(key), ForgetWorker(key, record.worker_id, reason, died, keep)]
        if record.worker_id not in self.by_id:
            breaker = self.breakers.get(record.worker_id)
            if breaker is not None and breaker.state is BreakerState.CLOSED:
                del self.breakers[record.worker_id]  # nothing to remember; an open one is kept
        return out
