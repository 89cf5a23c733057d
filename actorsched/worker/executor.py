"""The worker's pool of child processes: one child per slot, one task per child at a time.

Theory of operation
-------------------
The parent (the worker's event loop) owns a local FIFO of :class:`Job` and one
:class:`_Slot` per child.  :meth:`Executor.dispatch` hands queued jobs to idle children
over a pair of one-way pipes; the child imports and calls the function and sends
back one msgpack-encoded reply ``[ok, value, error_type, error_message, traceback,
duration_s]``.  Packing the reply in the child doubles as the check that the value can
travel on the wire.

Each message on a pipe is an 8-byte big-endian length and then the payload; an empty
payload tells an idle child to exit.  Both sides use plain ``os.read``/``os.write`` on
the pipes' fds (``multiprocessing.Pipe`` only creates them and carries them to the
child): a message of up to 64 KiB then costs one system call each way.  At most one
message is ever in flight per pipe (a job, then its reply), so a read never takes
bytes of the next message.

The parent does not wait for a child to finish: the loop polls :meth:`Executor.fds`
(each child's pipe and process sentinel) and calls :meth:`Executor.collect` for the
ready ones, then :meth:`Executor.expire` for deadlines.  Once a reply has begun, the
parent reads it to the end (at most ``max_result_bytes``: a longer one is refused from
its length alone, unread, and its child replaced); a child stopped half-way through
writing would hold the parent there.  A child that times out, is cancelled while
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
import os
import signal
import struct
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
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
_HEADER = struct.Struct("!Q")  # the payload's length in bytes
_READ_BYTES = 64 * 1024  # a pipe's default capacity: most messages arrive in one read


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


def _run_one(name: str, args: list[Any], kwargs: dict[str, Any], cache: dict[str, Callable[..., Any]],
             pack: Callable[[Any], bytes]) -> bytes:
    started = time.perf_counter()
    try:
        function = cache.get(name) or _resolve(name, cache)
        value = function(*args, **kwargs)
    except _TaskNotFound as exc:
        return pack([False, None, "TaskNotFound", str(exc), "", time.perf_counter() - started])
    except BaseException as exc:  # noqa: B036 - a task's SystemExit must be reported, not kill the slot
        return pack([False, None, error_type_name(exc), str(exc), traceback.format_exc(),
                     time.perf_counter() - started])
    duration_s = time.perf_counter() - started
    try:
        return pack([True, value, "", "", "", duration_s])
    except (TypeError, ValueError, OverflowError) as exc:
        message = (f"task {name!r} returned a value of type {type(value).__name__} that cannot be sent "
                   f"({exc}); return plain data: {_PLAIN_DATA}")
        return pack([False, None, "ResultNotSerializable", message, "", duration_s])


def _child_main(from_parent: Connection, to_parent: Connection) -> None:
    """Body of one child process: run jobs from ``from_parent`` until it closes or says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    read_fd, write_fd = from_parent.fileno(), to_parent.fileno()
    pack = msgpack.Packer(use_bin_type=True).pack  # reused: a failed pack resets its buffer
    cache: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            data = _read_message(read_fd)
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        task_id, epoch, attempt, name, args, kwargs = msgpack.unpackb(data, raw=False, strict_map_key=False)
        context._enter(task_id, epoch, attempt)
        try:
            _write_message(write_fd, _run_one(name, args, kwargs, cache, pack))
        except OSError:
            return


# ----------------------------------------------------------------- framing


def _write_message(fd: int, payload: bytes) -> None:
    """Write ``payload`` with its length prefix to the blocking pipe ``fd``; OSError if it broke."""
    data = _HEADER.pack(len(payload)) + payload
    written = os.write(fd, data)
    if written < len(data):  # more than a pipe holds: the reader drains it as we go
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])


class _ReplyTooLarge(Exception):
    """Parent side only: the child announced a reply longer than a result may be."""

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


def _read_message(fd: int, limit: int | None = None) -> bytes:
    """Read one whole message from the blocking pipe ``fd``; EOFError if it closes first.

    With ``limit``, a message announced longer than that is not read: _ReplyTooLarge.
    """
    data = os.read(fd, _READ_BYTES)
    if len(data) >= _HEADER.size:
        length = _HEADER.unpack_from(data)[0]
        if limit is not None and length > limit:
            raise _ReplyTooLarge(length)
        if len(data) == _HEADER.size + length:
            return data[_HEADER.size:]  # the hot path: the whole message in one read
    buffer = bytearray(data)
    while True:
        if not data:
            raise EOFError(f"pipe closed after {len(buffer)} byte(s) of a message")
        if len(buffer) >= _HEADER.size:
            end = _HEADER.size + _HEADER.unpack_from(buffer)[0]
            if limit is not None and end - _HEADER.size > limit:
                raise _ReplyTooLarge(end - _HEADER.size)
            if len(buffer) >= end:
                break
            data = os.read(fd, end - len(buffer))
        else:
            data = os.read(fd, _HEADER.size - len(buffer))
        buffer += data
    if len(buffer) > end:  # only one message is ever in flight: a peer that breaks that is broken
        raise OSError(f"pipe carried {len(buffer) - end} byte(s) beyond one message")
    return bytes(buffer[_HEADER.size:])


# ----------------------------------------------------------------- parent side


@dataclass(slots=True, eq=False)  # compared by identity
class _Slot:
    index: int
    process: BaseProcess
    to_child: Connection  # kept to close it; written through ``write_fd``
    from_child: Connection  # kept to close it; read through ``read_fd``
    write_fd: int
    read_fd: int
    job: Job | None = None
    started_at: float = 0.0
    deadline: float = math.inf


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
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: building a Packer per job costs more
        self._slots: list[_Slot] = []
        self._idle: list[_Slot] = []
        self._by_fd: dict[int, _Slot] = {}  # each child's read_fd and sentinel
        self._queue: deque[Job] = deque()
        self._queued: dict[str, Job] = {}
        self._running: dict[str, _Slot] = {}
        self._timed: dict[str, _Slot] = {}  # the running ones with a deadline, usually none
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
                    _write_message(slot.write_fd, _STOP)
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
            _close(slot)
        self._slots.clear()
        self._idle.clear()
        self._by_fd.clear()
        self._running.clear()
        self._timed.clear()
        self._queue.clear()
        self._queued.clear()
        self.fds_version += 1

    def _spawn(self, index: int) -> _Slot:
        from_parent, to_child = self._context.Pipe(duplex=False)
        from_child, to_parent = self._context.Pipe(duplex=False)
        process: BaseProcess = self._context.Process(  # type: ignore[attr-defined]  # typeshed: BaseContext
            target=_child_main, args=(from_parent, to_parent), name=f"actorsched-child-{index}", daemon=True,
        )
        process.start()
        from_parent.close()
        to_parent.close()  # the child now holds the only write end: its exit is EOF on read_fd
        slot = _Slot(index, process, to_child, from_child, to_child.fileno(), from_child.fileno())
        self._by_fd[slot.read_fd] = slot
        self._by_fd[process.sentinel] = slot
        self.fds_version += 1
        return slot

    def _replace(self, slot: _Slot) -> int | None:
        """Kill ``slot``'s child, start a fresh one in its place; the child's exit code."""
        slot.process.kill()
        slot.process.join(5.0)
        exitcode = slot.process.exitcode
        self._by_fd.pop(slot.read_fd, None)
        self._by_fd.pop(slot.process.sentinel, None)
        _close(slot)
        if slot.job is not None:
            self._running.pop(slot.job.task_id, None)
            self._timed.pop(slot.job.task_id, None)
        if slot in self._idle:
            self._idle.remove(slot)
        fresh = self._spawn(slot.index)
        self._slots[self._slots.index(slot)] = fresh
        self._idle.append(fresh)
        self.children_replaced += 1
        return exitcode

    # --- queries

    def fds(self) -> list[int]:
        """File descriptors to poll for readability: each child's reply pipe and process sentinel."""
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
        if not self._timed:
            return math.inf
        return min(slot.deadline for slot in self._timed.values())

    # --- work

    def submit(self, job: Job) -> None:
        """Queue ``job``; it runs when :meth:`dispatch` finds an idle child."""
        self._queue.append(job)
        self._queued[job.task_id] = job

    def dispatch(self, now: float) -> list[Job]:
        """Hand queued jobs to idle children; the jobs that started."""
        started: list[Job] = []
        while self._idle and self._queue:
            job = self._queue.popleft()
            if self._queued.get(job.task_id) is not job:
                continue  # cancelled or superseded while queued
            del self._queued[job.task_id]
            slot = self._idle.pop()
            try:
                _write_message(slot.write_fd, self._pack([job.task_id, job.epoch, job.attempt, job.name,
                                                          job.args, job.kwargs]))
            except OSError:  # the idle child died since the last poll: replace it and retry the job
                self._replace(slot)
                self._queue.appendleft(job)
                self._queued[job.task_id] = job
                continue
            slot.job = job
            slot.started_at = now
            self._running[job.task_id] = slot
            if job.timeout_s > 0:
                slot.deadline = now + job.timeout_s
                self._timed[job.task_id] = slot
            started.append(job)
        return started

    def collect(self, now: float, ready: Collection[int]) -> list[TaskOutcome]:
        """Outcomes of the children whose fds (pipe or sentinel) the caller's poll found ready.

        A ready pipe fd is read without another poll (the hot path); for a ready sentinel
        alone a zero-timeout poll of the pipe decides whether a last reply is waiting.
        """
        by_fd = self._by_fd
        readable: list[_Slot] = []
        exited: list[_Slot] = []
        for fd in ready:  # sort first: handling one slot may replace it and reuse its fd numbers
            slot = by_fd.get(fd)
            if slot is not None:
                (readable if fd == slot.read_fd else exited).append(slot)
        if exited:
            exited = [slot for slot in exited if slot not in readable]  # the pipe read covers it
        outcomes: list[TaskOutcome] = []
        for slot in readable:
            self._check(slot, True, now, outcomes)
        for slot in exited:
            self._check(slot, False, now, outcomes)
        self.tasks_finished += len(outcomes)
        return outcomes

    def _check(self, slot: _Slot, readable: bool, now: float, outcomes: list[TaskOutcome]) -> None:
        job = slot.job
        if job is None:
            if not slot.process.is_alive():
                log.warning("idle child died pid=%s exitcode=%s; replacing it",
                            slot.process.pid, slot.process.exitcode)
                self._replace(slot)
            return
        try:
            if not readable and not slot.from_child.poll(0):
                if slot.process.is_alive():
                    return
                raise EOFError
            reply = _read_message(slot.read_fd, self.max_result_bytes)
        except _ReplyTooLarge as exc:  # not read: the child, blocked writing it, is replaced
            self._replace(slot)
            outcomes.append(failed(job, "ResultTooLarge",
                                   f"task {job.name!r} returned {exc.length} bytes, more than the "
                                   f"{self.max_result_bytes} a result may carry; return less data or raise "
                                   f"max_message_bytes on both sides", now - slot.started_at))
            return
        except (EOFError, OSError):
            exitcode = self._replace(slot)
            outcomes.append(failed(job, "ChildProcessDied", _death_message(job, exitcode), now - slot.started_at))
            return
        outcomes.append(self._finish(slot, job, reply, now))

    def _finish(self, slot: _Slot, job: Job, reply: bytes, now: float) -> TaskOutcome:
        slot.job = None
        del self._running[job.task_id]
        if slot.deadline != math.inf:
            slot.deadline = math.inf
            del self._timed[job.task_id]
        self._idle.append(slot)
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
        for slot in [s for s in self._timed.values() if s.deadline <= now]:
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


def _close(slot: _Slot) -> None:
    slot.to_child.close()
    slot.from_child.close()


def _death_message(job: Job, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"the child process running task {job.name!r} {how}"
