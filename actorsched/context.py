"""What task code may know about the attempt running it.

Inside a worker's child process, :func:`current_task` returns the task id and the
fencing token ``(epoch, attempt)`` of the attempt being run, for example to make an
external side effect idempotent (write under the token, refuse older tokens).
Outside a task it returns None.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskContext:
    task_id: str
    epoch: int
    attempt: int


_current: TaskContext | None = None


def current_task() -> TaskContext | None:
    """The attempt this code runs in, or None outside a task."""
    return _current


def _enter(task_id: str, epoch: int, attempt: int) -> None:
    """Called by the worker's child process before each attempt."""
    global _current
    _current = TaskContext(task_id, epoch, attempt)
