"""Task states and the one table of allowed transitions.

Theory of operation
-------------------
::

    WAITING --deps done--> QUEUED --placed--> ASSIGNED --worker started--> RUNNING
       |                     ^  ^                |                            |
       |                     |  +---------- worker lost, attempts left -------+
       |                     |                   v                            v
       |                 RETRYING <------ attempt failed, attempts left -------
       v                                                                      v
    FAILED / CANCELLED (dependency failed or cancelled)        SUCCEEDED | FAILED | CANCELLED

A task is in exactly one state.  SUCCEEDED, FAILED and CANCELLED are final: nothing
leaves them, which is what makes "at most one committed result" checkable.  Any move
that is not in :data:`TRANSITIONS` raises :class:`InvalidTransition` with the task's
recent history, because it means our own bookkeeping is wrong.
"""

from __future__ import annotations

from enum import Enum

from actorsched.errors import InvalidTransition


class TaskState(Enum):
    WAITING = "WAITING"
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    # Members are singletons, so identity hashing is exact, and it is C-fast: the
    # queue hashes states several times per task transition.
    __hash__ = object.__hash__



FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})
NOT_FOUND = "NOT_FOUND"

_S = TaskState
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _S.WAITING: frozenset({_S.QUEUED, _S.FAILED, _S.CANCELLED}),
    _S.QUEUED: frozenset({_S.ASSIGNED, _S.CANCELLED, _S.FAILED}),
    _S.ASSIGNED: frozenset({_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.RETRYING, _S.QUEUED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.RETRYING, _S.QUEUED}),
    _S.RETRYING: frozenset({_S.QUEUED, _S.FAILED, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}


def check_transition(task_id: str, current: TaskState, target: TaskState, history: list[TaskState]) -> None:
    """Raise InvalidTransition unless ``current -> target`` is in the table."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(task_id, current.value, target.value, [s.value for s in history[-8:]])
