"""Transport: the only owner of the coordinator's ZeroMQ sockets.

It is an actor with a hand-rolled mailbox rather than a pykka one: ZeroMQ sockets
belong to one thread, and that thread spends its life blocked in ``zmq.Poller``,
which cannot wait on a ``queue.Queue``.  So the mailbox is a deque plus a wake-up
pipe that sits in the same poller as the sockets; :meth:`Transport.tell` is safe from
any thread, like a pykka ``tell``.

Inbound: each poll turn reads every waiting frame (up to a bound), decodes it
strictly at the edge (a bad frame is logged, counted and dropped; a wrong protocol
version gets a ``Refused``), groups the events by the actor that owns them, and tells
each actor once per turn: batching across peers is where throughput comes from.

Worker connections are watched through the socket monitor: a TCP connection closing
(``EVENT_DISCONNECTED``, about a millisecond after a ``kill -9``) removes its worker at
once.  The event names a file descriptor; the ``SRCFD`` property of the worker's
Register message maps it to the worker.  ``ROUTER_MANDATORY`` turns a send to a
vanished peer into an error we act on instead of a silent drop.

Limits on input, so that no peer can stop or swell the coordinator:

- Frames per message: a message has ``[routing id, version, kind, body]``; past that
  the rest of the message is read and dropped as it arrives (:func:`recv_frames`), and
  the message counts as a bad frame.  ZeroMQ itself bounds nothing here: it still holds
  a whole multipart message (about 64 bytes a part) before the first part is readable.
- Size: ZeroMQ's ``MAXMSGSIZE`` is set at twice ``max_message_bytes`` (plus a little).
  A frame over ``max_message_bytes`` but within that is read, counted in
  ``oversized_messages``, logged (one WARNING line per few seconds at most) and
  answered: a client request gets ``ErrorReply(too-large)``.  A frame beyond twice the
  limit still cuts its connection inside ZeroMQ, which reports only a disconnection,
  with no reason (libzmq's decoder fails the connection with EMSGSIZE and its monitor
  sends ``EVENT_DISCONNECTED`` alone): that cap is what bounds memory, and an honest
  peer, which checks its own limit before sending, never reaches it.
- Values: the codec bounds every number and the nesting of user values
  (:mod:`actorsched.protocol`).  A request whose id is readable gets
  ``ErrorReply(bad-request)`` with the reason, a bad ``Register`` gets ``Refused``; other
  bad frames are counted and dropped.

Standby: while :attr:`Transport.standby` is set (a PostgreSQL-backed coordinator that does
not lead), every decoded message is answered with ``NotLeader`` naming the leader's
endpoint for that kind of peer, and nothing reaches an actor (there are none yet).
:meth:`Transport.lead` connects the actors and ends it, on the same bound sockets.

A peer on the wrong endpoint (a client pointed at the worker port, or a worker at the
client port) gets a ``Refused`` naming the right one, rather than silence.

Outbound: a batch whose frame would exceed ``max_message_bytes`` (which the peer would
drop, connection and all) is split; a single task too large to send fails as
``TaskTooLarge``.  With ``[security]`` keys both sockets are CURVE servers behind a ZAP
allowlist (:mod:`actorsched.security`), and a worker may register only under an id its
key allows: a mismatch gets ``Refused``.  SIGHUP (or :meth:`Transport.reload_keys`)
reads the key folders again: new connections see the change at once, and a registered
worker whose key was removed is refused and removed too.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any

import pykka
import zmq
from zmq.utils.monitor import parse_monitor_message

from actorsched import protocol as p
from actorsched.config import EndpointsConfig, SecurityConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.supervision import Supervisor
from actorsched.core.commands import SendToClient, SendToWorker
from actorsched.errors import ProtocolError
from actorsched.security import CurveServer, worker_id_owner
from actorsched.zmqio import has_input, recv_frames, send_frames

log = logging.getLogger(__name__)

_MAX_READ_PER_TURN = 2000
_FRAMES_IN = 1 + p.MAX_FRAMES  # the routing id, then [version, kind, body]
_WIRE_CAP_FACTOR = 2
"""ZeroMQ's own frame cap is this times max_message_bytes: frames between the two are seen and answered."""
_REPLY_REASON_CHARS = 2000  # an answer to a bad request must not grow with what the peer sent
# Batches that may be split when one frame would exceed max_message_bytes.
_BATCH_FIELDS: dict[type, str] = {
    p.Assign: "assignments", p.TasksDone: "tasks", p.QueryReply: "tasks", p.WorkersReply: "workers",
    p.CancelTasks: "attempts", p.SubmitReply: "task_ids", p.CancelReply: "cancelled",
}
_WARN_EVERY_S = 5.0
_CLIENT_KINDS = frozenset(cls.KIND for cls in p.CLIENT_MESSAGES)
_WORKER_KINDS = frozenset(cls.KIND for cls in p.WORKER_MESSAGES)
_SEEN_EVERY_S = 0.1


class Transport:
    def __init__(self, config: EndpointsConfig, security: SecurityConfig | None = None,
                 context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.security = security or SecurityConfig()
        self.curve: CurveServer | None = None
        self.supervisor: Supervisor | None = None
        self.context = context or zmq.Context.instance()
        self.worker_codec = p.Codec(p.WORKER_MESSAGES, config.max_message_bytes)
        self.client_codec = p.Codec(p.CLIENT_MESSAGES, config.max_message_bytes)
        self.counters: dict[str, int] = collections.Counter()
        # Shown from the start (stats, status page), so that a zero is visibly a zero.
        self.counters.update(oversized_messages=0, bad_client_frames=0, bad_worker_frames=0)
        self.queue: pykka.ActorRef[Any] | None = None
        self.registry: pykka.ActorRef[Any] | None = None
        self.client_endpoint = ""
        self.worker_endpoint = ""
        self._outbox: collections.deque[list[SendToClient | SendToWorker]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._running = False
        self._thread: threading.Thread | None = None
        self._fd_to_worker: dict[int, bytes] = {}
        self._worker_fd: dict[bytes, int] = {}
        self._last_warning: dict[str, float] = {}
        self._pack = p.packer()  # the transport thread's own
        self._seen: set[bytes] = set()  # workers heard from since the last WorkersSeen
        self._seen_told = 0.0
        self._worker_key: dict[bytes, str] = {}  # with CURVE: each registered worker's public key
        self._reload_requested = False
        self._previous_sighup: Any = None
        self._sighup_installed = False
        # While standing by: (leader's client endpoint, leader's worker endpoint, its epoch), "" / 0 if none.
        self.standby: tuple[str, str, int] | None = None

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> None:
        """Create and bind both ROUTER sockets (port 0 picks a free one; see the *_endpoint fields)."""
        sec = self.security
        if sec.enabled:
            self.curve = CurveServer(self.context, sec.secret_key_file, sec.worker_keys_dir, sec.client_keys_dir)
            if threading.current_thread() is threading.main_thread():  # only there can a handler be set
                self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
                self._sighup_installed = True
        self.clients = self._router(self.config.client_endpoint, "clients")
        self.workers = self._router(self.config.worker_endpoint, "workers")
        self.monitor = self.workers.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.client_endpoint = self.clients.getsockopt_string(zmq.LAST_ENDPOINT)
        self.worker_endpoint = self.workers.getsockopt_string(zmq.LAST_ENDPOINT)

    def _router(self, endpoint: str, domain: str) -> zmq.Socket[Any]:
        sock = self.context.socket(zmq.ROUTER)
        if self.curve is not None:
            self.curve.secure(sock, domain)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        # Past this ZeroMQ drops the connection without telling why; below it, an oversized
        # frame is ours to count, log and answer (see the module notes).
        sock.setsockopt(zmq.MAXMSGSIZE, _WIRE_CAP_FACTOR * self.config.max_message_bytes + 4096)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.BACKLOG, 1024)  # a burst of hundreds of workers must not overflow the listen queue
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        sock.bind(f"tcp://{host}:{'*' if port == '0' else port}")
        return sock

    def connect(self, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any]) -> None:
        self.queue = queue
        self.registry = registry

    def lead(self, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any]) -> None:
        """Stop standing by: from the next message on, input goes to these actors."""
        self.connect(queue, registry)
        self.standby = None  # one attribute write: the transport thread sees the actors set before this

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="transport", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for sock in (getattr(self, "monitor", None), getattr(self, "clients", None), getattr(self, "workers", None)):
            if sock is not None:
                sock.close(linger=0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._sighup_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._sighup_installed = False
        if self.curve is not None:
            self.curve.stop()

    # ------------------------------------------------------------------ mailbox

    def tell(self, sends: list[SendToClient | SendToWorker]) -> None:
        """Queue outbound messages; safe from any thread."""
        self._outbox.append(sends)
        if not self._wake_pending:
            self._wake()

    def reload_keys(self) -> None:
        """Read the CURVE key folders again, on the transport's thread; safe from any thread and signal handler."""
        self._reload_requested = True
        self._wake()

    def _on_sighup(self, _signum: int, _frame: Any) -> None:
        self.reload_keys()

    def _wake(self) -> None:
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full or closed: the loop is awake or stopping anyway

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # our bug: fail the coordinator loudly instead of going deaf
            log.exception("transport loop failed")
            if self.supervisor is not None:
                self.supervisor.fatal("transport", exc)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.workers, zmq.POLLIN)
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while self._running:
            ready = dict(poller.poll(1000))
            if self._wake_r in ready:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                # Cleared only after draining: a tell() racing with the drain either
                # sees the flag set and is served by the _send_outbox below, or sees
                # it clear and writes a fresh byte for the next poll.
                self._wake_pending = False
            self._send_outbox()
            queue_events: list[Any] = []
            registry_events: list[Any] = []
            if self._reload_requested:
                self._reload_requested = False
                self._reload_keys_now(registry_events)
            # Disconnections first: the kernel reuses a closed fd at once, so a Register
            # arriving on a reused fd must not be mapped before the old close is handled.
            if self.monitor in ready:
                self._read_monitor(registry_events)
            if self.workers in ready:
                self._read_workers(queue_events, registry_events)
            if self.clients in ready:
                self._read_clients(queue_events, registry_events)
            if self._seen:
                now = time.monotonic()
                if now - self._seen_told >= _SEEN_EVERY_S:  # liveness needs no more than a few a second
                    registry_events.append(ev.WorkersSeen(frozenset(self._seen)))
                    self._seen.clear()
                    self._seen_told = now
            if self.standby is not None:  # no actors yet: what the monitor saw concerns no one
                continue
            # The queue first: it answers clients, so it should win the race for the GIL.
            if queue_events:
                ev.tell(self.queue, queue_events)
            if registry_events:
                ev.tell(self.registry, registry_events)

    def _send_outbox(self) -> None:
        outbox = self._outbox
        while outbox:
            for command in outbox.popleft():
                is_worker = isinstance(command, SendToWorker)
                peer = command.worker if is_worker else command.client  # type: ignore[union-attr]
                sock = self.workers if is_worker else self.clients
                try:
                    self._send(sock, peer, command.message)
                except zmq.ZMQError as exc:
                    self.counters["send_failed"] += 1
                    self._warn("send", "cannot send %s to %s peer %r: %s", type(command.message).__name__,
                               "worker" if is_worker else "client", peer, exc.strerror)
                    if is_worker and exc.errno == zmq.EHOSTUNREACH:
                        ev.tell(self.registry, [ev.WorkerLeft(peer, "unreachable")])
                except ProtocolError as exc:
                    self.counters["encode_failed"] += 1
                    log.error("cannot encode %s for %r: %s", type(command.message).__name__, peer, exc)

    def _send(self, sock: zmq.Socket[Any], peer: bytes, message: p.Message) -> None:
        """Send, splitting a batch that would exceed max_message_bytes (peers drop such a frame)."""
        frames = p.encode(message, self._pack)
        if len(frames[2]) <= self.config.max_message_bytes:
            send_frames(sock, [peer, *frames])
            return
        field = _BATCH_FIELDS.get(type(message))
        items = getattr(message, field) if field else []
        if len(items) > 1:
            middle = len(items) // 2
            self._send(sock, peer, dataclasses.replace(message, **{field: items[:middle]}))  # type: ignore[arg-type,type-var]
            self._send(sock, peer, dataclasses.replace(message, **{field: items[middle:]}))  # type: ignore[arg-type,type-var]
            return
        self.counters["too_large"] += 1
        limit = self.config.max_message_bytes
        if isinstance(message, p.Assign):
            # One task too big to send: fail it as if its worker had refused it.
            (item,) = message.assignments
            outcome = p.TaskOutcome(item.task_id, item.epoch, item.attempt, False, None, p.ErrorInfo(
                "TaskTooLarge", f"the task with its arguments is {len(frames[2])} bytes, over max_message_bytes="
                f"{limit}; pass a reference to the data (a path, a key) instead"), 0.0)
            ev.tell(self.queue, [ev.OutcomesReported(peer, [outcome])])
        elif isinstance(getattr(message, "request_id", None), int):
            reply = p.ErrorReply(message.request_id, "too-large",  # type: ignore[attr-defined]
                                 f"the answer is {len(frames[2])} bytes, over max_message_bytes={limit}; "
                                 f"query fewer tasks at a time or keep large results outside the scheduler")
            sock.send_multipart([peer, *p.encode(reply)], flags=zmq.NOBLOCK)
        else:
            log.error("dropped a %s of %d bytes for %r: over max_message_bytes=%d", type(message).__name__,
                      len(frames[2]), peer, limit)

    def _read_workers(self, queue_events: list[Any], registry_events: list[Any]) -> None:
        sock = self.workers
        for _ in range(_MAX_READ_PER_TURN):
            if not has_input(sock):
                return
            frames = recv_frames(sock, _FRAMES_IN)
            peer = frames[0].bytes
            if len(frames) > _FRAMES_IN or len(frames[-1]) > self.config.max_message_bytes:
                self._too_big("worker", peer, frames, sock)
                continue
            try:
                message = self.worker_codec.decode([f.bytes for f in frames[1:]])
            except ProtocolError as exc:
                self._bad_frame("worker", peer, frames, exc, self.workers)
                continue
            self.counters["worker_messages"] += 1
            standby = self.standby  # once: lead() may clear it meanwhile
            if standby is not None:
                self._answer(sock, peer, p.NotLeader(0, standby[1], standby[2]))
                continue
            if isinstance(message, p.Results):
                queue_events.append(ev.OutcomesReported(peer, message.outcomes))
                self._seen.add(peer)
            elif isinstance(message, p.Started):
                queue_events.append(ev.AttemptsStarted(peer, message.attempts))
                self._seen.add(peer)
            elif isinstance(message, p.Released):
                queue_events.append(ev.AttemptsReleased(peer, message.attempts))
                self._seen.add(peer)
            elif isinstance(message, p.Heartbeat):
                registry_events.append(ev.HeartbeatSeen(peer, message))
            elif isinstance(message, p.Register):
                if self.curve is not None and not self._identity_matches(frames[0], peer, message):
                    continue
                fd = frames[0].get(zmq.SRCFD)
                previous = self._fd_to_worker.get(fd)
                if previous is not None and previous != peer:
                    self._worker_fd.pop(previous, None)
                self._fd_to_worker[fd] = peer
                self._worker_fd[peer] = fd
                registry_events.append(ev.WorkerRegistered(peer, message))
            elif isinstance(message, p.Draining):
                registry_events.append(ev.WorkerDraining(peer))
            elif isinstance(message, p.Goodbye):
                registry_events.append(ev.WorkerLeft(peer, "goodbye"))
                self._forget_worker(peer)

    def _identity_matches(self, frame: zmq.Frame, peer: bytes, register: p.Register) -> bool:
        """With CURVE, a worker's id must belong to its key (``NAME`` or ``NAME-...``); else it is refused."""
        assert self.curve is not None
        names = self.curve.worker_key_names
        key = str(frame.get("User-Id"))
        name = names.get(key)
        if name is not None and worker_id_owner(register.worker_id, names.values()) == name:
            self._worker_key[peer] = key
            return True
        self.counters["identity_refused"] += 1
        reason = (f"worker id {register.worker_id!r} does not belong to this worker's key "
                  f"{name or 'unknown'!r}: a worker holding NAME.key may register only as NAME or NAME-<suffix> "
                  f"(unless a longer key name owns that id); "
                  f"start it with --worker-id {name or 'NAME'} (or {name or 'NAME'}-<suffix>), or give it the key "
                  f"made for {register.worker_id!r}")
        self._warn("identity", "refused a worker: %s", reason)
        self._refuse(self.workers, peer, reason)
        return False

    def _read_clients(self, queue_events: list[Any], registry_events: list[Any]) -> None:
        sock = self.clients
        for _ in range(_MAX_READ_PER_TURN):
            if not has_input(sock):
                return
            parts = recv_frames(sock, _FRAMES_IN)
            if len(parts) > _FRAMES_IN or len(parts[-1]) > self.config.max_message_bytes:
                self._too_big("client", parts[0].bytes, parts, sock)
                continue
            frames = [part.bytes for part in parts]
            peer = frames[0]
            try:
                message = self.client_codec.decode(frames[1:])
            except ProtocolError as exc:
                self._bad_frame("client", peer, frames, exc, self.clients)
                continue
            self.counters["client_messages"] += 1
            standby = self.standby  # once: lead() may clear it meanwhile
            if standby is not None:
                self._answer(sock, peer, p.NotLeader(getattr(message, "request_id", 0), standby[0], standby[2]))
                continue
            match message:
                case p.Submit(request_id, tasks, watch):
                    queue_events.append(ev.TasksSubmitted(peer, request_id, tasks, watch))
                case p.Watch(request_id, task_ids):
                    queue_events.append(ev.WatchRequested(peer, request_id, task_ids))
                case p.Query(request_id, task_ids):
                    queue_events.append(ev.QueryRequested(peer, request_id, task_ids))
                case p.Cancel(request_id, task_ids, cascade):
                    queue_events.append(ev.CancelRequested(peer, request_id, task_ids, cascade))
                case p.Purge(request_id, older_than_s):
                    queue_events.append(ev.PurgeRequested(peer, request_id, older_than_s))
                case p.Unwatch(request_id):
                    queue_events.append(ev.WatchDropped(peer, request_id))
                case p.ListWorkers(request_id):
                    queue_events.append(ev.WorkersRequested(peer, request_id))
                case p.GetStats(request_id):
                    registry_events.append(ev.StatsRequested(peer, request_id, {"transport": dict(self.counters)}))
                case p.ListTasks(request_id, state, name, worker, id_prefix, limit):
                    queue_events.append(ev.ListRequested(peer, request_id, state, name, worker, id_prefix, limit))

    def _read_monitor(self, registry_events: list[Any]) -> None:
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                peer = self._fd_to_worker.get(int(event["value"]))
                if peer is not None:
                    self._forget_worker(peer)
                    registry_events.append(ev.WorkerLeft(peer, "connection closed"))

    def _reload_keys_now(self, registry_events: list[Any]) -> None:
        if self.curve is None:
            log.info("asked to reload CURVE keys, but this coordinator runs without [security] keys")
            return
        admitted, problems = self.curve.reload()
        self.counters["key_reloads"] += 1
        for problem in problems:
            log.error("reloading CURVE keys: %s", problem)
        # ZeroMQ checks a key only when a connection is made: a worker already in whose key
        # is gone would keep working, so it is told and removed (its tasks run elsewhere).
        revoked = [peer for peer, key in self._worker_key.items() if key not in self.curve.worker_key_names]
        for peer in revoked:
            self._refuse(self.workers, peer, "this worker's key was removed from the coordinator's worker_keys_dir; "
                                             "it may not connect any more")
            self._forget_worker(peer)
            registry_events.append(ev.WorkerLeft(peer, "key removed"))
        log.info("reloaded CURVE keys: %d worker key(s), %d client key(s) admitted; %d connected worker(s) "
                 "removed with their key", admitted["workers"], admitted["clients"], len(revoked))

    def _forget_worker(self, peer: bytes) -> None:
        self._worker_key.pop(peer, None)
        fd = self._worker_fd.pop(peer, None)
        if fd is not None and self._fd_to_worker.get(fd) == peer:
            del self._fd_to_worker[fd]

    def _too_big(self, side: str, peer: bytes, frames: list[zmq.Frame], sock: zmq.Socket[Any]) -> None:
        """A message of too many frames (the rest was dropped unread) or with a frame over max_message_bytes."""
        if len(frames) > _FRAMES_IN:
            exc = ProtocolError(f"a message has {p.MAX_FRAMES} frames [version, kind, body], this one more; "
                                f"the rest of it was dropped unread")
            self._bad_frame(side, peer, [frame.bytes for frame in frames[:3]], exc, sock)
            return
        size, limit = len(frames[-1]), self.config.max_message_bytes
        self.counters["oversized_messages"] += 1
        self._warn("oversized", "dropped a message of %d bytes from %s peer %r: over max_message_bytes=%d (one "
                   "over %d bytes is cut off with its connection by ZeroMQ, unseen)", size, side, peer, limit,
                   _WIRE_CAP_FACTOR * limit + 4096)
        request_id = p.peek_request_id(frames[-1].buffer) if side == "client" and len(frames) == _FRAMES_IN else None
        if request_id is not None:
            self._answer(sock, peer, p.ErrorReply(request_id, "too-large", (
                f"the request is {size} bytes, over the coordinator's max_message_bytes={limit}; send fewer "
                f"tasks at a time, or pass large data by reference (a path, a key) instead of in args")))

    def _bad_frame(self, side: str, peer: bytes, frames: list[Any], exc: ProtocolError, sock: zmq.Socket[Any]) -> None:
        self.counters[f"bad_{side}_frames"] += 1
        self._warn(f"bad-{side}", "dropped a bad frame from %s peer %r: %s", side, peer, exc)
        version, kind = [getattr(frame, "bytes", frame) for frame in (*frames, b"", b"")[1:3]]
        reason = str(exc)[:_REPLY_REASON_CHARS]
        if version != p.VERSION:
            self._refuse(sock, peer, reason)
        elif side == "worker" and kind in _CLIENT_KINDS:  # a client pointed at the worker port: say so at once
            self._refuse(sock, peer, f"this is the coordinator's worker endpoint; clients connect to its client "
                                     f"endpoint {self.client_endpoint}")
        elif side == "client" and kind in _WORKER_KINDS:
            self._refuse(sock, peer, f"this is the coordinator's client endpoint; workers connect to its worker "
                                     f"endpoint {self.worker_endpoint}")
        elif isinstance(exc, p.BadRequest):  # the client would otherwise wait and call us unreachable
            self._answer(sock, peer, p.ErrorReply(exc.request_id, "bad-request", reason))
        elif side == "worker" and kind == p.Register.KIND:  # a worker cannot work unregistered: say why
            self._refuse(sock, peer, reason)

    @staticmethod
    def _answer(sock: zmq.Socket[Any], peer: bytes, message: p.Message) -> None:
        try:
            send_frames(sock, [peer, *p.encode(message)])
        except zmq.ZMQError:
            pass  # the peer has gone: no one to tell

    @classmethod
    def _refuse(cls, sock: zmq.Socket[Any], peer: bytes, reason: str) -> None:
        """Tell ``peer`` we will not talk to it."""
        cls._answer(sock, peer, p.Refused(reason))

    def _warn(self, kind: str, fmt: str, *args: Any) -> None:
        """WARNING at most once per few seconds per kind; the counters keep the totals."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last_warning[kind] = now
            log.warning(fmt + " (further ones counted, shown every %.0f s)", *args, _WARN_EVERY_S)
