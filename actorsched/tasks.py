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


def shout(text: str, times: int = 1, stream: str = "stdout") -> int:
    """Writes ``text`` (a line) ``times`` times to ``stream``: "stdout", "stderr", "both" (stdout, then
    stderr) or "fd" (straight to file descriptors 1 and 2, as C code would); returns the bytes written.

    For tests of captured output (``actorsched logs``).
    """
    import sys

    line = text + "\n"
    written = 0
    for _ in range(times):
        if stream in ("stdout", "both"):
            sys.stdout.write(line)
            written += len(line.encode())
        if stream in ("stderr", "both"):
            sys.stderr.write(line)
            written += len(line.encode())
        if stream == "fd":
            data = line.encode()
            os.write(1, data)
            os.write(2, data)
            written += 2 * len(data)
    if stream not in ("stdout", "stderr", "both", "fd"):
        raise ValueError(f"stream must be 'stdout', 'stderr', 'both' or 'fd', got {stream!r}")
    return written


def fail_after_printing(text: str) -> None:
    """Prints ``text`` (a line) to stdout, then raises RuntimeError: a failed task with something to show."""
    print(text, flush=True)
    raise RuntimeError(f"failed on purpose after printing {len(text) + 1} bytes")
