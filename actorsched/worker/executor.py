"""The worker's pool of child processes: one child per slot, one batch of jobs per child at a time.

Theory of operation
-------------------
The parent (the worker's event loop) owns a local queue of :class:`Job` (best priority
first, then arrival) and one :class:`_Slot` per child.  :meth:`Executor.dispatch` hands
queued jobs to idle children over a pair of one-way pipes.  A job the coordinator marks
*short* (its name's measured run time is small) and without a timeout takes other
such jobs along, up to an even share of the queue: the child runs the batch in order
and writes each job's reply as soon as it ends, one msgpack-encoded
``[ok, value, error_type, error_message, traceback, duration_s, output]`` per job.  Packing
the reply in the child doubles as the check that the value can travel on the wire, and
the parent's reading of it, as strict as the coordinator's (no extension type, which
msgpack packs but the wire refuses; str keys), completes it: a value either check refuses
is a ``ResultNotSerializable`` failure of its task, and a reply that is not one a child
writes a ``ChildReplyInvalid`` failure, so no outcome the coordinator would refuse (with
the whole Results frame carrying it) ever leaves the worker.

Captured output: each child points its file descriptors 1 and 2 at one pipe of its own
and replaces ``sys.stdout``/``sys.stderr`` with text streams that write into the same
bounded buffer (:class:`_Capture`), so both ``print`` and C-level or subprocess writes
are caught, in order.  A job's output is the last :data:`MAX_OUTPUT_BYTES` bytes of
what was written while it ran (after ``…[N bytes cut]`` when more was).  A pump thread
reads the pipe only while something is written to it (it sleeps in ``poll`` otherwise),
so a task can write any amount without filling the pipe; when a job ends the child reads
what is left itself.  A job that writes nothing costs one ``ioctl(FIONREAD)``: about a
microsecond.  What a child killed by a timeout, a cancel or
its own death had written is lost with it.

Each message on a pipe is an 8-byte big-endian length and then the payload; an empty
payload tells an idle child to exit.  Both sides use plain ``os.read``/``os.write`` on
the pipes' fds (``multiprocessing.Pipe`` only creates them and carries them to the
child): a message of up to 64 KiB then costs one system call each way.  The parent
sends a child a new batch only once every reply of the last one is in.

The parent does not wait for a child: the loop polls :meth:`Executor.fds` (each child's
pipe and process sentinel) and calls :meth:`Executor.collect` for the ready ones, which
reads what is there without blocking and keeps a reply that has only begun until the
rest arrives; a reply announced longer than ``max_result_bytes`` is refused from its
length alone, unread, and its child replaced.  Replies come in order, so the first
unanswered job of a batch is the one that was running: a child that dies, times out
or is cancelled is killed (SIGKILL); that job gets the outcome and the rest of its
batch go back to the queue.  The dead child is replaced by :meth:`Executor.respawn`
(the next :meth:`Executor.dispatch` does it), after the caller has sent the outcome,
so a slot is never lost and a death is reported without waiting for a new process.
Every finished attempt becomes exactly one :class:`~actorsched.protocol.TaskOutcome`
carrying the attempt's fencing token ``(epoch, attempt)``.

Tracing: an attempt whose task is traced (``Job.trace``, from ``Assignment.trace``) gets
an ``execute`` span when its outcome is known, made here in the parent with the child's
measured run time (:meth:`Executor._traced`, :func:`actorsched.tracing.executed`); the
children never load OpenTelemetry.  Untraced attempts cost one test of an empty string.

:meth:`Executor.release` gives back queued jobs that have not started (the
coordinator moves them to an idle worker).  Children exit when their pipe closes.
:meth:`Executor.stop` kills and joins every child, so none outlives the worker.

Stop signals are the worker's: it drains (running tasks finish, up to its drain timeout)
and then ends its children itself, idle ones through their pipe and busy ones with
SIGKILL, which no process can ignore.  So children ignore SIGINT (a terminal's Ctrl-C
reaches the whole process group) and SIGTERM: systemd's stop with the default
``KillMode=control-group`` sends it to every process of the unit, and a child that died
of it would fail its task as ``ChildProcessDied`` instead of letting it drain.  SIGTERM
is caught by a handler that does nothing, not set to ``SIG_IGN``: an ignored signal stays
ignored across ``exec``, so every subprocess a task starts would ignore SIGTERM too, and
``Popen.terminate()`` would no longer stop it; a handler is reset by ``exec``, and a
fork of the child (``multiprocessing`` in a task, say) gets the default back.  The fork
server that starts the children ignores SIGTERM as well (it starts nothing but children,
and exits by itself when the worker does): dead, it would leave each child's process
sentinel at end-of-file for good, and the worker's loop spinning on it.
"""

from __future__ import annotations

import array
import fcntl
import fnmatch
import heapq
import importlib
import io
import logging
import math
import multiprocessing
import os
import reprlib
import select
import signal
import struct
import sys
import termios
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import msgpack

from actorsched import context, tracing
from actorsched.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_SECONDS,
    TASK_NAME_RE,
    AttemptRef,
    ErrorInfo,
    TaskOutcome,
    unpack_error,
    unpack_strict,
)

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("actorsched.tasks", "actorsched.worker.executor")
_PLAIN_DATA = "None, bool, int, float, str, bytes, list, dict with str keys"
_STOP = b""  # sent to an idle child: exit cleanly
_HEADER = struct.Struct("!Q")  # the payload's length in bytes
_READ_BYTES = 64 * 1024  # a pipe's default capacity: most messages arrive in one read
MAX_BATCH = 64  # short jobs one child takes at a time
# MAX_OUTPUT_BYTES (from the protocol): the last bytes of stdout and stderr kept per attempt


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
    priority: int = 0
    short: bool = False  # the coordinator expects it to finish quickly: it may share a child's batch
    trace: str = ""  # its task's trace context (Assignment.trace): "" untraced

    @property
    def ref(self) -> AttemptRef:
        return AttemptRef(self.task_id, self.epoch, self.attempt)


def failed(job: Job, error_type: str, message: str, duration_s: float = 0.0) -> TaskOutcome:
    """The outcome of ``job`` failing with ``error_type`` before or outside the task's own code."""
    return TaskOutcome(job.task_id, job.epoch, job.attempt, False, None, ErrorInfo(error_type, message), duration_s)


def _with_output(outcome: TaskOutcome, output: str) -> TaskOutcome:
    return TaskOutcome(outcome.task_id, outcome.epoch, outcome.attempt, outcome.ok, outcome.value, outcome.error,
                       outcome.duration_s, output)


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


def cut_output(data: bytes | bytearray, total: int, limit: int = MAX_OUTPUT_BYTES) -> str:
    """The text of captured output: the last ``limit`` bytes of ``data``, which are the last of
    ``total`` bytes written, after a ``…[N bytes cut]`` line when some were cut."""
    if total <= limit and len(data) == total:
        return bytes(data).decode("utf-8", "replace")
    kept = bytes(data[-limit:])
    start = 0
    while start < min(3, len(kept)) and 0x80 <= kept[start] < 0xC0:  # a character cut in half at the front
        start += 1
    return f"…[{total - len(kept) + start} bytes cut]\n" + kept[start:].decode("utf-8", "replace")


class _Capture:
    """Child side only: what the running job writes to stdout and stderr, bounded; see the module docstring.

    File descriptors 1 and 2 become the write end of one pipe (so C code and subprocesses
    write there), and ``sys.stdout``/``sys.stderr`` text streams that append to the buffer
    directly, after reading whatever the pipe holds, so that the two kinds of writes keep
    their order.  Only the last ``2 * limit`` bytes are ever held.
    """

    def __init__(self, limit: int = MAX_OUTPUT_BYTES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._data = bytearray()
        self._total = 0  # bytes written since the last take(), kept or not
        self._count = array.array("i", [0])  # FIONREAD's answer
        self._pumping = False  # the pump thread woke to read
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._fd = read_fd
        self._stdout = sys.stdout = _CapturedStream(self, 1)
        self._stderr = sys.stderr = _CapturedStream(self, 2)
        threading.Thread(target=self._pump, name="actorsched-output", daemon=True).start()

    def append(self, data: bytes) -> None:
        """A write through ``sys.stdout``/``sys.stderr``: after what the pipe holds, so in order."""
        with self._lock:
            self._drain()
            self._keep(data)

    def take(self) -> str:
        """Everything written since the last call (bounded), and start afresh.

        Also puts the captured streams back as ``sys.stdout``/``sys.stderr``, should the job
        have replaced them for good, so that the next job's prints are caught too.
        """
        sys.stdout, sys.stderr = self._stdout, self._stderr
        if not self._total and not self._pumping:  # the common case, a job that wrote nothing: no lock
            fcntl.ioctl(self._fd, termios.FIONREAD, self._count)
            if not self._count[0]:
                return ""
        with self._lock:
            self._drain()
            if not self._total:
                return ""
            text = cut_output(self._data, self._total, self.limit)
            self._data.clear()
            self._total = 0
            return text

    def _keep(self, data: bytes) -> None:
        self._data += data
        self._total += len(data)
        if len(self._data) > 2 * self.limit:
            del self._data[:-self.limit]

    def _drain(self) -> None:
        """Read what the pipe holds (under the lock); nothing at all when it is empty."""
        count = self._count
        try:
            fcntl.ioctl(self._fd, termios.FIONREAD, count)
            while count[0] > 0:
                data = os.read(self._fd, max(count[0], 65536))
                if not data:
                    return
                self._keep(data)
                fcntl.ioctl(self._fd, termios.FIONREAD, count)
        except (BlockingIOError, InterruptedError):
            pass

    def _pump(self) -> None:
        """Keep the pipe from filling while a job writes more than it holds; sleeps otherwise."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            # Set before reading, so that take() never finds the pipe empty and nothing kept while
            # what was in it is on its way here.
            self._pumping = True
            try:
                with self._lock:
                    self._drain()
            finally:
                self._pumping = False
            if any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in events):
                return  # every write end closed (the job closed fds 1 and 2): nothing more can come


class _CapturedStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` of a child: text goes into the job's captured output."""

    def __init__(self, capture: _Capture, fd: int) -> None:
        super().__init__()
        self._capture = capture
        self._fd = fd
        self.buffer = _CapturedBytes(capture)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    def write(self, text: str) -> int:
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._capture.append(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler and the like write to the descriptor: the same pipe
        return self._fd

    def flush(self) -> None:
        pass


class _CapturedBytes(io.RawIOBase):
    """``sys.stdout.buffer`` of a child: bytes go into the job's captured output."""

    def __init__(self, capture: _Capture) -> None:
        super().__init__()
        self._capture = capture

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._capture.append(data)
        return len(data)


def _run_one(name: str, args: list[Any], kwargs: dict[str, Any], cache: dict[str, Callable[..., Any]],
             pack: Callable[[Any], bytes], capture: _Capture | None = None) -> bytes:
    started = time.perf_counter()
    try:
        function = cache.get(name) or _resolve(name, cache)
        value = function(*args, **kwargs)
    except _TaskNotFound as exc:
        return pack([False, None, "TaskNotFound", str(exc), "", time.perf_counter() - started,
                     capture.take() if capture is not None else ""])
    except BaseException as exc:  # noqa: B036 - a task's SystemExit must be reported, not kill the slot
        trace = traceback.format_exc()
        return pack([False, None, error_type_name(exc), str(exc), trace, time.perf_counter() - started,
                     capture.take() if capture is not None else ""])
    duration_s = time.perf_counter() - started
    output = capture.take() if capture is not None else ""
    try:
        return pack([True, value, "", "", "", duration_s, output])
    except (TypeError, ValueError, OverflowError) as exc:
        message = (f"task {name!r} returned a value of type {type(value).__name__} that cannot be sent "
                   f"({exc}); return plain data: {_PLAIN_DATA}")
        return pack([False, None, "ResultNotSerializable", message, "", duration_s, output])


def _ignore_stop_signals() -> None:
    """Child side only: SIGINT and SIGTERM no longer stop this process; the worker does (see the module docstring).

    Also stops writing signals to the worker's wake-up fd, which a child made by ``fork``
    inherits, and puts SIGTERM back to the default in anything the task forks.
    """
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_signal_ignored)
    signal.siginterrupt(signal.SIGTERM, False)  # system calls in C code restart instead of failing with EINTR
    os.register_at_fork(after_in_child=_default_sigterm)


def _stop_signal_ignored(signum: int, frame: Any) -> None:
    """SIGTERM in a child: nothing to do, the worker decides when its children stop."""


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _imported_by_the_fork_server() -> bool:
    """Whether this module is being imported by multiprocessing's fork server, as one of its preloads.

    True only while ``multiprocessing.forkserver.main`` is on the stack: the import the
    worker itself makes, or one in a task's process, never is.
    """
    from multiprocessing import forkserver

    code = getattr(getattr(forkserver, "main", None), "__code__", None)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


if _imported_by_the_fork_server():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # see the module docstring; the children set their own


def _child_main(from_parent: Connection, to_parent: Connection, capture_output: bool = True) -> None:
    """Body of one child process: run batches of jobs from ``from_parent`` until it closes or says stop.

    Each job's reply is written as soon as the job ends, so the parent knows which job of
    a batch was running should the child die.
    """
    _ignore_stop_signals()
    read_fd, write_fd = from_parent.fileno(), to_parent.fileno()
    pack = msgpack.Packer(use_bin_type=True).pack  # reused: a failed pack resets its buffer
    cache: dict[str, Callable[..., Any]] = {}
    try:
        capture: _Capture | None = _Capture(MAX_OUTPUT_BYTES) if capture_output else None
    except OSError:  # out of file descriptors, say: the tasks still run, their output goes to the worker's
        capture = None
    while True:
        try:
            data = _read_message(read_fd)
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        for task_id, epoch, attempt, name, args, kwargs in msgpack.unpackb(data, raw=False, strict_map_key=False):
            context._enter(task_id, epoch, attempt)
            try:
                _write_message(write_fd, _run_one(name, args, kwargs, cache, pack, capture))
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
    from_child: Connection  # kept to close it; read through ``read_fd`` (non-blocking)
    write_fd: int
    read_fd: int
    jobs: deque[Job] = field(default_factory=deque)  # sent to the child, unanswered; the first one runs
    started_at: float = 0.0  # when the first of ``jobs`` started
    deadline: float = math.inf  # only a batch of one timed job has one
    buffer: bytearray = field(default_factory=bytearray)  # a reply read in part

    @property
    def job(self) -> Job | None:
        """The job running in the child, if any."""
        return self.jobs[0] if self.jobs else None


class Executor:
    """A fixed pool of child processes running :class:`Job` s; see the module docstring.

    Not thread-safe: one event loop owns it.  Every method that finishes attempts
    returns their outcomes; the caller reports them.
    """

    def __init__(self, slots: int, start_method: str = "forkserver",
                 preload: Sequence[str] = DEFAULT_PRELOAD,
                 max_result_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024,
                 max_batch: int = MAX_BATCH, capture_output: bool = True, worker_id: str = "") -> None:
        """``capture_output``: children capture what each job writes to stdout and stderr (else it
        goes where the worker's own output goes).  ``worker_id``: named in the ``execute`` spans."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.max_result_bytes = max_result_bytes
        self.max_batch = max(1, max_batch)
        self.capture_output = capture_output
        self.worker_id = worker_id
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":  # this module among the preloads: it makes the server ignore SIGTERM
            self._context.set_forkserver_preload(list(dict.fromkeys([*preload, __name__])))
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: building a Packer per job costs more
        self._slots: list[_Slot] = []
        self._idle: list[_Slot] = []
        self._retired: list[_Slot] = []  # killed, to be joined and replaced by respawn()
        self._by_fd: dict[int, _Slot] = {}  # each child's read_fd and sentinel
        self._queue: list[tuple[int, int, Job]] = []  # heap of (priority, arrival, job); stale items skipped
        self._arrivals = 0
        self._requeued = 0  # requeued jobs count down from here, so they sort before every arrival
        self._queued: dict[str, Job] = {}
        self._running: dict[str, _Slot] = {}  # every job sent to a child and not answered
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
        if tracing.ENABLED:  # after the children exist: none of them holds the exporter's thread
            tracing.setup("worker")

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop every child: idle ones are asked to exit, the rest killed; all are joined.

        Outcomes of attempts still running are discarded: the coordinator requeues what a
        departed worker held.
        """
        for slot in self._slots:
            if not slot.jobs:
                try:
                    _write_message(slot.write_fd, _STOP)
                except OSError:
                    pass  # already gone; joined below
            else:
                slot.process.kill()
        deadline = time.monotonic() + grace_s
        for slot in [*self._slots, *self._retired]:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(1.0)
            if slot in self._slots:
                _close(slot)
        self._slots.clear()
        self._retired.clear()
        self._idle.clear()
        self._by_fd.clear()
        self._running.clear()
        self._timed.clear()
        self._queue.clear()
        self._queued.clear()
        self.fds_version += 1
        if tracing.ENABLED:
            tracing.flush()

    def _spawn(self, index: int) -> _Slot:
        from_parent, to_child = self._context.Pipe(duplex=False)
        from_child, to_parent = self._context.Pipe(duplex=False)
        process: BaseProcess = self._context.Process(  # type: ignore[attr-defined]  # typeshed: BaseContext
            target=_child_main, args=(from_parent, to_parent, self.capture_output), name=f"actorsched-child-{index}",
            daemon=True,
        )
        process.start()
        from_parent.close()
        to_parent.close()  # the child now holds the only write end: its exit is EOF on read_fd
        os.set_blocking(from_child.fileno(), False)  # read what is there, never wait for the rest
        slot = _Slot(index, process, to_child, from_child, to_child.fileno(), from_child.fileno())
        self._by_fd[slot.read_fd] = slot
        self._by_fd[process.sentinel] = slot
        self.fds_version += 1
        return slot

    def _retire(self, slot: _Slot) -> None:
        """Kill ``slot``'s child and take it out of service; :meth:`respawn` replaces it.

        Replacing is deferred so that the outcome that cost the child reaches the
        coordinator first: starting a child takes milliseconds.
        """
        slot.process.kill()
        self._by_fd.pop(slot.read_fd, None)
        self._by_fd.pop(slot.process.sentinel, None)
        _close(slot)
        for job in slot.jobs:
            self._running.pop(job.task_id, None)
            self._timed.pop(job.task_id, None)
        slot.jobs.clear()
        if slot in self._idle:
            self._idle.remove(slot)
        self._retired.append(slot)
        self.children_replaced += 1
        self.fds_version += 1

    def respawn(self) -> None:
        """Join every retired child and start a fresh one in its place."""
        while self._retired:
            slot = self._retired.pop()
            slot.process.join(5.0)
            fresh = self._spawn(slot.index)
            self._slots[self._slots.index(slot)] = fresh
            self._idle.append(fresh)

    # --- queries

    def fds(self) -> list[int]:
        """File descriptors to poll for readability: each child's reply pipe and process sentinel."""
        return list(self._by_fd)

    def held(self) -> list[AttemptRef]:
        """Every attempt queued here or running in a child."""
        refs = [job.ref for slot in self._slots for job in slot.jobs]
        refs.extend(job.ref for job in self._queued.values())
        return refs

    def held_task_ids(self) -> list[str]:
        return [*self._running, *self._queued]

    def holds(self, task_id: str) -> bool:
        return task_id in self._running or task_id in self._queued

    def held_attempt(self, task_id: str) -> AttemptRef | None:
        """The attempt of ``task_id`` held here, if any."""
        job = self._queued.get(task_id)
        if job is None:
            slot = self._running.get(task_id)
            job = next((j for j in slot.jobs if j.task_id == task_id), None) if slot is not None else None
        return job.ref if job is not None else None

    def has_retired(self) -> bool:
        """Whether a dead child waits to be replaced (see :meth:`respawn`)."""
        return bool(self._retired)

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
        """Queue ``job``; it runs when :meth:`dispatch` finds an idle child (best priority first)."""
        self._arrivals += 1
        heapq.heappush(self._queue, (job.priority, self._arrivals, job))
        self._queued[job.task_id] = job

    def _pop(self) -> Job | None:
        """The best queued job (skipping cancelled or released ones), or None."""
        queue, queued = self._queue, self._queued
        while queue:
            job = heapq.heappop(queue)[2]
            if queued.get(job.task_id) is job:
                del queued[job.task_id]
                return job
        return None

    def _batch_share(self) -> int:
        """How many short jobs one idle child takes now: the queue split over the idle children."""
        return min(self.max_batch, -(-len(self._queued) // max(1, len(self._idle))))

    def dispatch(self, now: float, respawn: bool = True) -> list[Job]:
        """Hand queued jobs to idle children (first replacing retired ones, with ``respawn``); the jobs that started.

        A short job without a timeout takes other short untimed jobs along, up to an
        even share of the queue: one pipe message and one wake-up for all of them.
        """
        if respawn and self._retired:
            self.respawn()
        started: list[Job] = []
        while self._idle and self._queued:
            first = self._pop()
            if first is None:
                break
            batch = [first]
            if first.short and first.timeout_s <= 0:
                share = self._batch_share() + 1
                queue, queued = self._queue, self._queued
                while len(batch) < share and queue:
                    job = queue[0][2]
                    if queued.get(job.task_id) is not job:
                        heapq.heappop(queue)
                        continue
                    if not job.short or job.timeout_s > 0:
                        break
                    heapq.heappop(queue)
                    del queued[job.task_id]
                    batch.append(job)
            slot = self._idle.pop()
            try:
                _write_message(slot.write_fd, self._pack([
                    [job.task_id, job.epoch, job.attempt, job.name, job.args, job.kwargs] for job in batch]))
            except OSError:  # the idle child died since the last poll: replace it and retry the jobs
                self._retire(slot)
                self.respawn()
                self._requeue(batch)
                continue
            slot.jobs.extend(batch)
            slot.started_at = now
            for job in batch:
                self._running[job.task_id] = slot
            if first.timeout_s > 0:  # never batched
                slot.deadline = now + first.timeout_s
                self._timed[first.task_id] = slot
            started.extend(batch)
        return started

    def _requeue(self, jobs: list[Job]) -> None:
        """Put jobs that did not run (or were cut short with their child) back in the queue, in their order,
        ahead of everything of their priority that has not started yet."""
        first = self._requeued - len(jobs)
        self._requeued = first
        for order, job in enumerate(jobs, first):  # negative and unique: ahead of every arrival, never a tie
            heapq.heappush(self._queue, (job.priority, order, job))
            self._queued[job.task_id] = job

    def collect(self, now: float, ready: Collection[int]) -> list[TaskOutcome]:
        """Outcomes of the children whose fds (pipe or sentinel) the caller's poll found ready.

        Whatever a child wrote is read without blocking; a reply that has only begun is
        kept until the rest arrives, so a child stopped half-way through writing holds
        nothing but itself.
        """
        by_fd = self._by_fd
        slots: dict[int, _Slot] = {}
        for fd in ready:  # sort first: handling one slot may replace it and reuse its fd numbers
            slot = by_fd.get(fd)
            if slot is not None:
                slots[id(slot)] = slot
        outcomes: list[TaskOutcome] = []
        for slot in slots.values():
            self._read(slot, now, outcomes)
        self.tasks_finished += len(outcomes)
        return outcomes

    def _read(self, slot: _Slot, now: float, outcomes: list[TaskOutcome]) -> None:
        closed = False
        try:
            while True:
                data = os.read(slot.read_fd, _READ_BYTES)
                if not data:
                    closed = True
                    break
                slot.buffer += data
                if len(data) < _READ_BYTES:
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed = True
        buffer = slot.buffer
        while len(buffer) >= _HEADER.size and slot.jobs:
            length = _HEADER.unpack_from(buffer)[0]
            if length > self.max_result_bytes:  # not read: the child, blocked writing it, is replaced
                job = self._take_head(slot)
                outcome = failed(job, "ResultTooLarge",
                                 f"task {job.name!r} returned {length} bytes, more than the "
                                 f"{self.max_result_bytes} a result may carry; return less data or raise "
                                 f"max_message_bytes on both sides", now - slot.started_at)
                outcomes.append(outcome)
                if job.trace:
                    self._traced(job, outcome)
                self._cut_short(slot)
                return
            end = _HEADER.size + length
            if len(buffer) < end:
                break
            reply = bytes(buffer[_HEADER.size:end])
            del buffer[:end]
            job = slot.jobs[0]  # the one this reply answers
            outcome = self._finish(slot, reply, now)
            outcomes.append(outcome)
            if job.trace:
                self._traced(job, outcome)
        if closed:  # the child's end closed: it died (EOF comes after everything it wrote)
            if not slot.jobs:
                log.warning("idle child died pid=%s exitcode=%s; replacing it",
                            slot.process.pid, slot.process.exitcode)
                self._retire(slot)
                return
            started_at = slot.started_at
            running = self._take_head(slot)
            self._cut_short(slot)
            slot.process.join(1.0)
            outcome = failed(running, "ChildProcessDied", _death_message(running, slot.process.exitcode),
                             now - started_at)
            outcomes.append(outcome)
            if running.trace:
                self._traced(running, outcome)

    def _cut_short(self, slot: _Slot) -> None:
        """Retire ``slot``'s child; the jobs of its batch not yet answered go back to the queue."""
        unstarted = list(slot.jobs)
        self._retire(slot)
        self._requeue(unstarted)

    def _take_head(self, slot: _Slot) -> Job:
        """Take the job running in ``slot``'s child off the books: it is answered (or its child is done)."""
        job = slot.jobs.popleft()
        del self._running[job.task_id]
        if slot.deadline != math.inf:
            slot.deadline = math.inf
            del self._timed[job.task_id]
        return job

    def _finish(self, slot: _Slot, reply: bytes, now: float) -> TaskOutcome:
        """The outcome of the job a reply answers: always exactly one, and one the coordinator accepts.

        A reply msgpack refuses to read as the wire would (a dict with int keys, an
        extension type) is the value's fault: ``ResultNotSerializable``.  One that reads
        but is not the reply a child writes (a scalar, the wrong length, a field of the
        wrong type) is a broken child: ``ChildReplyInvalid``.  Either way only this job
        fails; an outcome of the wrong types would make the coordinator drop the whole
        Results frame, and an exception here would stop the worker's loop.
        """
        job = self._take_head(slot)
        started_at = slot.started_at
        slot.started_at = now
        if not slot.jobs:
            self._idle.append(slot)
        try:
            fields = unpack_strict(reply)
        except Exception as exc:  # e.g. a dict with int keys: msgpack packs it, the protocol refuses it
            outcome = failed(job, "ResultNotSerializable",
                             f"task {job.name!r} returned a value that cannot be sent (it {unpack_error(exc)}); "
                             f"return plain data: {_PLAIN_DATA}", now - started_at)
            try:  # what it printed still helps to find out why
                output = msgpack.unpackb(reply, raw=False, strict_map_key=False)[6]
            except Exception:  # an unreadable reply: there is nothing more to get from it
                return outcome
            return _with_output(outcome, output) if type(output) is str else outcome
        read = _outcome_of(job, fields)
        if read is None:
            return failed(job, "ChildReplyInvalid",
                          f"the child process running task {job.name!r} sent a reply that is not "
                          f"[ok, value, error_type, error_message, traceback, duration_s, output] "
                          f"(got {_shown(fields)}); the task's outcome is unknown", now - started_at)
        return read

    def expire(self, now: float) -> list[TaskOutcome]:
        """Kill the children whose task ran past its timeout; their outcomes."""
        outcomes: list[TaskOutcome] = []
        for slot in [s for s in self._timed.values() if s.deadline <= now]:
            job = slot.job
            assert job is not None
            self._retire(slot)
            outcome = failed(job, "TimedOut", f"task {job.name!r} ran longer than its timeout of {job.timeout_s:g}s "
                                              f"and its child process was killed", now - slot.started_at)
            outcomes.append(outcome)
            if job.trace:
                self._traced(job, outcome)
        self.tasks_finished += len(outcomes)
        return outcomes

    def release(self, refs: list[AttemptRef]) -> list[AttemptRef]:
        """Drop the listed attempts that are queued here and not started; the ones dropped."""
        released = []
        for ref in refs:
            job = self._queued.get(ref.task_id)
            if job is not None and job.ref == ref:
                del self._queued[ref.task_id]
                released.append(ref)
        return released

    def cancel(self, ref: AttemptRef, now: float, reason: str = "cancelled by the coordinator") -> TaskOutcome | None:
        """Drop a queued attempt or kill a running one; None if this exact attempt is not held.

        Killing a child also stops the other jobs of its batch: they go back to the queue.
        """
        job = self._queued.get(ref.task_id)
        if job is not None and job.ref == ref:
            del self._queued[ref.task_id]
            self.tasks_finished += 1
            return failed(job, "Cancelled", f"task {job.name!r} was {reason} before it started")
        slot = self._running.get(ref.task_id)
        job = next((j for j in slot.jobs if j.ref == ref), None) if slot is not None else None
        if slot is None or job is None:
            return None
        started_at = slot.started_at
        slot.jobs.remove(job)
        self._running.pop(job.task_id, None)
        self._timed.pop(job.task_id, None)
        self._cut_short(slot)
        self.tasks_finished += 1
        outcome = failed(job, "Cancelled", f"task {job.name!r} was {reason} while running; its child was killed",
                         now - started_at)
        if job.trace:
            self._traced(job, outcome)
        return outcome

    def _traced(self, job: Job, outcome: TaskOutcome) -> None:
        """The ``execute`` span of an attempt that ran (or began to): it ends now, and lasted the run time
        the child measured (or, for a child killed or dead, the time since it started the job).

        Made here, in the worker, not in the child: the child needs no OpenTelemetry, and
        only attempts that came with a trace (``job.trace``) get here at all.  An attempt
        dropped before it started (cancelled or released from the queue) has none.
        """
        error = outcome.error
        tracing.executed(job.trace, job.task_id, job.name, job.attempt, job.epoch, self.worker_id, outcome.ok,
                         error.type if error is not None else "", error.message if error is not None else "",
                         outcome.duration_s, time.time_ns())


def _outcome_of(job: Job, fields: Any) -> TaskOutcome | None:
    """The outcome a child's decoded reply says, or None if it is not a reply a child writes.

    Checks what the coordinator's decoder of ``TaskOutcome`` checks, so that what passes
    here is accepted there (a value nested too deep is left to the worker's encoder, which
    reports it as ``ResultNotSerializable``).
    """
    if type(fields) is not list or not 6 <= len(fields) <= 7:
        return None
    ok, value, error_type, message, trace, duration_s = fields[:6]
    output = fields[6] if len(fields) == 7 else ""  # (a reply without output: a child that captures nothing)
    if type(duration_s) is int:
        duration_s = float(duration_s)
    if type(ok) is not bool or type(output) is not str or type(duration_s) is not float \
            or not 0.0 <= duration_s <= MAX_SECONDS:
        return None
    if ok:
        return TaskOutcome(job.task_id, job.epoch, job.attempt, True, value, None, duration_s, output)
    if type(error_type) is not str or type(message) is not str or type(trace) is not str:
        return None
    return TaskOutcome(job.task_id, job.epoch, job.attempt, False, None, ErrorInfo(error_type, message, trace),
                       duration_s, output)


def _shown(value: Any) -> str:
    """A short, bounded text of what a broken child sent (its type, and the start of its repr)."""
    text = reprlib.repr(value)
    return f"{type(value).__name__} {text[:57] + '...' if len(text) > 60 else text}"


def _close(slot: _Slot) -> None:
    slot.to_child.close()
    slot.from_child.close()
    slot.buffer.clear()


def _death_message(job: Job, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"the child process running task {job.name!r} {how}"
