"""Commands the pure cores return, and the records they hand between actors.

Commands are orders (``SendToClient``, ``MakeReady``, ``FreeSlots``); the actor that
receives them from its core carries them out by telling another actor or a socket.

One owner per fact: the TaskQueue owns which attempt of a task is held by which worker
incarnation (and so which tasks a lost worker held); the Dispatcher owns the count of
tasks outstanding on each worker, moved by its own placements and by the TaskQueue's
``FreeSlots``; the WorkerRegistry owns incarnations, liveness, load and breakers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actorsched.protocol import AttemptRef, Message

PeerKey = bytes  # a ZeroMQ routing id: one connection of one worker or client


@dataclass(frozen=True, slots=True)
class ReadyTask:
    """A task ready for placement, for one attempt.  Owned by the Dispatcher until placed."""

    task_id: str
    priority: int
    seq: int
    attempt: int
    epoch: int
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout_s: float | None
    tags: tuple[str, ...]
    ready_at: float
    avoid: tuple[str, ...] = ()  # worker ids where earlier attempts failed: placed elsewhere if possible
    since: float = 0.0  # its place in line, fair between clients (kept when a worker dies under it)
    short: bool = False  # its name's measured run time is short: it may wait in a worker's prefetch
    trace: str = ""  # its TaskSpec.trace ("" untraced), passed on in its Assignment


@dataclass(frozen=True, slots=True)
class SendToClient:
    client: PeerKey
    message: Message


@dataclass(frozen=True, slots=True)
class SendToWorker:
    worker: PeerKey
    message: Message


@dataclass(frozen=True, slots=True)
class MakeReady:
    """To the Dispatcher: place these tasks."""

    tasks: list[ReadyTask]


@dataclass(frozen=True, slots=True)
class WithdrawTasks:
    """To the Dispatcher: these tasks are no longer to be placed (cancelled, failed)."""

    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class FreeSlots:
    """To the Dispatcher: ``count`` tasks placed on ``worker`` no longer occupy it."""

    worker: PeerKey
    count: int


@dataclass(frozen=True, slots=True)
class TakeBack:
    """To the TaskQueue: ask ``worker`` to give back up to ``count`` held, unstarted tasks (another sits idle)."""

    worker: PeerKey
    count: int


@dataclass(frozen=True, slots=True)
class AdmitWorker:
    """To the TaskQueue: this incarnation is live, so placements on it are real.

    A placement on an incarnation the TaskQueue does not know as live (it left, or the
    placement overtook this order) goes straight back to the queue, slots freed.
    """

    worker: PeerKey
    worker_id: str


@dataclass(frozen=True, slots=True)
class ForgetWorker:
    """To the TaskQueue: this incarnation is gone; requeue or quarantine every task it held.

    ``worker_died`` False means the worker left in order or never got the tasks: they go
    back to the queue without counting a worker death.  ``keep`` names tasks a new
    registration of the same worker reports running: they wait for its ReconcileRunning.
    """

    worker: PeerKey
    worker_id: str
    reason: str
    worker_died: bool = True
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ReconcileRunning:
    """To the TaskQueue: a worker registered holding these attempts; keep the current ones."""

    worker: PeerKey
    worker_id: str
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class CheckHeld:
    """To the TaskQueue: ``worker`` holds exactly ``holds``; a task placed on it before ``placed_before``
    that it does not hold never reached it (or its result was lost) and goes back to the queue."""

    worker: PeerKey
    worker_id: str
    holds: list[str]
    placed_before: float


@dataclass(frozen=True, slots=True)
class AddWorker:
    """To the Dispatcher: a worker to place on; ``running`` tasks it already holds."""

    worker: PeerKey
    worker_id: str
    slots: int
    tags: tuple[str, ...]
    running: int
    prefetch: int = 0


@dataclass(frozen=True, slots=True)
class RemoveWorker:
    worker: PeerKey


@dataclass(frozen=True, slots=True)
class UpdateLoad:
    worker: PeerKey
    cpu_percent: float
    memory_percent: float


@dataclass(frozen=True, slots=True)
class SetAccepting:
    """To the Dispatcher: open or close a worker for new tasks (suspect, draining, circuit breaker)."""

    worker: PeerKey
    accepting: bool
    probe: bool = False  # half-open breaker: at most one task at a time


@dataclass(frozen=True, slots=True)
class JudgeAttempts:
    """To the WorkerRegistry: attempts whose blame is now known, for the circuit breakers: ``(worker_id, ok)``."""

    judgments: list[tuple[str, bool]]


@dataclass(frozen=True, slots=True)
class Placement:
    """Tasks the dispatcher placed on one worker."""

    worker: PeerKey
    tasks: list[ReadyTask]


Command = (
    SendToClient | SendToWorker | MakeReady | WithdrawTasks | FreeSlots | TakeBack | AdmitWorker | ForgetWorker
    | ReconcileRunning | CheckHeld | AddWorker | RemoveWorker | UpdateLoad | SetAccepting | JudgeAttempts | Placement
)
DispatcherOrder = MakeReady | WithdrawTasks | FreeSlots | AddWorker | RemoveWorker | UpdateLoad | SetAccepting
"""What the Dispatcher's inbox holds: orders from the TaskQueue and the WorkerRegistry."""
