"""Events the coordinator's actors tell each other.

Facts in the past tense.  Every tell carries a *list* of events so that one actor hop
moves a whole batch: the Transport collects everything it decoded in one poll turn
and tells each actor once.

Asks are questions, one at a time (not in a list), answered by the actor's
``on_receive``: :class:`ListTasks` and :class:`TaskDetail` to the TaskQueue, from the
status page (``queue_ref.ask(ev.ListTasks(...), timeout=2.0)``).
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
class ListRequested:
    """A client's ``ListTasks``: answered with a ``TaskList`` (see :class:`ListTasks` for the filters)."""

    client: PeerKey
    request_id: int
    state: str | None
    name: str | None
    worker: str | None
    id_prefix: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class ListTasks:
    """Ask of the TaskQueue: light rows of the newest tasks matching every filter given.

    Answered with a :class:`~actorsched.protocol.TaskListing` (a ``list[TaskInfo]``, newest
    first by submit order, with ``.cut`` True when the journal scan stopped at its bound):
    no value, output or history, errors without their traceback.  ``state``: a state name
    (``"FAILED"``); ``name``: the task name, its function part (``"echo"``) or a shell
    pattern (``"*:echo*"``); ``worker``: the worker id of its last attempt (or a pattern);
    ``id_prefix``: the start of its id; ``limit``: 1..10,000 rows.  None: no filter.
    """

    state: str | None = None
    name: str | None = None
    worker: str | None = None
    id_prefix: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """Ask of the TaskQueue: one task in full, answered with ``(TaskSpec | None, TaskInfo)``.

    The TaskInfo has the value, the output and every attempt; the spec is None (and the
    state ``NOT_FOUND``) for an id neither memory nor the journal knows, None too for a
    stored task whose spec cannot be read.
    """

    task_id: str


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
