"""The worker's pool of child processes: one child per slot, one task per child at a time.

Theory of operation
-------------------
The parent (the worker's event loop) owns a local FIFO of :class:`Job` and one
:class:`_Slot` per child.  :meth:`Executor.dispatch` hands queued jobs to idle children
over a ``multiprocessing`` pipe; the child imports and calls the function and sends
back one msgpack-encoded reply ``[ok, value, error_type, error_message, traceback,
duration_s]``.  Packing the reply in the child doubles as the check that the value can
travel on the wire.

The parent never blocks on a child: the loop polls :meth:`Executor.fds` (each child's
pipe and process sentinel) and calls :meth:`Executor.collect` for the ready ones, then
:meth:`Executor.expire` for deadlines.  A child that times out, is cancelled while
running, or dies is killed (SIGKILL), joined and replaced at once, so a slot is never
lost.  Every finished attempt becomes exactly one :class:`~actorsched.protocol.TaskOutcome`
carrying the attempt's fencing token ``(epoch, attempt)``.

Children ignore SIGINT (the parent handles signals) and exit when their pipe closes.
:meth:`Executor.stop` kills and joins every child, so none outlives the worker.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import math
import multiprocessing
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack

from actorsched import context
from actorsched.protocol import DEFAULT_MAX_MESSAGE_BYTES, TASK_NAME_RE, AttemptRef, ErrorInfo, TaskOutcome

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("actorsched.tasks", "actorsched.worker.executor")
_PLAIN_DATA = "None, bool, int, float, str, bytes, list, dict with str keys"
_STOP = b""  # sent to an idle child: exit cleanly


# ----------------------------------------------------------------- pure policy


def check_task_name(name: str, allowed_modules: Sequence[str]) -> ErrorInfo | None:
    """None if ``name`` may run here, else a ``TaskNotAllowed`` error saying why and how to fix it.

    ``name`` must be ``package.module:function``; the module part must match one of the
    fnmatch patterns in ``allowed_modules`` (``"myproj.*"`` allows every module under myproj).
    """
    if not TASK_NAME_RE.fullmatch(name):
        return ErrorInfo(
            "TaskNotAllowed",
            f"task name {name!r} is malformed; expected 'package.module:function' "
            f"(dotted module path, a colon, then a function name)",
        )
    module = name.partition(":")[0]
    if any(fnmatch.fnmatchcase(module, pattern) for pattern in allowed_modules):
        return None
    patterns = ", ".join(repr(p) for p in allowed_modules) or "none"
    return ErrorInfo(
        "TaskNotAllowed",
        f"task {name!r}: module {module!r} is not allowed on this worker (allowed_modules: {patterns}); "
        f"add {module!r} or a pattern matching it to [execution] allowed_modules in the worker config",
    )


def error_type_name(exc: BaseException) -> str:
    """``RuntimeError`` for builtins, ``package.module.Class`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt to run locally; ``timeout_s`` 0 means no timeout."""

    task_id: str
    epoch: int
    attempt: int
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout_s: float = 0.0

    @property
    def ref(self) -> AttemptRef:
        return AttemptRef(self.task_id, self.epoch, self.attempt)


def failed(job: Job, error_type: str, message: str, duration_s: float = 0.0) -> TaskOutcome:
    """The outcome of ``job`` failing with ``error_type`` before or outside the task's own code."""
    return TaskOutcome(job.task_id, job.epoch, job.attempt, False, None, ErrorInfo(error_type, message), duration_s)


# ----------------------------------------------------------------- child side


def _resolve(name: str, cache: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise _TaskNotFound(f"task {name!r}: cannot import module {module_name!r} ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise _TaskNotFound(f"task {name!r}: module {module_name!r} has no function {function_name!r}")
    cache[name] = function
    return function


class _TaskNotFound(Exception):
    """Child side only: the task's module or function does not exist."""


def _run_one(name: str, args: list[Any], kwargs: dict[str, Any], cache: dict[str, Callable[..., Any]]) -> bytes:
    started = time.perf_counter()
    try:
        function = cache.get(name) or _resolve(name, cache)
        value = function(*args, **kwargs)
    except _TaskNotFound as exc:
        return msgpack.packb([False, None, "TaskNotFound", str(exc), "", time.perf_counter() - started])
    except BaseException as exc:  # noqa: B036 - a task's SystemExit must be reported, not kill the slot
        return msgpack.packb([False, None, error_type_name(exc), str(exc), traceback.format_exc(),
                              time.perf_counter() - started])
    duration_s = time.perf_counter() - started
    try:
        return msgpack.packb([True, value, "", "", "", duration_s], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        message = (f"task {name!r} returned a value of type {type(value).__name__} that cannot be sent "
                   f"({exc}); return plain data: {_PLAIN_DATA}")
        return msgpack.packb([False, None, "ResultNotSerializable", message, "", duration_s])


def _child_main(conn: Connection) -> None:
    """Body of one child process: run jobs from ``conn`` until it closes or says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cache: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        task_id, epoch, attempt, name, args, kwargs = msgpack.unpackb(data, raw=False, strict_map_key=False)
        context._enter(task_id, epoch, attempt)
        try:
            conn.send_bytes(_run_one(name, args, kwargs, cache))
        except (BrokenPipeError, OSError):
            return


# ----------------------------------------------------------------- parent side


@dataclass(slots=True)
class _Slot:
    index: int
    process: BaseProcess
    conn: Connection
    job: Job | None = None
    started_at: float = 0.0
    deadline: float = math.inf
    fds: tuple[int, int] = field(default=(-1, -1))


class Executor:
    """A fixed pool of child processes running :class:`Job` s; see the module docstring.

    Not thread-safe: one event loop owns it.  Every method that finishes attempts
    returns their outcomes; the caller reports them.
    """

    def __init__(self, slots: int, start_method: str = "forkserver",
                 preload: Sequence[str] = DEFAULT_PRELOAD,
                 max_result_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.max_result_bytes = max_result_bytes
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(list(preload))
        self._slots: list[_Slot] = []
        self._idle: list[_Slot] = []
        self._by_fd: dict[int, _Slot] = {}
        self._queue: deque[Job] = deque()
        self._queued: dict[str, Job] = {}
        self._running: dict[str, _Slot] = {}
        self.fds_version = 0  # bumped whenever fds() changes, so pollers re-register
        self.children_replaced = 0
        self.tasks_finished = 0

    # --- lifecycle

    def start(self) -> None:
        """Start one child per slot (blocks until each is forked)."""
        for index in range(self.slots):
            slot = self._spawn(index)
            self._slots.append(slot)
            self._idle.append(slot)
        log.info("executor started slots=%s start_method=%s", self.slots, self._context.get_start_method())

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop every child: idle ones are asked to exit, the rest killed; all are joined.

        Outcomes of attempts still running are discarded: the coordinator requeues what a
        departed worker held.
        """
        for slot in self._slots:
            if slot.job is None:
                try:
                    slot.conn.send_bytes(_STOP)
                except OSError:
                    pass  # already gone; joined below
            else:
                slot.process.kill()
        deadline = time.monotonic() + grace_s
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(1.0)
            slot.conn.close()
        self._slots.clear()
        self._idle.clear()
        self._by_fd.clear()
        self._running.clear()
        self._queue.clear()
        self._queued.clear()
        self.fds_version += 1

    def _spawn(self, index: int) -> _Slot:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process: BaseProcess = self._context.Process(  # type: ignore[attr-defined]  # typeshed: BaseContext
            target=_child_main, args=(child_end,), name=f"actorsched-child-{index}", daemon=True,
        )
        process.start()
        child_end.close()
        slot = _Slot(index, process, parent_end, fds=(parent_end.fileno(), process.sentinel))
        for fd in slot.fds:
            self._by_fd[fd] = slot
        self.fds_version += 1
        return slot

    def _replace(self, slot: _Slot) -> int | None:
        """Kill ``slot``'s child, start a fresh one in its place; the child's exit code."""
        slot.process.kill()
        slot.process.join(5.0)
        exitcode = slot.process.exitcode
        slot.conn.close()
        for fd in slot.fds:
            self._by_fd.pop(fd, None)
        if slot.job is not None:
            self._running.pop(slot.job.task_id, None)
        if slot in self._idle:
            self._idle.remove(slot)
        fresh = self._spawn(slot.index)
        self._slots[self._slots.index(slot)] = fresh
        self._idle.append(fresh)
        self.children_replaced += 1
        return exitcode

    # --- queries

    def fds(self) -> list[int]:
        """File descriptors to poll for readability: each child's pipe and process sentinel."""
        return list(self._by_fd)

    def held(self) -> list[AttemptRef]:
        """Every attempt queued here or running in a child."""
        refs = [slot.job.ref for slot in self._running.values() if slot.job is not None]
        refs.extend(job.ref for job in self._queued.values())
        return refs

    def held_task_ids(self) -> list[str]:
        return [*self._running, *self._queued]

    def holds(self, task_id: str) -> bool:
        return task_id in self._running or task_id in self._queued

    def is_empty(self) -> bool:
        """Nothing queued and nothing running."""
        return not self._running and not self._queued

    def next_deadline(self) -> float:
        """The earliest running task's deadline (``math.inf`` if none)."""
        return min((slot.deadline for slot in self._running.values()), default=math.inf)

    # --- work

    def submit(self, job: Job) -> None:
        """Queue ``job``; it runs when :meth:`dispatch` finds an idle child."""
        self._queue.append(job)
        self._queued[job.task_id] = job

    def dispatch(self, now: float) -> list[AttemptRef]:
        """Hand queued jobs to idle children; the attempts that started."""
        started: list[AttemptRef] = []
        while self._idle and self._queue:
            job = self._queue.popleft()
            if self._queued.get(job.task_id) is not job:
                continue  # cancelled or superseded while queued
            del self._queued[job.task_id]
            slot = self._idle.pop()
            payload = msgpack.packb([job.task_id, job.epoch, job.attempt, job.name, job.args, job.kwargs],
                                    use_bin_type=True)
            try:
                slot.conn.send_bytes(payload)
            except OSError:  # the idle child died since the last poll: replace it and retry the job
                self._replace(slot)
                self._queue.appendleft(job)
                self._queued[job.task_id] = job
                continue
            slot.job = job
            slot.started_at = now
            slot.deadline = now + job.timeout_s if job.timeout_s > 0 else math.inf
            self._running[job.task_id] = slot
            started.append(job.ref)
        return started

    def collect(self, now: float, ready: Collection[int]) -> list[TaskOutcome]:
        """Outcomes of the children whose fds (pipe or sentinel) the caller's poll found ready.

        A ready pipe fd is read without another poll (the hot path); for a ready sentinel
        alone ``Connection.poll(0)`` decides whether a last reply is waiting.
        """
        outcomes: list[TaskOutcome] = []
        seen: dict[int, tuple[_Slot, bool]] = {}
        for fd in ready:
            slot = self._by_fd.get(fd)
            if slot is not None and (fd == slot.fds[0] or id(slot) not in seen):
                seen[id(slot)] = (slot, fd == slot.fds[0])
        checks = list(seen.values())
        for slot, readable in checks:
            job = slot.job
            if job is None:
                if not slot.process.is_alive():
                    log.warning("idle child died pid=%s exitcode=%s; replacing it",
                                slot.process.pid, slot.process.exitcode)
                    self._replace(slot)
                continue
            try:
                if not readable and not slot.conn.poll(0):
                    if slot.process.is_alive():
                        continue
                    raise EOFError
                reply = slot.conn.recv_bytes()
            except (EOFError, OSError):
                exitcode = self._replace(slot)
                outcomes.append(failed(job, "ChildProcessDied", _death_message(job, exitcode),
                                       now - slot.started_at))
                continue
            outcomes.append(self._finish(slot, job, reply, now))
        self.tasks_finished += len(outcomes)
        return outcomes

    def _finish(self, slot: _Slot, job: Job, reply: bytes, now: float) -> TaskOutcome:
        slot.job = None
        slot.deadline = math.inf
        del self._running[job.task_id]
        self._idle.append(slot)
        if len(reply) > self.max_result_bytes:
            return failed(job, "ResultTooLarge",
                          f"task {job.name!r} returned {len(reply)} bytes, more than the "
                          f"{self.max_result_bytes} a result may carry; return less data or raise "
                          f"max_message_bytes on both sides", now - slot.started_at)
        try:
            ok, value, error_type, message, trace, duration_s = msgpack.unpackb(reply, raw=False,
                                                                                strict_map_key=True)
        except ValueError as exc:  # e.g. a dict with int keys: msgpack packs it, the protocol refuses it
            return failed(job, "ResultNotSerializable",
                          f"task {job.name!r} returned a value that cannot be sent ({exc}); "
                          f"return plain data: {_PLAIN_DATA}", now - slot.started_at)
        error = None if ok else ErrorInfo(error_type, message, trace)
        return TaskOutcome(job.task_id, job.epoch, job.attempt, ok, value, error, duration_s)

    def expire(self, now: float) -> list[TaskOutcome]:
        """Kill and replace the children whose task ran past its timeout; their outcomes."""
        outcomes: list[TaskOutcome] = []
        for slot in [s for s in self._running.values() if s.deadline <= now]:
            job = slot.job
            assert job is not None
            self._replace(slot)
            outcomes.append(failed(job, "TimedOut",
                                   f"task {job.name!r} ran longer than its timeout of {job.timeout_s:g}s "
                                   f"and its child process was killed", now - slot.started_at))
        self.tasks_finished += len(outcomes)
        return outcomes

    def cancel(self, ref: AttemptRef, now: float, reason: str = "cancelled by the coordinator") -> TaskOutcome | None:
        """Drop a queued attempt or kill a running one; None if this exact attempt is not held."""
        job = self._queued.get(ref.task_id)
        if job is not None and job.ref == ref:
            del self._queued[ref.task_id]
            self.tasks_finished += 1
            return failed(job, "Cancelled", f"task {job.name!r} was {reason} before it started")
        slot = self._running.get(ref.task_id)
        if slot is not None and slot.job is not None and slot.job.ref == ref:
            job = slot.job
            self._replace(slot)
            self.tasks_finished += 1
            return failed(job, "Cancelled", f"task {job.name!r} was {reason} while running; its child was killed",
                          now - slot.started_at)
        return None


def _death_message(job: Job, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"the child process running task {job.name!r} {how}"
