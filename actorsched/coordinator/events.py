"""Events the coordinator's actors tell each other.

Facts in the past tense.  Every tell carries a *list* of events so that one actor hop
moves a whole batch: the Transport collects everything it decoded in one poll turn
and tells each actor once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pykka

from actorsched.core.commands import PeerKey, ReadyTask
from actorsched.protocol import AttemptRef, Heartbeat, Register, TaskOutcome, TaskSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TasksSubmitted:
    client: PeerKey
    request_id: int
    tasks: list[TaskSpec]
    watch: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequested:
    client: PeerKey
    request_id: int
    task_ids: list[str]
    cascade: bool


@dataclass(frozen=True, slots=True)
class QueryRequested:
    client: PeerKey
    request_id: int
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class WatchRequested:
    client: PeerKey
    request_id: int
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class WatchDropped:
    client: PeerKey
    request_id: int


@dataclass(frozen=True, slots=True)
class PurgeRequested:
    client: PeerKey
    request_id: int
    older_than_s: float


@dataclass(frozen=True, slots=True)
class JournalPurged:
    """From the journal writer to the TaskQueue: these many final tasks per state were deleted."""

    counts: dict[str, int]
    reply_to: tuple[PeerKey, int] | None  # (client, request id) of a purge request, None for retention


@dataclass(frozen=True, slots=True)
class WorkersRequested:
    """Travels Transport -> TaskQueue -> WorkerRegistry: the queue adds what each worker holds, the registry lists."""

    client: PeerKey
    request_id: int
    held: dict[PeerKey, tuple[int, int]] | None = None  # (tasks held, attempts finished) per incarnation


@dataclass(frozen=True, slots=True)
class StatsRequested:
    """Travels Transport -> WorkerRegistry -> TaskQueue, each adding its figures."""

    client: PeerKey
    request_id: int
    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkerRegistered:
    worker: PeerKey
    message: Register


@dataclass(frozen=True, slots=True)
class HeartbeatSeen:
    worker: PeerKey
    message: Heartbeat


@dataclass(frozen=True, slots=True)
class AttemptsStarted:
    worker: PeerKey
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class OutcomesReported:
    worker: PeerKey
    outcomes: list[TaskOutcome]


@dataclass(frozen=True, slots=True)
class AttemptsReleased:
    """A worker gave back these attempts unstarted (its answer to a Release)."""

    worker: PeerKey
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class WorkersSeen:
    """These workers sent something since the last such event (the Transport sends it a few times a second)."""

    workers: frozenset[PeerKey]


@dataclass(frozen=True, slots=True)
class WorkerDraining:
    worker: PeerKey


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    """Goodbye, a closed connection, or a send that found no peer."""

    worker: PeerKey
    reason: str


@dataclass(frozen=True, slots=True)
class TasksPlaced:
    """The Dispatcher placed ``tasks`` on ``worker``; told before the Assign leaves."""

    worker: PeerKey
    worker_id: str
    tasks: list[ReadyTask]


def tell(ref: Any, events: list[Any]) -> None:
    """``ref.tell(events)``, except that a peer already stopped (during shutdown) is not an error."""
    if ref is None:
        return
    try:
        ref.tell(events)
    except pykka.ActorDeadError:
        log.debug("dropped %d event(s) for a stopped actor", len(events))
