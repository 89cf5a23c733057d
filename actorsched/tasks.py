"""Built-in tasks for demos, benchmarks and smoke tests.

They are allowed by the default worker config (``allowed_modules = ["actorsched.tasks"]``).
Each is an ordinary function: a task is any importable ``package.module:function``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from actorsched.context import current_task


def noop() -> None:
    """Does nothing: the cheapest task, for measuring the scheduler itself."""


def echo(*args: Any, **kwargs: Any) -> Any:
    """Returns its single argument, or all arguments as ``[args, kwargs]``."""
    if len(args) == 1 and not kwargs:
        return args[0]
    return [list(args), kwargs]


def sleep(seconds: float) -> float:
    """Sleeps ``seconds`` and returns them: a task that holds a slot for a while."""
    time.sleep(seconds)
    return seconds


def fail(message: str = "task failed on purpose") -> None:
    """Raises RuntimeError(message): for testing error reports."""
    raise RuntimeError(message)


def add(*numbers: float) -> float:
    return sum(numbers)


def crash(exit_code: int = 137) -> None:
    """Kills the process running it without a Python exception (like a segfault would)."""
    os._exit(exit_code)


def pid() -> int:
    """The id of the process that ran the task."""
    return os.getpid()


def spin(seconds: float) -> int:
    """Burns CPU for ``seconds``; returns how many loop turns it made."""
    deadline = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < deadline:
        turns += 1
    return turns


def flaky(failures: int, value: Any = None) -> Any:
    """Raises RuntimeError on its first ``failures`` attempts, then returns ``value``.

    For retry tests and the retry-storm benchmark: the attempt number comes from the
    fencing token of the running attempt (:func:`actorsched.context.current_task`).
    """
    task = current_task()
    attempt = task.attempt if task is not None else 1
    if attempt <= failures:
        raise RuntimeError(f"flaky task failing on purpose on attempt {attempt} of {failures + 1}")
    return value


def fail_if_env(variable: str, value: Any = None) -> Any:
    """Raises RuntimeError on a worker whose environment sets ``variable``, else returns ``value``.

    Stands in for a broken host (a missing library, a full disk): the task is fine, one
    worker is not.  For circuit-breaker tests.
    """
    if os.environ.get(variable):
        raise RuntimeError(f"this worker is broken on purpose (${variable} is set)")
    return value
