"""Commands the pure cores return, and the records they hand between actors.

Commands are orders (``SendToClient``, ``MakeReady``); the actor that receives them
from its core carries them out by telling another actor or a socket.
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
    tasks: list[ReadyTask]


@dataclass(frozen=True, slots=True)
class WithdrawTasks:
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class RequeueLost:
    """Tasks a lost worker held: the queue decides retry, requeue or quarantine.

    ``worker_died`` False means the worker lives but never got the tasks (an assign
    lost on the way): they go back to the queue without counting a worker death.
    """

    worker: PeerKey
    worker_id: str
    task_ids: list[str]
    reason: str
    worker_died: bool = True


@dataclass(frozen=True, slots=True)
class ReconcileRunning:
    """A worker registered holding these attempts: the queue keeps the current ones."""

    worker: PeerKey
    worker_id: str
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class WorkerUp:
    worker: PeerKey
    worker_id: str
    slots: int
    tags: tuple[str, ...]
    running: int


@dataclass(frozen=True, slots=True)
class WorkerDown:
    worker: PeerKey


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    worker: PeerKey
    cpu_percent: float
    memory_percent: float


@dataclass(frozen=True, slots=True)
class WorkerAccepting:
    """Open or close a worker for new tasks (suspect, draining, circuit breaker)."""

    worker: PeerKey
    accepting: bool
    probe: bool = False  # half-open breaker: at most one task at a time


@dataclass(frozen=True, slots=True)
class JudgeAttempts:
    """Attempts whose blame is now known, for the circuit breakers: ``(worker_id, ok)``."""

    judgments: list[tuple[str, bool]]


@dataclass(frozen=True, slots=True)
class SlotsFreed:
    worker: PeerKey
    count: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Tasks the dispatcher placed on one worker."""

    worker: PeerKey
    tasks: list[ReadyTask]


Command = (
    SendToClient | SendToWorker | MakeReady | WithdrawTasks | RequeueLost | ReconcileRunning | WorkerUp | WorkerDown
    | WorkerLoad | WorkerAccepting | JudgeAttempts | SlotsFreed | Placement
)
