"""One exception hierarchy for everything actorsched raises on purpose.

Every error a user or a peer can cause is an :class:`ActorschedError`, so callers
can catch one base.  Messages name what was wrong, the value, what was expected
and where, so that the fix is obvious from the message alone.
"""

from __future__ import annotations


class ActorschedError(Exception):
    """Base of every deliberate actorsched error."""


class ConfigError(ActorschedError):
    """A configuration file or flag is malformed or out of range."""


class ProtocolError(ActorschedError):
    """A frame on the wire is malformed, oversized, of an unknown kind or version."""


class InvalidTransition(ActorschedError):
    """A task was asked to move between two states that the table does not allow."""

    def __init__(self, task_id: str, current: str, target: str, history: list[str]) -> None:
        self.task_id = task_id
        self.current = current
        self.target = target
        self.history = history
        super().__init__(
            f"task {task_id!r} cannot go from {current} to {target} "
            f"(recent states: {' -> '.join(history) or 'none'})"
        )


class TaskNotFound(ActorschedError):
    """A task id the coordinator has never seen (or has already compacted)."""


class TaskFailed(ActorschedError):
    """Raised by ``TaskHandle.result()`` when the task ended FAILED or CANCELLED."""

    def __init__(self, task_id: str, state: str, error_type: str, message: str, traceback: str) -> None:
        self.task_id = task_id
        self.state = state
        self.error_type = error_type
        self.error_message = message
        self.remote_traceback = traceback
        super().__init__(f"task {task_id!r} {state}: {error_type}: {message}")


class SubmitRejected(ActorschedError):
    """The coordinator refused a submit batch; nothing from the batch was queued."""


class InvalidTask(SubmitRejected, ValueError):
    """A task or task id was rejected by the client before anything was sent."""


class QueueFull(SubmitRejected):
    """The coordinator holds ``max_pending_tasks`` unfinished tasks; retry later."""


class ConnectionFailed(ActorschedError):
    """The coordinator did not answer in time, or refused our protocol version."""


class Timeout(ActorschedError):
    """A client-side wait ran past its deadline; the task itself is unaffected."""
