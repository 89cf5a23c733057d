"""The wire protocol between workers, clients and the coordinator.

Theory of operation
-------------------
Every message is three frames, ``[version, kind, body]`` (a ROUTER socket adds the
peer's routing id in front).  ``version`` is :data:`VERSION`; ``kind`` is the short
ASCII tag of one frozen dataclass below; ``body`` is a msgpack *array* holding that
dataclass's fields in declaration order (nested records are arrays too).  Arrays
rather than maps keep the hot path small and fast; the field order is the schema
and changing it means a new :data:`VERSION`.

Decoding is strict: a wrong frame count, an oversized frame, an unknown version or
kind, undecodable msgpack, a wrong field count or a field of the wrong type raise
:class:`~actorsched.errors.ProtocolError`.  Callers (the coordinator's Transport,
the worker, the client) log, count and drop such frames; a peer's bad input never
stops them.  Nothing is ever pickled on the wire.

Limits on values, checked by the same decoders: every number field has inclusive
bounds (``slots`` 1..:data:`MAX_SLOTS`, ``prefetch`` 0..:data:`MAX_PREFETCH`, counts,
attempts and epochs 0..:data:`MAX_COUNT`, seconds finite and 0..:data:`MAX_SECONDS`,
load 0..:data:`MAX_PERCENT`; NaN and infinities never pass), and user values (task
args and kwargs, results) nest lists and maps at most
:data:`~actorsched.recordcodec.MAX_NESTING` levels deep.  A value past a limit is a
decode error naming the field and the limit, so it never reaches an actor, where a
huge number would break sums and placement and a deep value any recursive walk.  A
request whose ``request_id`` could be read is answered with the reason
(:class:`BadRequest`), a ``Register`` with ``Refused``.

Batches: ``Submit``, ``Assign``, ``Started``, ``Results`` and ``TasksDone`` carry
lists so that one frame moves many tasks; throughput comes from that.

Fencing: every assignment carries ``(epoch, attempt)``; a worker echoes both in
``Started`` and ``Results`` and the coordinator commits only the current pair.

Pipelining (AS3): ``Register.prefetch`` says how many short tasks a worker will hold
queued beyond its slots; ``Assignment.short`` marks the tasks it may batch into one
child, ``Assignment.priority`` orders its local queue.  ``Release`` asks a worker to
give back attempts it has not started; it answers ``Released`` with those it dropped.

Message kinds
-------------
worker -> coordinator: Register, Heartbeat, Started, Results, Released, Draining, Goodbye
coordinator -> worker: Welcome, Assign, CancelTasks, Release, Reregister, Shutdown, Refused, NotLeader
client -> coordinator: Submit, Cancel, Query, Watch, Unwatch, ListWorkers, GetStats, Purge, ListTasks
coordinator -> client: SubmitReply, CancelReply, QueryReply, TasksDone,
WorkersReply, StatsReply, ErrorReply, PurgeReply, TaskList, Refused, NotLeader

Standby coordinators (AS5): a coordinator that does not lead (the PostgreSQL backend
runs several against one database) answers every message with ``NotLeader``, naming
the leader's endpoint for that kind of peer ("" while it knows of none), so clients
and workers given a list of coordinators go straight to the leader.

Captured output (AS4): ``TaskOutcome.output`` is what the attempt wrote to stdout and
stderr, at most :data:`MAX_OUTPUT_BYTES` (the last ones, after a ``…[N bytes cut]``
line when cut); ``TaskInfo.output`` is that of the task's last finished attempt.
Listing (AS4): ``ListTasks`` asks for light rows (no value, output, history or
traceback), newest first, at most :data:`MAX_LIST_LIMIT`; ``TaskList.cut`` says the
coordinator stopped looking (its scan bound) before it had examined every task it knows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from actorsched.errors import ProtocolError
from actorsched.recordcodec import MAX_NESTING, Decoder, bounds, check_depth, nesting, record_decoder, record_encoder

VERSION = b"AS5"  # AS2: Submit gained `watch`; AS3: prefetch, Release/Released, Assignment.priority;
# AS4: QueryReply.rest (query replies are paged); TaskOutcome.output, TaskInfo.output/updated_at,
# ListTasks/TaskList; AS5: NotLeader (standby coordinators), TaskSpec.trace and Assignment.trace
TASK_NAME_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
"""A task name, ``package.module:function``; use with ``fullmatch``."""
MAX_FRAMES = 3
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Bounds of the number fields (inclusive).  Generous for any real deployment; their job is
# to stop absurd values at the edge, where they are one clear decode error.
MAX_SLOTS = 1024
"""Slots of one worker: child processes it runs at once."""
MAX_PREFETCH = 65536
"""Tasks one worker may hold queued beyond its slots (16 per slot is the default)."""
MAX_COUNT = 2**53
"""Request ids, epochs, attempts and counts: exact as a float too, so also in the status page's JSON."""
MAX_PID = 2**32 - 1
MAX_SECONDS = 1e10
"""Durations, timeouts and ages in seconds (about 317 years): finite, so sums and deadlines stay numbers."""
MAX_PERCENT = 100.0
"""Host CPU and memory use, as psutil reports them system-wide."""
MAX_FLOAT = 1.7976931348623157e308
"""Figures the coordinator computes (load score, times): any finite number, never NaN or infinite."""
MAX_OUTPUT_BYTES = 64 * 1024
"""What one attempt's captured stdout and stderr keep: the last this many bytes (see the worker's executor)."""
MAX_LIST_LIMIT = 10_000
"""Most rows one ``ListTasks`` may ask for."""

_COUNT = bounds(0, MAX_COUNT)
_PRIORITY = bounds(-MAX_COUNT, MAX_COUNT)  # the TaskQueue checks the real range and answers with it
_SECONDS = bounds(0.0, MAX_SECONDS)
_PERCENT = bounds(0.0, MAX_PERCENT)
_FINITE = bounds(-MAX_FLOAT, MAX_FLOAT)
_PID = bounds(0, MAX_PID)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a client submits.  ``max_attempts``/``timeout_s`` None mean the coordinator's default.

    ``trace`` (AS5): the task's OpenTelemetry trace context, "" when untraced (tracing is
    off in the submitting client, see :mod:`actorsched.tracing`).  It is a W3C
    ``traceparent`` (``00-<32 hex trace id>-<16 hex span id>-<2 hex flags>``: the client's
    ``submit`` span), then optionally one space and the ``tracestate`` header, printable
    ASCII only and :attr:`MAX_TRACE_CHARS` characters at most in all (see
    :meth:`trace_problem`).  It travels in the task, so it is journaled with the spec and
    survives a coordinator restart; the coordinator passes it on in ``Assignment.trace``.
    It is not part of the task's content: two specs that differ only in ``trace`` are
    equal, so resubmitting a task with a new trace is still idempotent.

    Bounds: the generated decoders bound numbers and nesting but not string lengths, and
    a ``__post_init__`` check would cost every decoded spec its fast slot-filling builder
    (about 1.4 us, most of the decoder's time), traced or not.  So the TaskQueue checks
    ``trace`` with the rest of the spec (``core.queue._spec_problem``, a few nanoseconds
    for ""), and refuses the whole submit as ``bad-request`` naming the field and its
    limit: a peer's garbage is never queued, journaled or passed to a worker.  Whoever
    reads a trace (:mod:`actorsched.tracing`) parses it strictly again and ignores
    anything else.
    """

    # Class constants, not annotated: a ClassVar would still be listed in __dataclass_fields__.
    MAX_TRACE_CHARS = 512
    """Longest ``trace``: a traceparent (55 characters) and a tracestate cut to fit (W3C allows dropping it)."""
    _TRACE_RE = re.compile(
        r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(?: [\x20-\x7e]*)?")

    task_id: str
    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = field(default=0, metadata=_PRIORITY)
    deps: list[str] = field(default_factory=list)
    timeout_s: float | None = field(default=None, metadata=_SECONDS)
    max_attempts: int | None = field(default=None, metadata=_COUNT)
    retry_on: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    trace: str = field(default="", compare=False)  # W3C traceparent [+ " " + tracestate], or ""; see above

    @staticmethod
    def trace_problem(trace: str) -> str:
        """Why ``trace`` is not a valid :attr:`trace` ("" if it is, and for "")."""
        if not trace or (len(trace) <= TaskSpec.MAX_TRACE_CHARS and TaskSpec._TRACE_RE.fullmatch(trace)):
            return ""
        shown = repr(trace[:60]) + ("..." if len(trace) > 60 else "")
        return (f"trace must be \"\" or a W3C traceparent 'VV-<32 hex>-<16 hex>-<2 hex>' (lower case, ids not "
                f"all zeros), optionally followed by a space and a printable ASCII tracestate, at most "
                f"{TaskSpec.MAX_TRACE_CHARS} characters in all; got {len(trace)} characters: {shown}")


@dataclass(frozen=True, slots=True)
class Assignment:
    """One task sent to a worker for one attempt, fenced by ``(epoch, attempt)``."""

    task_id: str
    name: str
    # A reference to another task's result inside args is replaced by that result, itself
    # up to MAX_NESTING deep: so twice the limit here.
    args: list[Any] = field(metadata=nesting(2 * MAX_NESTING))
    kwargs: dict[str, Any] = field(metadata=nesting(2 * MAX_NESTING))
    epoch: int = field(metadata=_COUNT)
    attempt: int = field(metadata=_COUNT)
    timeout_s: float | None = field(metadata=_SECONDS)
    priority: int = field(default=0, metadata=_PRIORITY)  # the worker runs what it holds best priority first
    short: bool = False  # expected to finish quickly: may share a child with other short tasks
    # AS5: the task's TaskSpec.trace ("" untraced), checked by the TaskQueue at submit; the worker's
    # tracing parses it strictly again and ignores anything else (see TaskSpec).
    trace: str = ""


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """Names one attempt of one task: what a worker reports as started or running."""

    task_id: str
    epoch: int = field(metadata=_COUNT)
    attempt: int = field(metadata=_COUNT)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """The end of one attempt on a worker: a value, or an error."""

    task_id: str
    epoch: int = field(metadata=_COUNT)
    attempt: int = field(metadata=_COUNT)
    ok: bool
    value: Any
    error: ErrorInfo | None
    duration_s: float = field(metadata=_SECONDS)
    output: str = ""  # what it wrote to stdout and stderr, the last MAX_OUTPUT_BYTES at most


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """History of one attempt, as returned by ``query``: times are the coordinator's wall clock."""

    attempt: int = field(metadata=_COUNT)
    worker_id: str
    outcome: str
    error: ErrorInfo | None
    started_at: float = field(default=0.0, metadata=_FINITE)  # unix seconds
    ended_at: float = field(default=0.0, metadata=_FINITE)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task's state as the coordinator knows it.  ``state`` NOT_FOUND for unknown ids.

    ``output``: what the task's last finished attempt wrote to stdout and stderr.
    ``updated_at``: wall-clock unix seconds of the last change the coordinator knows of
    (finished, the current attempt placed, the last attempt ended, submitted); 0 unknown.
    """

    task_id: str
    state: str
    name: str = ""
    priority: int = field(default=0, metadata=_PRIORITY)
    attempt: int = field(default=0, metadata=_COUNT)
    worker_id: str = ""
    value: Any = None
    error: ErrorInfo | None = None
    history: list[AttemptRecord] = field(default_factory=list)
    output: str = ""
    updated_at: float = field(default=0.0, metadata=_FINITE)


class TaskListing(list[TaskInfo]):
    """A list of light :class:`TaskInfo` rows, newest first, that also says whether the search was ``cut``.

    ``cut``: the coordinator stopped looking (its scan bound) before it had seen every task,
    so older matches may exist; narrow the filters to reach them.
    """

    cut: bool = False

    def __init__(self, items: Iterable[TaskInfo] = (), cut: bool = False) -> None:
        super().__init__(items)
        self.cut = cut


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    host: str
    pid: int = field(metadata=_PID)
    slots: int = field(metadata=bounds(0, MAX_SLOTS))
    running: int = field(metadata=_COUNT)
    load_score: float = field(metadata=_FINITE)
    cpu_percent: float = field(metadata=_PERCENT)
    memory_percent: float = field(metadata=_PERCENT)
    state: str
    tags: list[str]
    heartbeat_age_s: float = field(metadata=_FINITE)
    tasks_done: int = field(metadata=_COUNT)
    breaker: str


# --------------------------------------------------------------------------- messages


class Message:
    """Marker base of every top-level message; ``KIND`` is its wire tag."""

    __slots__ = ()
    KIND: ClassVar[bytes]


@dataclass(frozen=True, slots=True)
class Register(Message):
    KIND: ClassVar[bytes] = b"register"
    worker_id: str
    host: str
    pid: int = field(metadata=_PID)
    slots: int = field(metadata=bounds(1, MAX_SLOTS))
    tags: list[str]
    running: list[AttemptRef]
    # tasks it may hold queued beyond its slots (short ones only)
    prefetch: int = field(default=0, metadata=bounds(0, MAX_PREFETCH))


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    KIND: ClassVar[bytes] = b"heartbeat"
    cpu_percent: float = field(metadata=_PERCENT)
    memory_percent: float = field(metadata=_PERCENT)
    running: list[str]


@dataclass(frozen=True, slots=True)
class Started(Message):
    KIND: ClassVar[bytes] = b"started"
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class Results(Message):
    KIND: ClassVar[bytes] = b"results"
    outcomes: list[TaskOutcome]


@dataclass(frozen=True, slots=True)
class Released(Message):
    """Answer to ``Release``: these attempts were held here unstarted and are dropped."""

    KIND: ClassVar[bytes] = b"released"
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class Draining(Message):
    """The worker stops taking tasks (SIGTERM); the ones it holds will still report."""

    KIND: ClassVar[bytes] = b"draining"
    reason: str


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    KIND: ClassVar[bytes] = b"goodbye"
    reason: str


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    KIND: ClassVar[bytes] = b"welcome"
    worker_id: str
    epoch: int = field(metadata=_COUNT)
    heartbeat_interval_s: float = field(metadata=_SECONDS)


@dataclass(frozen=True, slots=True)
class Assign(Message):
    KIND: ClassVar[bytes] = b"assign"
    assignments: list[Assignment]


@dataclass(frozen=True, slots=True)
class CancelTasks(Message):
    KIND: ClassVar[bytes] = b"cancel-tasks"
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class Release(Message):
    """Give back the listed attempts if they have not started (answered by ``Released``)."""

    KIND: ClassVar[bytes] = b"release"
    attempts: list[AttemptRef]


@dataclass(frozen=True, slots=True)
class Reregister(Message):
    KIND: ClassVar[bytes] = b"reregister"
    reason: str


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    KIND: ClassVar[bytes] = b"shutdown"
    reason: str


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """The coordinator will not talk to this peer (wrong version, unknown worker, bad key)."""

    KIND: ClassVar[bytes] = b"refused"
    reason: str


@dataclass(frozen=True, slots=True)
class Submit(Message):
    KIND: ClassVar[bytes] = b"submit"
    request_id: int = field(metadata=_COUNT)
    tasks: list[TaskSpec]
    watch: bool = False  # also watch the tasks: TasksDone under this request_id as they finish


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    KIND: ClassVar[bytes] = b"cancel"
    request_id: int = field(metadata=_COUNT)
    task_ids: list[str]
    cascade: bool


@dataclass(frozen=True, slots=True)
class Query(Message):
    KIND: ClassVar[bytes] = b"query"
    request_id: int = field(metadata=_COUNT)
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class Watch(Message):
    """Ask for a ``TasksDone`` for each listed task as it reaches a final state."""

    KIND: ClassVar[bytes] = b"watch"
    request_id: int = field(metadata=_COUNT)
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class Unwatch(Message):
    KIND: ClassVar[bytes] = b"unwatch"
    request_id: int = field(metadata=_COUNT)


@dataclass(frozen=True, slots=True)
class ListWorkers(Message):
    KIND: ClassVar[bytes] = b"list-workers"
    request_id: int = field(metadata=_COUNT)


@dataclass(frozen=True, slots=True)
class GetStats(Message):
    KIND: ClassVar[bytes] = b"get-stats"
    request_id: int = field(metadata=_COUNT)


@dataclass(frozen=True, slots=True)
class Purge(Message):
    """Forget finished tasks that finished at least ``older_than_s`` ago (memory and journal)."""

    KIND: ClassVar[bytes] = b"purge"
    request_id: int = field(metadata=_COUNT)
    older_than_s: float = field(metadata=_SECONDS)


@dataclass(frozen=True, slots=True)
class ListTasks(Message):
    """Light rows of the tasks matching every given filter, newest first (``TaskList``).

    ``state``: one state (``FAILED``...); ``name``: the task name, its function part
    (``echo``) or a shell pattern (``*:echo*``); ``worker``: the worker id of its last
    attempt (or a pattern); ``id_prefix``: the start of its id.  None: no filter.
    """

    KIND: ClassVar[bytes] = b"list-tasks"
    request_id: int = field(metadata=_COUNT)
    state: str | None
    name: str | None
    worker: str | None
    id_prefix: str | None
    limit: int = field(default=100, metadata=bounds(1, MAX_LIST_LIMIT))


@dataclass(frozen=True, slots=True)
class TaskList(Message):
    """Answer to ``ListTasks``: light rows (no value, output, history or traceback), newest first."""

    KIND: ClassVar[bytes] = b"task-list"
    request_id: int = field(metadata=_COUNT)
    tasks: list[TaskInfo]
    cut: bool = False  # the coordinator stopped looking before it had seen every task


@dataclass(frozen=True, slots=True)
class PurgeReply(Message):
    KIND: ClassVar[bytes] = b"purge-reply"
    request_id: int = field(metadata=_COUNT)
    purged: int = field(metadata=_COUNT)


@dataclass(frozen=True, slots=True)
class SubmitReply(Message):
    """Every task of the batch is durable and known by the coordinator."""

    KIND: ClassVar[bytes] = b"submit-reply"
    request_id: int = field(metadata=_COUNT)
    task_ids: list[str]


@dataclass(frozen=True, slots=True)
class CancelReply(Message):
    KIND: ClassVar[bytes] = b"cancel-reply"
    request_id: int = field(metadata=_COUNT)
    cancelled: list[str]


@dataclass(frozen=True, slots=True)
class QueryReply(Message):
    """``rest``: ids not answered because the reply reached its size budget; ask again for them."""

    KIND: ClassVar[bytes] = b"query-reply"
    request_id: int = field(metadata=_COUNT)
    tasks: list[TaskInfo]
    rest: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TasksDone(Message):
    KIND: ClassVar[bytes] = b"tasks-done"
    request_id: int = field(metadata=_COUNT)
    tasks: list[TaskInfo]


@dataclass(frozen=True, slots=True)
class WorkersReply(Message):
    KIND: ClassVar[bytes] = b"workers-reply"
    request_id: int = field(metadata=_COUNT)
    workers: list[WorkerInfo]


@dataclass(frozen=True, slots=True)
class StatsReply(Message):
    KIND: ClassVar[bytes] = b"stats-reply"
    request_id: int = field(metadata=_COUNT)
    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """A request was refused; ``code`` is a stable word (``bad-request``, ``queue-full``...)."""

    KIND: ClassVar[bytes] = b"error-reply"
    request_id: int = field(metadata=_COUNT)
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class NotLeader(Message):
    """This coordinator stands by: ``leader`` is the leading coordinator's endpoint for this
    kind of peer ("" while none is known), ``epoch`` the leader's (0 if none); the request
    ``request_id`` (0 for a worker's message) was not acted on."""

    KIND: ClassVar[bytes] = b"not-leader"
    request_id: int = field(metadata=_COUNT)
    leader: str
    epoch: int = field(metadata=_COUNT)


WORKER_MESSAGES: tuple[type[Message], ...] = (Register, Heartbeat, Started, Results, Released, Draining, Goodbye)
CLIENT_MESSAGES: tuple[type[Message], ...] = (
    Submit, Cancel, Query, Watch, Unwatch, ListWorkers, GetStats, Purge, ListTasks,
)
TO_WORKER_MESSAGES: tuple[type[Message], ...] = (
    Welcome, Assign, CancelTasks, Release, Reregister, Shutdown, Refused, NotLeader,
)
TO_CLIENT_MESSAGES: tuple[type[Message], ...] = (
    SubmitReply, CancelReply, QueryReply, TasksDone, WorkersReply, StatsReply, ErrorReply, PurgeReply, TaskList,
    Refused, NotLeader,
)


# --------------------------------------------------------------------------- codec

def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed on the wire")


def unpack_strict(data: bytes) -> Any:
    """msgpack as the wire reads it: string map keys, no extension type (see below); raises on anything else."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_reject_ext, max_ext_len=0)


# Every unpackb of wire or stored data passes ``ext_hook=_reject_ext, max_ext_len=0``: no msgpack
# extension type gets through.  ``ext_hook`` alone misses timestamps (extension type -1), which
# msgpack decodes itself into ``msgpack.Timestamp``: one got through to the coordinator's actors
# and journal.  With ``max_ext_len=0`` the unpacker refuses every extension that has data
# (timestamps included) before decoding it, in C and at no cost for data without one;
# ``_reject_ext`` gets the empty ones.


def unpack_error(exc: Exception) -> str:
    """Why msgpack refused data (from an unpackb with ``_reject_ext``), as a phrase: "holds a msgpack
    extension type ..." or "is not valid msgpack: ..."."""
    text = str(exc)
    if "max_ext_len" in text or "timestamp" in text or "extension type" in text:
        return "holds a msgpack extension type (ExtType, Timestamp), which is not allowed on the wire"
    return f"is not valid msgpack: {text}"


class BadRequest(ProtocolError):
    """A request whose ``request_id`` could be read, refused (a bad field, an extension type): the sender
    can be told why.

    Without an answer a client would wait for its timeout and report the coordinator as
    unreachable, when it is its own request that was refused.
    """

    def __init__(self, message: str, request_id: int) -> None:
        super().__init__(message)
        self.request_id = request_id


def peek_request_id(body: bytes | memoryview) -> int | None:
    """The ``request_id`` a request body starts with, reading only its head (None if it has none).

    For answering a request that is not decoded, one too large say: the id is the first
    item of the body's array, within its first 14 bytes.
    """
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(bytes(body[:16]))
    try:
        unpacker.read_array_header()
        request_id = unpacker.unpack()
    except Exception:  # not an array, or garbage: nothing to answer
        return None
    return request_id if type(request_id) is int and 0 <= request_id <= MAX_COUNT else None


class Codec:
    """Encodes and strictly decodes messages of a given set of kinds.

    One codec per direction: the coordinator's worker endpoint accepts only
    :data:`WORKER_MESSAGES`, so a client message arriving there is an unknown kind.
    """

    def __init__(self, accepts: tuple[type[Message], ...], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._by_kind: dict[bytes, Decoder] = {
            cls.KIND: record_decoder(cls) for cls in accepts
        }
        # Kinds whose first field is a request_id: a bad one can be answered (BadRequest).
        self._requests = frozenset(cls.KIND for cls in accepts if dataclasses.fields(cls)[0].name == "request_id")  # type: ignore[arg-type]

    def decode(self, frames: list[bytes]) -> Message:
        if len(frames) != MAX_FRAMES:
            raise ProtocolError(f"expected {MAX_FRAMES} frames [version, kind, body], got {len(frames)}")
        version, kind, body = frames
        if version != VERSION:
            raise ProtocolError(
                f"protocol version {bytes(version)[:16]!r} is not supported; this peer speaks {VERSION!r}"
            )
        if len(body) > self.max_message_bytes:
            raise ProtocolError(f"body of {len(body)} bytes exceeds max_message_bytes={self.max_message_bytes}")
        kind = bytes(kind)
        decode_record = self._by_kind.get(kind)
        if decode_record is None:
            raise ProtocolError(
                f"unknown message kind {bytes(kind)[:32]!r}; expected one of "
                f"{', '.join(sorted(k.decode() for k in self._by_kind))}"
            )
        try:
            value = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_reject_ext, max_ext_len=0)
        except Exception as exc:  # msgpack raises many unrelated types for garbage; _reject_ext a ProtocolError
            reason = f"body of kind {kind.decode()!r} {unpack_error(exc)}"
            # A request whose id can still be read is answered (an extension type in a task's
            # args, say): else its client waits for its timeout and reports an outage.
            request_id = peek_request_id(body) if kind in self._requests else None
            if request_id is not None:
                raise BadRequest(reason, request_id) from None
            raise ProtocolError(reason) from None
        try:
            message: Message = decode_record(value)
        except ProtocolError as exc:
            request_id = value[0] if type(value) is list and value and kind in self._requests else None
            if type(request_id) is int and 0 <= request_id <= MAX_COUNT:
                raise BadRequest(str(exc), request_id) from None
            raise
        return message


Pack = Callable[[Any], bytes]


def packer() -> Pack:
    """A reusable msgpack ``pack`` for one thread (``msgpack.packb`` builds a new Packer per call)."""
    return msgpack.Packer(use_bin_type=True).pack  # type: ignore[no-any-return]


def encode(message: Message, pack: Pack | None = None) -> list[bytes]:
    """The three frames of ``message``; raises ProtocolError if a value is not msgpack-able, or is a user
    value the receiver would refuse: nested too deep, or holding a msgpack extension value (``ExtType``,
    ``Timestamp``), which the wire refuses; the whole frame would be dropped.

    ``pack``: a :func:`packer` owned by the calling thread, for hot paths.
    """
    try:
        encoded = record_encoder(type(message))(message)
        body = pack(encoded) if pack is not None else msgpack.packb(encoded, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, ProtocolError) as exc:  # ProtocolError: see the docstring
        raise ProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    return [VERSION, message.KIND, body]


def check_packable(value: Any, what: str) -> None:
    """Raise ProtocolError naming ``what`` if ``value`` cannot travel in msgpack, nests too deep to be accepted,
    or holds a msgpack extension value (``ExtType``, ``Timestamp``), which the wire refuses."""
    check_depth(value, MAX_NESTING, what)
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{what} cannot be sent (msgpack: {exc}); use plain data: "
                            f"None, bool, int, float, str, bytes, list, dict with str keys") from None


def pack_record(record: Any, pack: Pack | None = None) -> bytes:
    """msgpack of one record (a TaskSpec for the journal, say), in the wire layout."""
    encoded = record_encoder(type(record))(record)
    return pack(encoded) if pack is not None else msgpack.packb(encoded, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_record(cls: type, data: bytes) -> Any:
    """The strict inverse of :func:`pack_record`; raises ProtocolError on bad data."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_reject_ext, max_ext_len=0)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"stored {cls.__name__} {unpack_error(exc)}") from None
    return record_decoder(cls)(value)
