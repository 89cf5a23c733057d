"""The synchronous client: submit tasks, wait for them, query and cancel them.

Theory of operation
-------------------
A :class:`Client` owns one ZeroMQ DEALER socket connected to the coordinator's client
endpoint.  Every request carries a fresh ``request_id`` and the reply carries it back,
so replies are matched by id, never by order: whatever arrives for another id is kept
in a buffer for whoever is waiting on it (a ``TasksDone`` push for a watch can arrive at
any moment).  Replies for ids nobody waits on any more (a request that timed out, a
watch that was given up) are dropped.

The socket is not thread-safe, so every socket operation runs under one fair (FIFO)
lock.  A thread that waits for a reply holds the lock while it polls; a thread that
wants the lock writes one byte on a wake-up socket pair that is part of the same poll,
so the holder lets go at once instead of after a polling slice.

Waiting for tasks is push-based: ``Watch(request_id, task_ids)`` makes the coordinator
send ``TasksDone`` as each task reaches a final state (at once for tasks that already
have).  A watch ends by itself when every task was reported; a waiter that gives up
early sends ``Unwatch``.  If nothing arrives for ``timeout_s`` the client pings the
coordinator (``GetStats``) to tell a slow cluster from a dead coordinator, and renews
its watches, so that a coordinator restarted from its journal still reports them; it
does so at once when the socket monitor reports the connection dropped.
:meth:`Client.submit` asks for the watch in the submit itself (``Submit.watch``), so a
``submit(...).result()`` costs one exchange, not two; if the handle is dropped unwaited,
the next request of the client ends that watch.  A socket monitor counts connection
drops: a watch opened before one (the coordinator may have restarted) is not trusted,
and waiting starts a new one.

The same monitor tells a refusal from an outage.  A coordinator with CURVE keys that
does not accept this client's key (or gets no key) fails the handshake, and ZeroMQ then
never reconnects: waiting for an answer would only end in "is it running?".  So an
authentication or protocol failure of the handshake ends every wait at once with a
:class:`ConnectionFailed` that says the coordinator refused the key and how to fix it
(:func:`describe_refusal`); the client stays refused, so once the key is in place make
a new one.  A handshake the coordinator hangs up on (a wrong coordinator key) is
retried by ZeroMQ, and named in the error when no answer comes within ``timeout_s``.

Submits are validated completely before anything is sent (:class:`InvalidTask`), sent
in chunks of at most :data:`SUBMIT_CHUNK` tasks, and pipelined: up to :data:`WINDOW`
chunks are in flight while the replies come back.

:meth:`Client.list_tasks` asks for light rows of the newest tasks matching filters
(``ListTasks``/``TaskList``); ``TaskInfo.output`` of a query is what the task's last
attempt wrote to stdout and stderr.  :meth:`Client.wait_connected` waits for the
connection's handshake only (the socket monitor reports it), so a tool can say within a
couple of seconds that nothing answers at an address instead of waiting out ``timeout_s``.

Several coordinators (a leader and its standbys, PostgreSQL backend): ``endpoint`` may
name them all, separated by commas.  The client talks to one at a time.  A standby
answers ``NotLeader`` naming the leader: the client moves its socket there and sends the
request again (every request is safe to repeat: a resubmit of the same task is the same
task).  A connection that drops, or a coordinator silent for :data:`SILENT_SWITCH_S`, sends
it to the next one (:class:`~actorsched.coordinators.CoordinatorList` decides where).  A
move counts as a connection drop, so waits renew their watches with the new leader.
Only real replies restart the ``timeout_s`` clock: standbys that keep saying "not me"
do not keep a call alive.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from actorsched import protocol, tracing
from actorsched.config import check_endpoints, default_client_endpoint
from actorsched.coordinators import LINK_TIMEOUT_S, CoordinatorList
from actorsched.core import states as core_states
from actorsched.core.queue import PRIORITY_MAX, PRIORITY_MIN, REF_KEY
from actorsched.errors import (
    ActorschedError,
    ConfigError,
    ConnectionFailed,
    InvalidTask,
    ProtocolError,
    QueueFull,
    SubmitRejected,
    TaskFailed,
    TaskNotFound,
    Timeout,
)
from actorsched.protocol import ErrorReply, Message, TaskInfo, TaskListing, TaskSpec, WorkerInfo
from actorsched.security import secure_client_socket
from actorsched.zmqio import has_input, recv_bytes, send_frames

log = logging.getLogger(__name__)

# PRIORITY_MIN and PRIORITY_MAX (smaller runs first) come from the coordinator's core.
SUBMIT_CHUNK = 1_000
"""Most tasks in one Submit message."""
QUERY_CHUNK = 10_000
"""Most task ids in one Query, Cancel or Watch message."""
WINDOW = 32
"""Most pipelined requests in flight at once."""
MAX_TASK_ID_CHARS = 256
SERVER_KEY_ENV = "ACTORSCHED_SERVER_KEY"
"""Environment variable: the coordinator's public CURVE key file."""
CLIENT_KEY_ENV = "ACTORSCHED_CLIENT_KEY"
"""Environment variable: this client's CURVE ``NAME.key_secret`` file."""
START_HINT = ("Start it with actorsched-coordinator (bin/coordinator in a checkout), or point "
              "ACTORSCHED_COORDINATOR / --coordinator at it")
"""How to get a coordinator to answer, for the errors that find none: the installed command exists wherever
the package is installed, ``bin/coordinator`` only in a checkout."""
FINAL_STATES = frozenset({state.value for state in core_states.FINAL_STATES} | {core_states.NOT_FOUND})
"""States after which a task never changes again (NOT_FOUND: the coordinator does not know it)."""
_TASK_STATES = frozenset(state.value for state in core_states.TaskState)

_SPEC_FIELDS = frozenset(f for f in TaskSpec.__dataclass_fields__)
_DRAIN_LIMIT = 10_000  # messages read per poll before the lock is offered to others
SILENT_SWITCH_S = 3.0
"""With several coordinators, a request unanswered this long is sent to the next one (the leader's host may be gone
without a word).  Longer than a busy leader's answers take; a takeover takes a lease (3 s by default) anyway."""
NOT_LEADER_RETRY_S = 0.1
"""A standby with no leader to name is asked again after this pause: one of the standbys takes over within a lease."""

_R = TypeVar("_R", bound=Message)


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def describe_refusal(event: int, value: int, endpoint: str, server_key_file: str, key_file: str) -> str:
    """What a failed handshake means for this client and how to fix it, or "" for no refusal.

    ``value`` is the ZAP status code of an authentication failure (400: key not
    accepted) and a ``ZMQ_PROTOCOL_ERROR_*`` code of a protocol failure.  Both are
    final: ZeroMQ does not reconnect after them.
    """
    curve = bool(server_key_file and key_file)
    keys = ("pass --server-key COORDINATOR.key and --key NAME.key_secret (or set $ACTORSCHED_SERVER_KEY and "
            "$ACTORSCHED_CLIENT_KEY, or Client(server_key_file=..., key_file=...))")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400:
            public = key_file.removesuffix("_secret") if key_file.endswith(".key_secret") else f"{key_file}'s NAME.key"
            return (f"coordinator at {endpoint} refused this client's CURVE key at the handshake (key not accepted, "
                    f"ZAP status 400): {key_file} is not allowed there. Fix: copy its public half {public} into the "
                    f"coordinator's [security] client_keys_dir and reload the coordinator (SIGHUP, or restart it), "
                    f"or use a key whose NAME.key is there already")
        return (f"coordinator at {endpoint} could not check this client's CURVE key (ZAP status {value}); "
                f"see the coordinator's log")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH and not curve:
            return (f"coordinator at {endpoint} refused this client at the handshake: it requires CURVE keys and "
                    f"this client has none. Fix: {keys}, with the public half NAME.key in the coordinator's "
                    f"[security] client_keys_dir")
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (f"coordinator at {endpoint} refused this client at the handshake: it does not use CURVE and "
                    f"this client has keys ({key_file}). Fix: connect without --server-key/--key (and without "
                    f"$ACTORSCHED_SERVER_KEY/$ACTORSCHED_CLIENT_KEY), or give the coordinator [security] keys")
        return (f"the handshake with coordinator at {endpoint} failed with ZeroMQ protocol error 0x{value:x}: is it "
                f"an actorsched coordinator's client endpoint, of the same version?")
    return ""


def ref(task: str | TaskHandle) -> dict[str, str]:
    """Stands, anywhere in a task's arguments, for the result of ``task``.

    The referenced task becomes a dependency: the new task waits until it SUCCEEDED
    and its worker receives the value in place of the reference.  If it fails or is
    cancelled, the new task fails or is cancelled too.
    """
    task_id = task.task_id if isinstance(task, TaskHandle) else check_task_id(task)
    return {REF_KEY: task_id}


# --------------------------------------------------------------------------- validation


def _check_str_list(value: Any, field: str, where: Callable[[], str]) -> list[str]:
    if not value:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidTask(f"{field} of {where()} must be a list of strings, got {value!r}")
    items = list(value)
    for item in items:
        if type(item) is not str or not item:
            raise InvalidTask(f"{field} of {where()} must hold non-empty strings, got {item!r} in {items!r}")
    return items


def check_task_id(task_id: Any, what: str = "task id") -> str:
    """Return ``task_id`` if it is a usable task id, else raise :class:`InvalidTask`."""
    if type(task_id) is not str or not task_id:
        raise InvalidTask(f"{what} must be a non-empty string, got {task_id!r}")
    if len(task_id) > MAX_TASK_ID_CHARS:
        raise InvalidTask(f"{what} must be at most {MAX_TASK_ID_CHARS} characters, got {len(task_id)}: "
                          f"{task_id[:40]!r}...")
    return task_id


def make_spec(fields: TaskSpec | dict[str, Any]) -> TaskSpec:
    """A validated :class:`TaskSpec` from a spec or a dict of its field names.

    Raises :class:`InvalidTask` naming the task, the field, the value and what was
    expected.  A missing ``task_id`` becomes a random uuid4 hex string.  This runs for
    every task of a submit, so the happy path avoids building any message.
    """
    if isinstance(fields, TaskSpec):
        values: dict[str, Any] = {name: getattr(fields, name) for name in _SPEC_FIELDS}
    elif isinstance(fields, dict):
        if not fields.keys() <= _SPEC_FIELDS:
            unknown = sorted(map(str, fields.keys() - _SPEC_FIELDS))
            raise InvalidTask(f"unknown task field(s) {', '.join(map(repr, unknown))}; "
                              f"expected some of: {', '.join(sorted(_SPEC_FIELDS))}")
        if "name" not in fields:
            raise InvalidTask(f"task spec {fields!r} has no 'name'; give it as 'package.module:function'")
        values = fields
    else:
        raise InvalidTask(f"a task spec must be a TaskSpec or a dict, got {type(fields).__name__} {fields!r}")

    task_id = values.get("task_id")
    task_id = uuid.uuid4().hex if task_id is None else check_task_id(task_id)
    name = values["name"]
    if type(name) is not str or not protocol.TASK_NAME_RE.fullmatch(name):
        raise InvalidTask(f"name of task {task_id!r} must look like 'package.module:function', got {name!r}")

    def where() -> str:
        return f"task {task_id!r} ({name})"

    args = values.get("args")
    if args is None:
        args = []
    elif type(args) is not list:
        if isinstance(args, str | bytes | dict) or not isinstance(args, Iterable):
            raise InvalidTask(f"args of {where()} must be a list, got {type(args).__name__} {args!r}")
        args = list(args)
    kwargs = values.get("kwargs")
    if kwargs is None:
        kwargs = {}
    elif type(kwargs) is not dict:
        raise InvalidTask(f"kwargs of {where()} must be a dict, got {type(kwargs).__name__} {kwargs!r}")
    for key in kwargs:
        if type(key) is not str:
            raise InvalidTask(f"kwargs of {where()} must have string keys, got {key!r}")

    priority = values.get("priority", 0)
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidTask(f"priority of {where()} must be an integer in [{PRIORITY_MIN}, {PRIORITY_MAX}] "
                          f"(smaller runs first), got {priority!r}")
    timeout_s = values.get("timeout_s")
    if timeout_s is not None:
        if type(timeout_s) not in (int, float) or not math.isfinite(timeout_s) or timeout_s < 0:
            raise InvalidTask(f"timeout_s of {where()} must be None or a finite number >= 0 "
                              f"(0: no timeout), got {timeout_s!r}")
        timeout_s = float(timeout_s)
    max_attempts = values.get("max_attempts")
    if max_attempts is not None and (type(max_attempts) is not int or max_attempts < 1):
        raise InvalidTask(f"max_attempts of {where()} must be None or an integer >= 1, got {max_attempts!r}")
    deps = _check_str_list(values.get("deps"), "deps", where)
    if deps and task_id in deps:
        raise InvalidTask(f"{where()} lists itself in its deps; a task cannot wait for itself")
    trace = values.get("trace") or ""
    if trace:  # a context from elsewhere: with tracing on, the parent of the task's submit span
        if type(trace) is not str:
            raise InvalidTask(f"trace of {where()} must be a str, got {type(trace).__name__} {trace!r}")
        problem = TaskSpec.trace_problem(trace)
        if problem:
            raise InvalidTask(f"{where()}: {problem}")
    return TaskSpec(task_id, name, args, kwargs, priority, deps, timeout_s, max_attempts,
                    _check_str_list(values.get("retry_on"), "retry_on", where),
                    _check_str_list(values.get("tags"), "tags", where), trace)


def _find_unsendable(specs: Sequence[TaskSpec], exc: Exception) -> InvalidTask:
    """Name the task whose args/kwargs could not be encoded (slow path, after a failure)."""
    for spec in specs:
        for what, value in (("args", spec.args), ("kwargs", spec.kwargs)):
            label = f"{what} of task {spec.task_id!r} ({spec.name})"
            try:
                protocol.check_packable(value, label)
                msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=True)
            except ProtocolError as inner:
                return InvalidTask(str(inner))
            except ValueError as inner:  # strict_map_key: the coordinator only takes str keys
                return InvalidTask(f"{label} cannot be sent ({inner}); dict keys must be strings")
    return InvalidTask(f"a batch of {len(specs)} task(s) cannot be sent: {exc}")


# --------------------------------------------------------------------------- handles


def _outcome(info: TaskInfo, endpoint: str) -> Any:
    """The value of a final task, or the exception that stands for it."""
    if info.state == "SUCCEEDED":
        return info.value
    if info.state == "NOT_FOUND":
        raise TaskNotFound(f"task {info.task_id!r} is not known to the coordinator at {endpoint}; "
                           f"was it submitted there (check the id and ACTORSCHED_COORDINATOR)?")
    error = info.error
    if error is None:
        error_type = "Cancelled" if info.state == "CANCELLED" else "Unknown"
        raise TaskFailed(info.task_id, info.state, error_type, "no error details were reported", "")
    raise TaskFailed(info.task_id, info.state, error.type, error.message, error.traceback)


class TaskHandle:
    """A submitted task: wait for its result, ask its state, cancel it.

    The final :class:`TaskInfo` is cached once seen, so ``result()`` after the task
    finished costs no round trip.
    """

    __slots__ = ("task_id", "client", "_final", "_watch", "__weakref__")

    def __init__(self, task_id: str, client: Client, watch: tuple[int, int] | None = None) -> None:
        self.task_id = task_id
        self.client = client
        self._final: TaskInfo | None = None
        # (id, connection drops seen) of the watch the submit opened for this task, if any
        self._watch = watch

    def result(self, timeout: float | None = None) -> Any:
        """The task's value; TaskFailed if it FAILED or was CANCELLED, Timeout past ``timeout`` s."""
        if self._final is None:
            for _ in self.client._iter_final([self], timeout):
                pass
        assert self._final is not None
        return _outcome(self._final, self.client.endpoint)

    def info(self) -> TaskInfo:
        """The coordinator's current view of the task (cached once final)."""
        if self._final is not None:
            return self._final
        info = self.client.query(self.task_id)
        self._remember(info)
        return info

    def status(self) -> str:
        """The task's state: QUEUED, RUNNING, SUCCEEDED, ... or NOT_FOUND."""
        return self.info().state

    def done(self) -> bool:
        """True once the task reached a final state (SUCCEEDED, FAILED, CANCELLED or NOT_FOUND)."""
        return self.info().state in FINAL_STATES

    def cancel(self, cascade: bool = True) -> bool:
        """Cancel the task (and its dependents if ``cascade``); True if the coordinator cancelled it."""
        return self.client.cancel(self.task_id, cascade=cascade)

    def _remember(self, info: TaskInfo) -> None:
        if info.state in FINAL_STATES:
            self._final = info

    def __repr__(self) -> str:
        state = f", state={self._final.state}" if self._final is not None else ""
        return f"TaskHandle({self.task_id!r}{state})"


# --------------------------------------------------------------------------- client


class Client:
    """A synchronous connection to one coordinator; safe to share between threads.

    ``endpoint`` defaults to ``$ACTORSCHED_COORDINATOR`` or ``tcp://127.0.0.1:7700``.
    ``timeout_s`` bounds every wait for an answer from the coordinator; past it the
    call raises :class:`ConnectionFailed`.
    """

    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 server_key_file: str | None = None, key_file: str | None = None) -> None:
        listed = check_endpoints(endpoint or default_client_endpoint(), "coordinator endpoint")
        self.coordinators = CoordinatorList(listed)
        self.endpoint = self.coordinators.current  # the one this client talks to now
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
            raise ConfigError(f"client timeout_s must be a number of seconds > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = max_message_bytes
        self.dropped_frames = 0
        self._codec = protocol.Codec(protocol.TO_CLIENT_MESSAGES, max_message_bytes)
        self._ids = itertools.count(1)
        self._closed = False
        # The fair lock: a ticket per caller, served in order.
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        # Everything below is touched only while holding a turn.
        self._open: set[int] = set()                     # request ids awaiting a reply
        self._arrived: dict[int, Message] = {}           # their replies
        self._watches: dict[int, list[TaskInfo | ErrorReply]] = {}  # watch id -> reports so far
        self._filled: set[int] = set()  # watch ids whose box holds reports no waiter took yet
        self._abandoned: collections.deque[int] = collections.deque()  # watches of handles dropped unwaited
        self._refusals = 0
        self._refusal_reason = ""
        self._handshake_refusal = ""  # set once for good: ZeroMQ does not reconnect after a refused handshake
        self._hangups = 0  # handshakes the coordinator hung up on since the last one that succeeded
        self._hangup_reason = ""
        self._server_key_file = server_key_file or os.environ.get(SERVER_KEY_ENV, "")
        self._key_file = key_file or os.environ.get(CLIENT_KEY_ENV, "")
        self._drops = 0  # connection drops and moves: a watch opened before one may be gone
        self._disconnects = 0  # connection drops the socket monitor reported
        self._moves = 0  # moves to another coordinator (each a new socket)
        self._wake_r, self._wake_w = socket.socketpair()
        self._poller = zmq.Poller()
        try:
            self._open_socket()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._poller.register(self._wake_r, zmq.POLLIN)
        except BaseException:
            self._release_sockets()
            raise

    def _open_socket(self) -> None:
        """A DEALER and its monitor, connected to ``self.endpoint`` and in the poller."""
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes + 1024)
        self._socket.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
        # CURVE, when the coordinator listens beyond loopback: arguments, else the environment.
        secure_client_socket(self._socket, self._server_key_file, self._key_file)
        if self.coordinators.several:  # a dead leader's host must not look connected until SILENT_SWITCH_S
            self._socket.setsockopt(zmq.HEARTBEAT_IVL, int(LINK_TIMEOUT_S * 1000 / 3))
            self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(LINK_TIMEOUT_S * 1000))
        # Disconnections: a watch opened before one may be gone (a restarted coordinator).
        # Handshakes: a refused one is an answer, not an outage.
        self._monitor: zmq.Socket[bytes] = self._socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | _HANDSHAKE_EVENTS)
        self._link_up = False  # the handshake succeeded and the connection has not dropped since
        self._tcp_connected = False  # a TCP connection was made at least once
        self._socket.connect(self.endpoint)
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _move_to(self, endpoint: str) -> None:
        """Talk to ``endpoint`` from now on, on a new socket (under a turn).  What was queued on the old one
        is dropped with it; callers send their open requests again.  Counted as a drop: watches are renewed."""
        log.info("client moving from coordinator %s to %s", self.endpoint, endpoint)
        self._poller.unregister(self._socket)
        self._poller.unregister(self._monitor)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self.endpoint = endpoint
        self._drops += 1
        self._moves += 1
        self._hangups = 0
        self._handshake_refusal = ""  # that one's refusal; this one has not refused anything yet
        self._open_socket()

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection; pending waits in other threads then fail.  Idempotent."""
        with self._turn(check_open=False):
            if not self._closed:
                self._closed = True
                self._release_sockets()

    def _release_sockets(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            self._socket.disable_monitor()
            monitor.close(linger=0)
        if getattr(self, "_socket", None) is not None:
            self._socket.close(linger=0)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r}{', closed' if self._closed else ''})"

    # ------------------------------------------------------------ tasks

    def submit(self, name: str, *args: Any, priority: int = 0, task_id: str | None = None,
               deps: Iterable[str] | None = None, timeout_s: float | None = None,
               max_attempts: int | None = None, retry_on: Iterable[str] | None = None,
               tags: Iterable[str] | None = None, **kwargs: Any) -> TaskHandle:
        """Submit one task ``name(*args, **kwargs)``; returns once the coordinator made it durable.

        The submit also watches the task, so ``result()`` on the handle waits without a
        request of its own; the result comes back even if no one asks for it.  To fire
        many tasks and forget them, use :meth:`submit_many`, which does not watch.
        """
        spec = {"task_id": task_id, "name": name, "args": list(args), "kwargs": kwargs, "priority": priority,
                "deps": deps, "timeout_s": timeout_s, "max_attempts": max_attempts, "retry_on": retry_on,
                "tags": tags}
        checked = make_spec(spec)
        spans: list[Any] = []
        if tracing.ENABLED:  # a submit span per task, its context in the task's trace
            (checked,), spans = tracing.start_submits([checked])
        requests: list[tuple[int, list[bytes], int]] = []
        try:
            self._encode_submit([checked], requests, watch=True)
        except BaseException as exc:
            if spans:
                tracing.end_submits(spans, exc)
            raise
        ((rid, _, _),) = requests
        with self._turn():
            self._end_abandoned_watches()
            self._count_drops()
            self._watches[rid] = []
            drops = self._drops
        try:
            self._submit_requests(requests, 1)
        except BaseException as exc:
            if spans:
                tracing.end_submits(spans, exc)
            with self._turn(check_open=False):
                self._forget_watch(rid, unwatch=False)
            raise
        if spans:
            tracing.end_submits(spans)
        handle = TaskHandle(checked.task_id, self, (rid, drops))
        weakref.finalize(handle, self._abandoned.append, rid)
        return handle

    def submit_many(self, specs: Iterable[TaskSpec | dict[str, Any]]) -> list[TaskHandle]:
        """Submit many tasks, validated first, sent in pipelined chunks; handles in input order.

        Each chunk is durable when acknowledged.  If the coordinator rejects a chunk the
        others may still have been queued; resubmitting the same specs is safe, as task
        ids make submits idempotent.
        """
        checked = [make_spec(spec) for spec in specs]
        spans: list[Any] = []
        if tracing.ENABLED:  # a submit span per task, its context in the task's trace
            checked, spans = tracing.start_submits(checked)
        requests: list[tuple[int, list[bytes], int]] = []
        try:
            for start in range(0, len(checked), SUBMIT_CHUNK):
                self._encode_submit(checked[start:start + SUBMIT_CHUNK], requests)
            self._submit_requests(requests, len(checked))
        except BaseException as exc:
            if spans:
                tracing.end_submits(spans, exc)
            raise
        if spans:
            tracing.end_submits(spans)
        return [TaskHandle(spec.task_id, self) for spec in checked]

    def _submit_requests(self, requests: list[tuple[int, list[bytes], int]], total: int) -> None:
        """Send encoded submits and wait for every acknowledgement; SubmitRejected on the first refusal."""
        replies = self._exchange([(rid, frames) for rid, frames, _ in requests], "submit")
        accepted = sum(count for (_, _, count), reply in zip(requests, replies, strict=True)
                       if isinstance(self._expect_or_error(reply, protocol.SubmitReply, "submit"),
                                     protocol.SubmitReply))
        for (_, _, count), reply in zip(requests, replies, strict=True):
            if isinstance(reply, ErrorReply):
                raise self._submit_error(reply, count, accepted, total)

    def _encode_submit(self, specs: list[TaskSpec], out: list[tuple[int, list[bytes], int]],
                       watch: bool = False) -> None:
        rid = next(self._ids)
        try:
            frames = protocol.encode(protocol.Submit(rid, specs, watch))
            msgpack.unpackb(frames[2], raw=False, strict_map_key=True)  # what the coordinator will accept
        except (ProtocolError, ValueError) as exc:
            raise _find_unsendable(specs, exc) from None
        if len(frames[2]) > self.max_message_bytes:
            if len(specs) == 1:
                raise InvalidTask(f"task {specs[0].task_id!r} ({specs[0].name}) is {len(frames[2])} bytes encoded, "
                                  f"over max_message_bytes={self.max_message_bytes}; pass large data by "
                                  f"reference (a path or URL) instead of in args")
            half = len(specs) // 2
            self._encode_submit(specs[:half], out)
            self._encode_submit(specs[half:], out)
            return
        out.append((rid, frames, len(specs)))

    def _submit_error(self, reply: ErrorReply, count: int, accepted: int, total: int) -> SubmitRejected:
        if reply.code == "queue-full":
            head = (f"coordinator at {self.endpoint} is full (queue-full): {reply.message}; wait for tasks "
                    f"to finish, or raise the [tasks] setting it names")
        else:
            head = f"coordinator at {self.endpoint} rejected {count} task(s) ({reply.code}): {reply.message}"
        if total > count:
            head += (f" [{accepted} of {total} tasks were acknowledged in other chunks; resubmitting "
                     f"all of them is safe, task ids make it idempotent]")
        return QueueFull(head) if reply.code == "queue-full" else SubmitRejected(head)

    def query(self, task_id: str) -> TaskInfo:
        """The task's state; ``state == "NOT_FOUND"`` for an unknown id (never an exception)."""
        return self.query_many([task_id])[0]

    def query_many(self, task_ids: Iterable[str]) -> list[TaskInfo]:
        """The state of each task, in input order (NOT_FOUND for unknown ids)."""
        ids = [check_task_id(t) for t in task_ids]
        found: dict[str, TaskInfo] = {}
        pending = list(dict.fromkeys(ids))
        while pending:  # a reply holds what fits in one message and names the rest (large results)
            requests = []
            for start in range(0, len(pending), QUERY_CHUNK):
                rid = next(self._ids)
                requests.append((rid, protocol.encode(protocol.Query(rid, pending[start:start + QUERY_CHUNK]))))
            rest: list[str] = []
            for reply in self._exchange(requests, "query"):
                page = self._expect(reply, protocol.QueryReply, "query")
                found.update((info.task_id, info) for info in page.tasks)
                rest += page.rest
            if len(rest) >= len(pending):
                raise ProtocolError(f"coordinator at {self.endpoint} answered none of {len(pending)} queried tasks")
            pending = rest
        return [found.get(t) or TaskInfo(t, "NOT_FOUND") for t in ids]

    def cancel(self, task_id: str, cascade: bool = True) -> bool:
        """Cancel a task (and, with ``cascade``, the tasks that depend on it); True if it was cancelled."""
        return check_task_id(task_id) in self.cancel_many([task_id], cascade=cascade)

    def cancel_many(self, task_ids: Iterable[str], cascade: bool = True) -> list[str]:
        """Cancel tasks; returns every id the coordinator cancelled, dependents included."""
        ids = [check_task_id(t) for t in task_ids]
        requests = []
        for start in range(0, len(ids), QUERY_CHUNK):
            rid = next(self._ids)
            requests.append((rid, protocol.encode(protocol.Cancel(rid, ids[start:start + QUERY_CHUNK], cascade))))
        cancelled: list[str] = []
        for reply in self._exchange(requests, "cancel"):
            cancelled.extend(self._expect(reply, protocol.CancelReply, "cancel").cancelled)
        return cancelled

    def workers(self) -> list[WorkerInfo]:
        """Every worker the coordinator knows, with its load and state."""
        rid = next(self._ids)
        (reply,) = self._exchange([(rid, protocol.encode(protocol.ListWorkers(rid)))], "workers")
        return self._expect(reply, protocol.WorkersReply, "workers").workers

    def stats(self) -> dict[str, Any]:
        """The coordinator's counters (tasks by state, workers, throughput...)."""
        rid = next(self._ids)
        (reply,) = self._exchange([(rid, protocol.encode(protocol.GetStats(rid)))], "stats")
        return self._expect(reply, protocol.StatsReply, "stats").stats

    def purge(self, older_than_s: float = 0.0) -> int:
        """Forget finished tasks that finished at least ``older_than_s`` ago; returns how many.

        Purged tasks are gone from memory and the journal: querying them gives NOT_FOUND.
        Unfinished tasks, and finished ones an unfinished task depends on, are kept.
        """
        if not isinstance(older_than_s, (int, float)) or isinstance(older_than_s, bool) or older_than_s < 0:
            raise ActorschedError(f"older_than_s must be a number >= 0, got {older_than_s!r}")
        rid = next(self._ids)
        (reply,) = self._exchange([(rid, protocol.encode(protocol.Purge(rid, float(older_than_s))))], "purge")
        return self._expect(reply, protocol.PurgeReply, "purge").purged

    def list_tasks(self, state: str | None = None, name: str | None = None, worker: str | None = None,
                   id_prefix: str | None = None, limit: int = 100) -> TaskListing:
        """The newest ``limit`` tasks (1..10,000) matching every filter given, newest first.

        Light rows: no value, output or attempt history, errors without their traceback
        (:meth:`query` a task for all of it).  ``state``: ``"FAILED"``, ``"RUNNING"``...;
        ``name``: the task name, its function part (``"echo"``) or a shell pattern
        (``"*.tasks:e*"``); ``worker``: the worker id of its last attempt (or a pattern);
        ``id_prefix``: the start of its id.  The coordinator reads finished tasks back from
        its journal, newest first, up to a bound: ``.cut`` on the answer is True when it
        stopped there, so older matches may exist (narrow the filters to reach them).
        """
        if state is not None:
            if type(state) is not str or state.upper() not in _TASK_STATES:
                raise ActorschedError(f"state must be one of {', '.join(sorted(_TASK_STATES))}, got {state!r}")
            state = state.upper()
        for label, text in (("name", name), ("worker", worker), ("id_prefix", id_prefix)):
            if text is not None and type(text) is not str:
                raise ActorschedError(f"{label} must be a string or None, got {text!r}")
        if type(limit) is not int or not 1 <= limit <= protocol.MAX_LIST_LIMIT:
            raise ActorschedError(f"limit must be an integer in [1, {protocol.MAX_LIST_LIMIT}], got {limit!r}")
        rid = next(self._ids)
        request = protocol.ListTasks(rid, state, name, worker, id_prefix or None, limit)
        (reply,) = self._exchange([(rid, protocol.encode(request))], "tasks")
        page = self._expect(reply, protocol.TaskList, "tasks")
        return TaskListing(page.tasks, page.cut)

    def wait_connected(self, timeout_s: float = 2.0) -> None:
        """Return once the connection to the coordinator is up (its handshake done), else raise
        :class:`ConnectionFailed` within ``timeout_s``, saying what was found at the address.

        Tells "nothing there" from "slow to answer" in a couple of seconds: the other calls
        wait ``timeout_s`` of the client (10 s by default) for an answer.
        """
        deadline = time.monotonic() + timeout_s
        with self._turn():
            while True:
                self._count_drops()
                if self._handshake_refusal:
                    raise ConnectionFailed(self._handshake_refusal)
                if self._link_up:
                    return
                now = time.monotonic()
                if now >= deadline:
                    break
                self._poll(deadline - now)
        if self._hangups:  # a connection was made and hung up on in the handshake: say why, as _no_answer does
            raise self._no_answer("")
        if self._tcp_connected:
            raise ConnectionFailed(
                f"no connection to coordinator at {self.endpoint} within {timeout_s:g} s: something accepts "
                f"connections there but does not complete a ZeroMQ handshake; is it an actorsched coordinator's "
                f"client endpoint? Point ACTORSCHED_COORDINATOR / --coordinator at it")
        raise ConnectionFailed(
            f"no connection to coordinator at {self.endpoint} within {timeout_s:g} s (nothing accepted a "
            f"connection there): is it running, on that host and port? {START_HINT}")

    def handle(self, task_id: str) -> TaskHandle:
        """A handle for a task submitted earlier (by this or any other client)."""
        return TaskHandle(check_task_id(task_id), self)

    # ------------------------------------------------------------ waiting

    def gather(self, handles: Iterable[TaskHandle], timeout: float | None = None,
               return_exceptions: bool = False) -> list[Any]:
        """The values of all tasks, in input order.

        A failed task raises its TaskFailed (TaskNotFound for an unknown id) as soon as
        it is seen, unless ``return_exceptions``, which puts the exception in its place.
        Timeout if not all are final within ``timeout`` seconds.
        """
        handles = list(handles)
        with contextlib.closing(self._iter_final(handles, timeout)) as finished:
            for handle in finished:
                if not return_exceptions:
                    assert handle._final is not None
                    _outcome(handle._final, self.endpoint)
        results: list[Any] = []
        for handle in handles:
            assert handle._final is not None
            try:
                results.append(_outcome(handle._final, self.endpoint))
            except (TaskFailed, TaskNotFound) as exc:
                results.append(exc)
        return results

    def as_completed(self, handles: Iterable[TaskHandle], timeout: float | None = None) -> Iterator[TaskHandle]:
        """Yield each handle as its task reaches a final state; Timeout past ``timeout`` seconds."""
        return self._iter_final(list(handles), timeout)

    def _iter_final(self, handles: list[TaskHandle], timeout: float | None) -> Generator[TaskHandle, None, None]:
        """Yield handles as their tasks become final; never holds the lock while yielding."""
        waiting: dict[str, list[TaskHandle]] = {}
        for handle in handles:
            if handle._final is None:
                waiting.setdefault(handle.task_id, []).append(handle)
        for handle in handles:
            if handle._final is not None:
                yield handle
        if not waiting:
            return
        total = len(waiting)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        watch_ids: dict[int, set[str]] = self._start_watches(list(waiting), handles)
        drops = self._drops
        last_news = time.monotonic()
        try:
            while waiting:
                reports, probe = self._collect_reports(watch_ids, deadline, last_news, drops)
                now = time.monotonic()
                if reports:
                    last_news = now
                    for info in reports:
                        for handle in waiting.pop(info.task_id, ()):
                            handle._final = info
                            yield handle
                elif probe:
                    self.stats()  # raises ConnectionFailed if the coordinator is gone
                    log.debug("no reports for %.1f s or the connection dropped; renewing %d watch(es) for %d "
                              "task(s)", now - last_news, len(watch_ids), len(waiting))
                    self._end_watches(watch_ids)
                    watch_ids = self._start_watches(list(waiting))
                    drops = self._drops
                    last_news = time.monotonic()
                elif deadline is not None and now >= deadline:
                    shown = ", ".join(repr(t) for t in itertools.islice(waiting, 3))
                    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
                    raise Timeout(f"{len(waiting)} of {total} task(s) not final within {timeout} s "
                                  f"({shown}{more}); they keep running: wait again, or cancel them")
        finally:
            self._end_watches(watch_ids)

    def _start_watches(self, task_ids: list[str], handles: Sequence[TaskHandle] = ()) -> dict[int, set[str]]:
        """Watch ``task_ids``: through the watches their submits opened where still open, else new ones."""
        watch_ids: dict[int, set[str]] = {}
        with self._turn():
            self._end_abandoned_watches()
            self._count_drops()
            if handles:
                for handle in handles:
                    watch, handle._watch = handle._watch, None
                    if watch is None:
                        continue
                    rid, drops = watch
                    box = self._watches.get(rid)
                    if box is None:
                        continue
                    if handle._final is None and (box or drops == self._drops):
                        watch_ids[rid] = {handle.task_id}
                    else:  # the connection dropped since: the coordinator may not know this watch
                        self._forget_watch(rid, unwatch=False)
                if watch_ids:
                    prewatched = {t for ids in watch_ids.values() for t in ids}
                    task_ids = [t for t in task_ids if t not in prewatched]
            for start in range(0, len(task_ids), QUERY_CHUNK):
                chunk = task_ids[start:start + QUERY_CHUNK]
                rid = next(self._ids)
                self._watches[rid] = []
                watch_ids[rid] = set(chunk)
                self._send(protocol.encode(protocol.Watch(rid, chunk)))
        return watch_ids

    def _count_drops(self) -> None:
        """Count the connection drops the socket monitor reported, and note refused handshakes (under a turn)."""
        while has_input(self._monitor):
            event = parse_monitor_message(self._monitor.recv_multipart())
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_DISCONNECTED:
                self._drops += 1
                self._disconnects += 1
                self._link_up = False
            elif kind == zmq.EVENT_CONNECTED:
                self._tcp_connected = True
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._hangups = 0
                self._link_up = True
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # ZeroMQ retries these itself; a run of them is named if no answer comes.
                self._hangups += 1
                self._hangup_reason = os.strerror(value) if value > 0 else f"error {value}"
            elif not self._handshake_refusal:
                self._handshake_refusal = describe_refusal(kind, value, self.endpoint, self._server_key_file,
                                                           self._key_file)
                log.debug("%s", self._handshake_refusal)  # the error raised to the caller says it

    def _end_abandoned_watches(self) -> None:
        """End the watches of handles dropped before their task was reported (under a turn)."""
        while self._abandoned:
            rid = self._abandoned.popleft()
            if rid in self._watches:
                self._forget_watch(rid, unwatch=not self._watches[rid])  # unreported: tell the coordinator

    def _end_watches(self, watch_ids: dict[int, set[str]]) -> None:
        """Forget the watches; tell the coordinator about those with tasks still unreported."""
        with self._turn(check_open=False):
            for rid, unreported in watch_ids.items():
                self._forget_watch(rid, unwatch=bool(unreported))
        watch_ids.clear()

    def _forget_watch(self, rid: int, unwatch: bool) -> None:
        """Drop watch ``rid`` and its reports; with ``unwatch``, ask the coordinator to end it (under a turn)."""
        self._watches.pop(rid, None)
        self._filled.discard(rid)
        if unwatch and not self._closed:
            try:
                self._send(protocol.encode(protocol.Unwatch(rid)))
            except ConnectionFailed as exc:
                log.debug("could not unwatch request_id=%d: %s", rid, exc)

    def _collect_reports(self, watch_ids: dict[int, set[str]], deadline: float | None,
                         last_news: float, drops: int) -> tuple[list[TaskInfo], bool]:
        """Reports buffered for these watches, polling until some arrive, the deadline or the idle limit.

        Returns ``(reports, probe)``: ``probe`` is True when nothing came for ``timeout_s``
        or the connection dropped since the watches started (``drops`` then): a restarted
        coordinator does not know them.
        """
        refusals = self._refusals
        while True:
            with self._turn():
                reports: list[TaskInfo] = []
                # Only the watches with news: a gather over many submit() handles has one each.
                filled = self._filled
                if len(filled) <= len(watch_ids):
                    news = [rid for rid in filled if rid in watch_ids]
                else:
                    news = [rid for rid in watch_ids if rid in filled]
                for rid in news:
                    filled.discard(rid)
                    box = self._watches.get(rid)
                    if not box:
                        continue
                    self._watches[rid] = []
                    unreported = watch_ids[rid]
                    for item in box:
                        if isinstance(item, ErrorReply):
                            raise ActorschedError(f"coordinator at {self.endpoint} refused to watch "
                                                  f"{len(unreported)} task(s) ({item.code}): {item.message}")
                        unreported.discard(item.task_id)
                        reports.append(item)
                if reports:
                    return reports, False
                self._check_refused(refusals)
                now = time.monotonic()
                idle_left = last_news + self.timeout_s - now
                if idle_left <= 0 or self._drops != drops:
                    return [], True
                wait = idle_left if deadline is None else min(idle_left, deadline - now)
                if wait <= 0:
                    return [], False
                self._poll(wait)

    # ------------------------------------------------------------ request/reply

    def _exchange(self, requests: list[tuple[int, list[bytes]]], what: str) -> list[Message]:
        """Send encoded requests (at most WINDOW in flight) and return their replies in order.

        ErrorReply is returned, not raised.  ConnectionFailed if no reply arrives for
        ``timeout_s`` (each reply to one of these requests restarts that clock).  With several
        coordinators, requests follow the leader (see the module notes); the socket is shared, so
        a move made by another caller re-sends these too, without moving again.
        """
        if not requests:
            return []
        replies: dict[int, Message] = {}
        outstanding: list[int] = []
        frames_of = dict(requests)
        redo: list[int] = []  # to send (again) on the current socket: answered NotLeader, or sent on a closed one
        redo_at = math.inf
        hint: str | None = None  # the leader the last NotLeader for one of ours named
        sent = 0
        refusals = self._refusals
        now = time.monotonic()
        deadline = now + self.timeout_s
        switch_at = now + SILENT_SWITCH_S if self.coordinators.several else math.inf
        moves, disconnects = self._moves, self._disconnects
        try:
            while len(replies) < len(requests):
                with self._turn():
                    while sent < len(requests) and len(outstanding) < WINDOW:
                        rid, frames = requests[sent]
                        self._open.add(rid)
                        outstanding.append(rid)
                        self._send(frames)
                        sent += 1
                    harvested = [r for r in outstanding if r in self._arrived]
                    progress = False
                    for rid in harvested:
                        reply = self._arrived.pop(rid)
                        outstanding.remove(rid)
                        if isinstance(reply, protocol.NotLeader):
                            redo.append(rid)  # stays open: it is sent again below
                            hint = reply.leader
                            continue
                        replies[rid] = reply
                        self._open.discard(rid)
                        progress = True
                    now = time.monotonic()
                    several = self.coordinators.several
                    if progress:  # only replies to our own requests restart the clocks
                        deadline = now + self.timeout_s
                        switch_at = now + SILENT_SWITCH_S if several else math.inf
                        continue  # done, or room to send more
                    moved = False
                    if self._moves != moves:  # another caller moved the socket: ours went with the old one
                        moved = True
                    elif hint is not None:
                        switch_at = now + SILENT_SWITCH_S if several else math.inf  # it answers: not silent
                        if self.coordinators.after_not_leader(hint, now) != self.endpoint:
                            self._move_to(self.coordinators.current)
                            moved = True
                        else:
                            redo_at = min(redo_at, now + NOT_LEADER_RETRY_S)
                        hint = None
                    elif several and (now >= switch_at or (self._disconnects != disconnects and not self._link_up)):
                        self._move_to(self.coordinators.after_silence(now, dropped=self._disconnects != disconnects))
                        moved = True
                    if moved:
                        redo, outstanding = redo + outstanding, []
                        redo_at, switch_at = now, now + SILENT_SWITCH_S
                        moves, disconnects = self._moves, self._disconnects
                    self._check_refused(refusals)
                    if now >= deadline:
                        raise self._no_answer(what)
                    if redo and now >= redo_at:
                        for rid in redo:
                            outstanding.append(rid)
                            self._send(frames_of[rid])
                        redo, redo_at = [], math.inf
                        continue
                    self._poll(min(deadline, switch_at, redo_at) - now)
        finally:
            if len(replies) < len(requests):
                with self._turn(check_open=False):
                    for rid in outstanding + redo:
                        self._open.discard(rid)
                        self._arrived.pop(rid, None)
        return [replies[rid] for rid, _ in requests]

    def _expect_or_error(self, reply: Message, kind: type[_R], what: str) -> _R | ErrorReply:
        if isinstance(reply, ErrorReply):
            return reply
        return self._expect(reply, kind, what)

    def _expect(self, reply: Message, kind: type[_R], what: str) -> _R:
        if isinstance(reply, kind):
            return reply
        if isinstance(reply, ErrorReply):
            raise ActorschedError(f"coordinator at {self.endpoint} refused the {what} request "
                                  f"({reply.code}): {reply.message}")
        raise ProtocolError(f"coordinator at {self.endpoint} answered a {what} request with "
                            f"{type(reply).__name__}, expected {kind.__name__}")

    def _no_answer(self, what: str) -> ConnectionFailed:
        if self._hangups:
            if self._server_key_file and self._key_file:
                return ConnectionFailed(
                    f"coordinator at {self.endpoint} hung up on the CURVE handshake {self._hangups} time(s) "
                    f"({self._hangup_reason}) and never answered: most likely "
                    f"{self._server_key_file} is not its public key. Fix: use the NAME.key next to the "
                    f"coordinator's [security] secret_key_file")
            return ConnectionFailed(
                f"coordinator at {self.endpoint} hung up on the handshake {self._hangups} time(s) "
                f"({self._hangup_reason}) and never answered; is it an actorsched "
                f"coordinator's client endpoint?")
        if self.coordinators.several:
            return ConnectionFailed(
                f"no leading coordinator answered within {self.timeout_s:g} s (to a {what} request; tried "
                f"{', '.join(self.coordinators.endpoints)}, last {self.endpoint}): is one of them running and "
                f"does one lead? Standbys answer only once one of them holds the lease. {START_HINT}")
        return ConnectionFailed(
            f"no answer from coordinator at {self.endpoint} within {self.timeout_s:g} s (to a {what} request): is "
            f"it running? {START_HINT}")

    def _check_refused(self, seen: int) -> None:
        if self._handshake_refusal:
            raise ConnectionFailed(self._handshake_refusal)
        if self._refusals != seen:
            raise ConnectionFailed(f"coordinator at {self.endpoint} refused this client: {self._refusal_reason}")

    # ------------------------------------------------------------ socket (only under a turn)

    @contextlib.contextmanager
    def _turn(self, check_open: bool = True) -> Iterator[None]:
        """Exclusive use of the socket and the buffers, granted in arrival order."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            if ticket != self._serving:
                self._wake()
                while ticket != self._serving:
                    self._cond.wait()
        try:
            if check_open and self._closed:
                raise ActorschedError(f"client for {self.endpoint} is closed; create a new Client")
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()

    def _wake(self) -> None:
        """Ask the thread polling the socket to let go of it."""
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending; closed: no one polls
            self._wake_w.send(b"\0")

    def _send(self, frames: list[bytes]) -> None:
        if self._handshake_refusal:  # the socket has no connection left, and will never get one
            raise ConnectionFailed(self._handshake_refusal)
        try:
            send_frames(self._socket, frames, block=True)
        except zmq.Again:
            self._count_drops()  # a refused handshake leaves nothing to send to: say so
            if self._handshake_refusal:
                raise ConnectionFailed(self._handshake_refusal) from None
            raise ConnectionFailed(
                f"could not send to coordinator at {self.endpoint} within {self.timeout_s} s (send queue full): "
                f"is it running? {START_HINT}") from None

    def _poll(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for messages or a wake-up; dispatch what arrived.  True if any."""
        events = dict(self._poller.poll(max(0, math.ceil(timeout_s * 1000))))
        if self._wake_r.fileno() in events or self._wake_r in events:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if self._monitor in events:
            self._count_drops()
        if self._socket not in events:
            return False
        for _ in range(_DRAIN_LIMIT):
            if not has_input(self._socket):
                break
            self._dispatch(recv_bytes(self._socket, protocol.MAX_FRAMES))
        return True

    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            message = self._codec.decode(frames)
        except ProtocolError as exc:
            self.dropped_frames += 1
            log.warning("dropping undecodable frame from coordinator endpoint=%s reason=%s", self.endpoint, exc)
            return
        if isinstance(message, protocol.Refused):
            log.info("coordinator refused this client endpoint=%s reason=%s", self.endpoint, message.reason)
            self._refusals += 1
            self._refusal_reason = message.reason
            return
        rid: int = getattr(message, "request_id", -1)
        if isinstance(message, protocol.NotLeader) and rid in self._watches and rid not in self._open:
            self._drops += 1  # a standby holds no watch: like a drop, the waiter renews it with the leader
            return
        box = self._watches.get(rid)
        if rid in self._open and rid not in self._arrived and not isinstance(message, protocol.TasksDone):
            # The reply.  A submit that also watches gets TasksDone (or an ErrorReply for
            # one too large to send) after it, under the same id: those go to the watch.
            self._arrived[rid] = message
        elif box is not None and isinstance(message, protocol.TasksDone | ErrorReply):
            box.extend(message.tasks) if isinstance(message, protocol.TasksDone) else box.append(message)
            self._filled.add(rid)
        else:
            log.debug("dropping %s for request_id=%d: no one waits for it any more", type(message).__name__, rid)
