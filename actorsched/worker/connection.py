"""The worker's single-threaded event loop: one DEALER socket, the child pool, heartbeats.

Theory of operation
-------------------
One loop turn polls the DEALER socket, every child's pipe and sentinel, and the
signal wake-up fd, with a timeout up to the next timer (heartbeat, Register retry,
task deadline, drain deadline).  Then, in order: decode and handle every waiting
message; collect finished children; expire timed-out tasks; hand queued tasks to idle
children (one ``Started`` for all of them, sent only for tasks still running
:data:`STARTED_DELAY_S` later); send every outcome of the turn in ONE
``Results``; fire due timers.  Batching per turn is what makes the worker fast: the
per-task path does no logging above DEBUG and no psutil calls.

Lifecycle: ``Register`` -> (retry with backoff until) ``Welcome`` -> heartbeats every
``Welcome.heartbeat_interval_s``.  ``Reregister`` sends ``Register`` again with every
attempt still held.  A first stop request (SIGTERM/SIGINT) or ``Shutdown`` drains:
``Draining`` is sent, new assignments are ignored, held ones finish until
``drain_timeout_s``, then ``Goodbye`` and exit 0.  A second stop request kills the
children at once (exit 1).  ``Refused`` exits 2.  A bad frame from the coordinator is
logged at WARNING, counted and dropped.

One registration per reconnect.  The DEALER queues whatever is sent while the
connection is down and delivers it all when it is back, and a coordinator that does not
know the connection (it restarted, or it dropped the worker when the connection
closed) answers each heartbeat with ``Reregister``: a worker that heartbeated into the
queue for 40 s used to register ~40 times in a burst.  So the loop follows the
connection through a socket monitor (handshake succeeded / disconnected): while it is
down no heartbeat and no Register retry is sent (they would only pile up), and when it
comes back after a drop the worker registers once, at once.  An unregistered worker
always has a Register on its way, so a ``Reregister`` that arrives before the
``Welcome`` only answers a heartbeat sent before that Register and is ignored.  ZeroMQ
options were not enough: ``ZMQ_IMMEDIATE`` would also drop the Results of tasks that
finished during an outage, and one socket has one send high-water mark for every kind of
message.

Refusals are not outages.  The same monitor reports a CURVE handshake the coordinator
refused (key not in its worker_keys_dir, no key where one is required, a wrong server
key).  Each distinct refusal is logged at ERROR once, naming the key and the fix, and
again at most every :data:`REFUSAL_REMINDER_S`.  ZeroMQ never reconnects after an
authentication or protocol failure, so the worker opens a new connection itself, backing
off from ``reconnect_min_s`` to ``reconnect_max_s``: once an operator adds the key (and
reloads or restarts the coordinator) the worker gets in without a restart of its own.

Several coordinators (a leader and its standbys, ``[connection] coordinator`` a list
separated by commas): the worker talks to one at a time.  A standby answers
``NotLeader`` naming the leader; the worker moves its connection there and registers
with what it holds, as after a coordinator restart.  A connection down for
:data:`MOVE_AFTER_DOWN_S`, or no Welcome and no word for :data:`SILENT_MOVE_S`, moves it
to the next coordinator (:class:`~actorsched.coordinators.CoordinatorList` decides).  With
a list, ZeroMQ's own heartbeats (PING/PONG) run on the connection, so a leader whose
host died without closing it counts as down within
:data:`~actorsched.coordinators.LINK_TIMEOUT_S` (2 s).  Anything still queued on the old
connection (a Results sent to a dead leader) is lost with it.

Results are sent again after a reconnection.  What a coordinator had not read when it
died (Results in the kernel's buffers, or queued on a connection given up) would
otherwise be lost, and the attempts run again once ``restart_grace_s`` has passed.  So the
worker keeps the Results it sent in the last :data:`RESEND_WINDOW_S` (at most
``max_message_bytes`` of them) and sends them again after the next Welcome that follows a
dropped connection, a move, or a request to register again.  The coordinator judges them
by their fencing tokens: one it already has is a duplicate and dropped, one for an attempt
it is waiting to adopt finishes the task, and at most one result ever commits.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from actorsched.config import WorkerConfig, check_endpoints
from actorsched.coordinators import LINK_TIMEOUT_S, CoordinatorList
from actorsched.errors import ProtocolError
from actorsched.protocol import (
    MAX_FRAMES,
    TO_WORKER_MESSAGES,
    Assign,
    CancelTasks,
    Codec,
    Draining,
    ErrorInfo,
    Goodbye,
    Heartbeat,
    Message,
    NotLeader,
    Refused,
    Register,
    Release,
    Released,
    Reregister,
    Results,
    Shutdown,
    Started,
    TaskOutcome,
    Welcome,
    encode,
)
from actorsched.security import secure_client_socket
from actorsched.worker.executor import Executor, Job, check_task_name
from actorsched.worker.load import LoadSampler
from actorsched.zmqio import has_input, recv_bytes, send_frames

log = logging.getLogger(__name__)

LINGER_MS = 500  # long enough to flush a Goodbye, short enough not to hang an exit
MAX_MESSAGES_PER_TURN = 1000
MAX_POLL_S = 1.0
# A task that finishes within this many seconds never sends Started: its Results says
# it all.  Short tasks then cost one message instead of two; a longer one shows RUNNING
# after this delay.
STARTED_DELAY_S = 0.005
EXIT_OK, EXIT_FORCED, EXIT_REFUSED = 0, 1, 2
REFUSAL_REMINDER_S = 60.0
"""A refused handshake that keeps being refused is logged again at most this often."""
MOVE_AFTER_DOWN_S = 0.5
"""With several coordinators: a connection down this long moves to the next one."""
SILENT_MOVE_S = 3.0
"""With several coordinators: connected, unregistered, and neither a Welcome nor a NotLeader for this long: move on."""
NOT_LEADER_RETRY_S = 0.25
"""A standby with no leader to name gets the Register again after this pause (one of them takes over soon)."""
RESEND_WINDOW_S = 10.0
"""Results sent this recently are sent again after a reconnection (see the module notes)."""
RESEND_MAX_MESSAGES = 10_000
"""At most this many Results messages are kept for that (and at most max_message_bytes of them)."""
_LINK_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

_incarnations = 0


def register_retry_delay_s(attempt: int, heartbeat_interval_s: float,
                           reconnect_min_s: float, reconnect_max_s: float) -> float:
    """How long to wait for a Welcome after the ``attempt``-th Register (1-based).

    At least ``max(2 s, 2 heartbeat intervals)`` (the coordinator's reply time), plus a
    backoff doubling from ``reconnect_min_s`` up to ``reconnect_max_s``.
    """
    backoff = min(reconnect_max_s, reconnect_min_s * 2 ** max(0, attempt - 1))
    return max(2.0, 2 * heartbeat_interval_s) + backoff


def public_key_file(secret_key_file: str) -> str:
    """The ``NAME.key`` that goes with ``NAME.key_secret`` (what the coordinator's allowlist holds)."""
    return secret_key_file.removesuffix("_secret") if secret_key_file.endswith(".key_secret") else secret_key_file


def describe_handshake_failure(event: int, value: int, endpoint: str, server_key_file: str,
                               secret_key_file: str) -> tuple[int, str]:
    """(log level, message with the fix) for a handshake failure the socket monitor reported.

    ``value`` is the ZAP status code for an authentication failure (400: key not
    accepted), a ``ZMQ_PROTOCOL_ERROR_*`` code for a protocol failure and an errno for
    one without detail.  An authentication or protocol failure is a refusal (ERROR); a
    failure without detail is one only when this worker speaks CURVE, where it is what a
    wrong coordinator key looks like (the coordinator cannot open our hello and hangs up).
    """
    curve = bool(server_key_file and secret_key_file)
    retry = "; this worker keeps retrying"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400:
            return logging.ERROR, (
                f"coordinator={endpoint} refused this worker's CURVE key at the handshake (ZAP status 400, key not "
                f"accepted): {secret_key_file} is not allowed there. Fix: copy its public half "
                f"{public_key_file(secret_key_file)} into the coordinator's [security] worker_keys_dir and reload "
                f"the coordinator (SIGHUP, or restart it){retry}")
        return logging.ERROR, (
            f"coordinator={endpoint} could not check this worker's CURVE key (ZAP status {value}); see the "
            f"coordinator's log{retry}")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH and not curve:
            return logging.ERROR, (
                f"coordinator={endpoint} refused this worker at the handshake: it requires CURVE keys and this "
                f"worker has none. Fix: pass --server-key COORDINATOR.key and --key NAME.key_secret (or set "
                f"[connection] server_public_key_file and secret_key_file), and put NAME.key in the "
                f"coordinator's [security] worker_keys_dir{retry}")
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return logging.ERROR, (
                f"coordinator={endpoint} refused this worker at the handshake: it does not use CURVE and this "
                f"worker has keys ({secret_key_file}). Fix: drop --server-key/--key (and [connection] "
                f"server_public_key_file/secret_key_file), or give the coordinator [security] keys{retry}")
        return logging.ERROR, (
            f"the handshake with coordinator={endpoint} failed with ZeroMQ protocol error 0x{value:x}: is it an "
            f"actorsched coordinator's worker endpoint, of the same version?{retry}")
    reason = os.strerror(value) if value > 0 else f"error {value}"
    if curve:
        return logging.ERROR, (
            f"coordinator={endpoint} hung up during the CURVE handshake ({reason}): most likely "
            f"{server_key_file} is not its public key. Fix: use the NAME.key next to the coordinator's "
            f"[security] secret_key_file{retry}")
    return logging.WARNING, f"the handshake with coordinator={endpoint} failed ({reason}); retrying"


def routing_id(worker_id: str, pid: int) -> bytes:
    """A routing id unique to one socket of one process: ``worker_id/pid/n``."""
    global _incarnations
    _incarnations += 1
    return f"{worker_id}/{pid}/{_incarnations}".encode()


class StopRequests:
    """Counts stop requests; a signal handler only calls :meth:`request`.  1 = drain, 2+ = stop now."""

    def __init__(self) -> None:
        self.count = 0

    def request(self) -> None:
        self.count += 1


class WorkerConnection:
    """Runs the worker until it drains, is refused or is stopped; see the module docstring."""

    def __init__(self, config: WorkerConfig, stop_requests: StopRequests, wakeup_fd: int | None = None,
                 executor: Executor | None = None, sampler: LoadSampler | None = None) -> None:
        self.config = config
        self.worker_id = config.resolved_worker_id()
        self.slots = config.resolved_slots()
        self.prefetch = config.resolved_prefetch()
        self.coordinators = CoordinatorList(check_endpoints(config.connection.coordinator, "[connection] coordinator"))
        self.endpoint = self.coordinators.current  # the one this worker talks to now
        self._heard_at = time.monotonic()  # the last Welcome or NotLeader from the current coordinator
        self.moves = 0
        self._sent_results: collections.deque[tuple[float, list[bytes]]] = collections.deque()
        self._sent_bytes = 0
        self._resend_after_welcome = False
        self.resent_results = 0
        self._stop_requests = stop_requests
        self._wakeup_fd = wakeup_fd
        self._executor = executor or Executor(
            self.slots, config.worker.start_method,
            max_result_bytes=config.connection.max_message_bytes - 64 * 1024, worker_id=self.worker_id,
        )
        self._sampler = sampler or LoadSampler()
        self._codec = Codec(TO_WORKER_MESSAGES, config.connection.max_message_bytes)
        self._allowed = list(config.execution.allowed_modules)
        self._allow_cache: dict[str, ErrorInfo | None] = {}
        self._default_timeout_s = config.execution.default_timeout_s
        self._debug = log.isEnabledFor(logging.DEBUG)
        # session state
        self.registered = False
        self.epoch: int | None = None
        self.heartbeat_interval_s = config.worker.heartbeat_interval_s
        self._register_attempts = 0
        self._next_register_at = math.inf
        self._next_heartbeat_at = math.inf
        self.draining = False
        self._drain_deadline = math.inf
        self.exit_code: int | None = None
        self._outcomes: list[TaskOutcome] = []
        self._unreported: dict[str, Job] = {}  # started, not yet reported as Started
        self._started_due = math.inf
        self.protocol_errors = 0
        self.dropped_sends = 0
        self._heartbeats = 0
        self.ignored_assignments = 0
        # the connection, as the socket monitor reports it
        self._link_up = False
        self._link_down_since = time.monotonic()
        self._link_drops = 0
        self._register_link: int | None = None  # the connection (by drops) the last Register left on
        self.skipped_heartbeats = 0
        self.ignored_reregisters = 0
        self.handshake_failures = 0
        self._failures_logged: dict[tuple[int, int], float] = {}  # distinct failure -> when last logged
        self._reopen_at = math.inf
        self._reopens = 0
        self._hangups = 0  # handshakes hung up on (no detail) since the last one that succeeded
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._poller_version = -1

    # ------------------------------------------------------------- lifecycle

    def run(self) -> int:
        """Connect, register and serve until done; the process exit code.  Children never outlive it."""
        self._executor.start()
        try:
            self._context = zmq.Context()
            self._open_socket()
            log.info("worker starting worker_id=%s slots=%s coordinator=%s", self.worker_id, self.slots,
                     self.endpoint)
            self._send_register(time.monotonic())
            while self.exit_code is None:
                self._turn()
        finally:
            self._executor.stop()
            self._close_socket(LINGER_MS)
            if self._context is not None:
                self._context.term()
        log.info("worker stopped worker_id=%s exit_code=%s tasks_finished=%s protocol_errors=%s "
                 "dropped_sends=%s ignored_assignments=%s skipped_heartbeats=%s ignored_reregisters=%s "
                 "handshake_failures=%s", self.worker_id, self.exit_code, self._executor.tasks_finished,
                 self.protocol_errors, self.dropped_sends, self.ignored_assignments, self.skipped_heartbeats,
                 self.ignored_reregisters, self.handshake_failures)
        return self.exit_code

    def _open_socket(self) -> None:
        """A new DEALER (with a new routing id) and its monitor, connecting to the coordinator."""
        assert self._context is not None
        conn = self.config.connection
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.ROUTING_ID, routing_id(self.worker_id, os.getpid()))
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            sock.setsockopt(zmq.RECONNECT_IVL, max(1, int(conn.reconnect_min_s * 1000)))
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(1, int(conn.reconnect_max_s * 1000)))
            sock.setsockopt(zmq.MAXMSGSIZE, conn.max_message_bytes)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            secure_client_socket(sock, conn.server_public_key_file, conn.secret_key_file)
            if self.coordinators.several:  # a dead leader's host must not look connected forever
                sock.setsockopt(zmq.HEARTBEAT_IVL, int(LINK_TIMEOUT_S * 1000 / 3))
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(LINK_TIMEOUT_S * 1000))
            self._monitor = sock.get_monitor_socket(_LINK_EVENTS)
            sock.connect(self.endpoint)
        except BaseException:  # a socket left open would block the context's term() forever
            self._socket = sock
            self._close_socket(0)
            raise
        self._socket = sock
        self._link_up = False
        self._poller_version = -1  # the poller holds the old sockets

    def _close_socket(self, linger_ms: int) -> None:
        if self._monitor is not None and self._socket is not None:
            self._socket.disable_monitor()
            self._monitor.close(0)
        self._monitor = None
        if self._socket is not None:
            self._socket.close(linger_ms)
        self._socket = None

    # ------------------------------------------------------------- one turn

    def _turn(self) -> None:
        assert self._socket is not None
        now = time.monotonic()
        self._check_stop_requests(now)
        if self.exit_code is not None:
            return
        if self._poller_version != self._executor.fds_version:
            self._rebuild_poller()
        task_deadline = self._executor.next_deadline()  # collect and dispatch below only move it later
        timeout_s = min(self._next_timer(task_deadline) - now, MAX_POLL_S)
        events = self._poller.poll(max(0, math.ceil(timeout_s * 1000)))
        now = time.monotonic()
        ready: list[int] = []
        sock, monitor = self._socket, self._monitor  # a move to another coordinator replaces both mid-turn
        for item, _event in events:
            if item is monitor:  # first: the poller lists it first
                if monitor is self._monitor:
                    self._read_monitor(now)
            elif item is sock:
                if sock is self._socket:
                    self._read_socket(now)
            elif item == self._wakeup_fd:
                self._drain_wakeup_fd()
            else:
                ready.append(item)
        executor = self._executor
        if ready:
            self._outcomes.extend(executor.collect(now, ready))
        if task_deadline <= now:
            self._outcomes.extend(executor.expire(now))
        if self.exit_code is None:
            self._dispatch(now, respawn=False)
        if self._outcomes:
            outcomes, self._outcomes = self._outcomes, []
            for outcome in outcomes:
                self._unreported.pop(outcome.task_id, None)  # its Results says it started
            self._send_results(outcomes)
        if executor.has_retired() and self.exit_code is None:  # after the outcomes: a new child takes ms
            self._dispatch(now, respawn=True)
        if self._unreported and now >= self._started_due:
            self._send(Started([job.ref for job in self._unreported.values()]))
            self._unreported.clear()
        self._fire_timers(now)

    def _dispatch(self, now: float, respawn: bool) -> None:
        started = self._executor.dispatch(now, respawn)
        if started:
            if not self._unreported:
                self._started_due = now + STARTED_DELAY_S
            self._unreported.update((job.task_id, job) for job in started)

    def _rebuild_poller(self) -> None:
        self._poller = zmq.Poller()
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._socket, zmq.POLLIN)
        if self._wakeup_fd is not None:
            self._poller.register(self._wakeup_fd, zmq.POLLIN)
        for fd in self._executor.fds():
            self._poller.register(fd, zmq.POLLIN)
        self._poller_version = self._executor.fds_version

    def _next_timer(self, task_deadline: float) -> float:
        timer = min(task_deadline, self._drain_deadline, self._reopen_at,
                    self._next_heartbeat_at if self.registered else self._next_register_at)
        return min(timer, self._started_due) if self._unreported else timer

    def _drain_wakeup_fd(self) -> None:
        assert self._wakeup_fd is not None
        try:
            os.read(self._wakeup_fd, 512)
        except BlockingIOError:
            pass  # another reader got there first; the flag is what counts

    def _fire_timers(self, now: float) -> None:
        if self.exit_code is not None:
            return
        if now >= self._reopen_at:
            self._reopen(now)
        if self.registered and now >= self._next_heartbeat_at:
            self._heartbeats += 1
            if self._link_up:
                load = self._sampler.sample()
                self._send(Heartbeat(load.cpu_percent, load.memory_percent, self._executor.held_task_ids()))
                if self._debug:
                    log.debug("heartbeat n=%d sent", self._heartbeats)
            else:  # it would wait in the queue, and each queued one would earn a Reregister
                self.skipped_heartbeats += 1
                if self._debug:
                    log.debug("heartbeat n=%d not sent: no connection to coordinator=%s (skipped=%d)",
                              self._heartbeats, self.endpoint, self.skipped_heartbeats)
            self._next_heartbeat_at = now + self.heartbeat_interval_s
        self._check_leader(now)
        if not self.registered and now >= self._next_register_at:
            level = logging.INFO if self._register_attempts < 3 else logging.WARNING
            if self._link_up:
                log.log(level, "no Welcome from coordinator=%s after %s Register(s); sending Register again",
                        self.endpoint, self._register_attempts)
                self._send_register(now)
            else:  # the Register already sent waits in the queue and goes first once it connects
                self._register_attempts += 1
                log.log(level, "no Welcome from coordinator=%s: no connection to it for %.1f s; the queued "
                        "Register goes when it answers", self.endpoint, now - self._link_down_since)
                self._next_register_at = now + self._register_delay_s()
        if self.draining:
            if self._executor.is_empty():
                log.info("drained worker_id=%s; saying goodbye", self.worker_id)
                self._finish(EXIT_OK, "drained")
            elif now >= self._drain_deadline:
                log.warning("drain_timeout_s=%s passed with %s task(s) unfinished; killing them",
                            self.config.worker.drain_timeout_s, len(self._executor.held_task_ids()))
                self._finish(EXIT_OK, "drain timed out; unfinished tasks were killed")

    def _check_stop_requests(self, now: float) -> None:
        count = self._stop_requests.count
        if count >= 2:
            log.warning("second stop request: killing %s running task(s) and stopping now",
                        len(self._executor.held_task_ids()))
            self._finish(EXIT_FORCED, "stopped at once by a second signal")
        elif count == 1 and not self.draining:
            self._start_drain(now, "stop signal received")

    def _start_drain(self, now: float, reason: str) -> None:
        self.draining = True
        self._drain_deadline = now + self.config.worker.drain_timeout_s
        log.info("draining worker_id=%s reason=%r held=%s drain_timeout_s=%s", self.worker_id, reason,
                 len(self._executor.held_task_ids()), self.config.worker.drain_timeout_s)
        self._send(Draining(reason))

    def _finish(self, exit_code: int, reason: str) -> None:
        if self._outcomes:
            outcomes, self._outcomes = self._outcomes, []
            self._send_results(outcomes)
        self._send(Goodbye(reason))
        self.exit_code = exit_code

    # ------------------------------------------------------------- the connection

    def _read_monitor(self, now: float) -> None:
        monitor = self._monitor
        assert monitor is not None
        while has_input(monitor):
            event = parse_monitor_message(monitor.recv_multipart())
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._on_link_up(now)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._on_link_down(now)
            else:
                self._on_handshake_failed(now, kind, value)

    def _on_link_up(self, now: float) -> None:
        self._link_up = True
        self._heard_at = now
        self._failures_logged.clear()  # a refusal after this one is news again
        self._hangups = 0
        self._reopens = 0
        if self.registered:
            # Back after a drop: the coordinator forgot this connection when it closed (or
            # is a new process).  Register once, now, rather than heartbeat into Reregisters.
            log.info("connection to coordinator=%s is back after %.1f s; registering again held=%s",
                     self.endpoint, now - self._link_down_since, len(self._executor.held_task_ids()))
            self._resend_after_welcome = True
            self.registered = False
            self._register_attempts = 0
            self._send_register(now)
        elif self._register_link is not None and self._register_link != self._link_drops:
            # The last Register left on a connection that dropped before its Welcome came.
            log.info("connection to coordinator=%s is back; sending Register again", self.endpoint)
            self._send_register(now)
        else:
            # The Register sent while there was no connection waited in the queue and goes
            # out on this one; it is sent again only if no Welcome comes in the usual time.
            if self._link_drops or self._debug:
                log.log(logging.INFO if self._link_drops else logging.DEBUG,
                        "connected to coordinator=%s; waiting for its Welcome", self.endpoint)
            self._next_register_at = now + self._register_delay_s()

    def _on_link_down(self, now: float) -> None:
        if not self._link_up:
            return  # a handshake that failed: its own event said why
        if self.coordinators.several:
            self.registered = False  # with a list, the next Welcome may come from another coordinator
            self._register_attempts = 0
        self._resend_after_welcome = True
        self._link_up = False
        self._link_down_since = now
        self._link_drops += 1
        log.warning("lost the connection to coordinator=%s (drops=%d); heartbeats pause and this worker "
                    "registers again once it is back", self.endpoint, self._link_drops)

    def _on_handshake_failed(self, now: float, kind: int, value: int) -> None:
        self.handshake_failures += 1
        conn = self.config.connection
        if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # A hang-up may be a coordinator stopping mid-handshake; a wrong key repeats.
            self._hangups += 1
            if self._hangups < 2:
                if self._debug:
                    log.debug("handshake with coordinator=%s failed value=%d; ZeroMQ retries it", self.endpoint, value)
                return
        level, text = describe_handshake_failure(kind, value, self.endpoint, conn.server_public_key_file,
                                                 conn.secret_key_file)
        key = (kind, value)
        last = self._failures_logged.get(key)
        if last is None or now - last >= REFUSAL_REMINDER_S:
            self._failures_logged[key] = now
            log.log(level, "%s (handshake failures so far: %d)", text, self.handshake_failures)
        elif self._debug:
            log.debug("handshake with coordinator=%s failed again event=%d value=%d (failures=%d)",
                      self.endpoint, kind, value, self.handshake_failures)
        if kind != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._reopen_at == math.inf:
            # ZeroMQ never reconnects after an authentication or protocol failure.
            conn_min, conn_max = conn.reconnect_min_s, conn.reconnect_max_s
            self._reopen_at = now + min(conn_max, conn_min * 2 ** min(self._reopens, 30))

    def _reopen(self, now: float) -> None:
        """A new connection after a refused handshake, with a Register waiting in it."""
        self._reopen_at = math.inf
        self._reopens += 1
        if self._debug:
            log.debug("opening a new connection to coordinator=%s after a refused handshake (attempt %d)",
                      self.endpoint, self._reopens)
        self._close_socket(0)  # ZeroMQ dropped everything queued on it with the refused handshake
        self._open_socket()
        self.registered = False
        self._register_attempts = 0
        self._send_register(now)

    def _move(self, now: float, endpoint: str, why: str) -> None:
        """Talk to ``endpoint`` from now on: a new connection with a Register waiting in it."""
        self.moves += 1
        log.info("moving to coordinator=%s from %s (%s) held=%s", endpoint, self.endpoint, why,
                 len(self._executor.held_task_ids()))
        self._close_socket(0)
        previous, self.endpoint = self.endpoint, endpoint
        try:
            self._open_socket()
        except zmq.ZMQError as exc:  # an endpoint ZeroMQ will not take: stay with the one we had
            log.warning("cannot connect to coordinator=%s (%s); staying with %s", endpoint, exc, previous)
            self.coordinators.note_down(endpoint, now)
            self.coordinators.current = self.endpoint = previous
            self._open_socket()
        self._resend_after_welcome = True
        self._link_down_since = now
        self._heard_at = now
        self.registered = False
        self._register_attempts = 0
        self._send_register(now)

    def _check_leader(self, now: float) -> None:
        """With several coordinators, unregistered: move on from one that is down or says nothing."""
        if not self.coordinators.several or self.registered or self.exit_code is not None:
            return
        down = not self._link_up and now - self._link_down_since >= MOVE_AFTER_DOWN_S
        silent = self._link_up and now - self._heard_at >= SILENT_MOVE_S
        if down or silent:
            self._move(now, self.coordinators.after_silence(now, dropped=down),
                       "no connection" if down else f"no answer for {now - self._heard_at:.1f} s")

    def _register_delay_s(self) -> float:
        conn = self.config.connection
        return register_retry_delay_s(max(1, self._register_attempts), self.heartbeat_interval_s,
                                      conn.reconnect_min_s, conn.reconnect_max_s)

    # ------------------------------------------------------------- inbound

    def _read_socket(self, now: float) -> None:
        sock = self._socket
        assert sock is not None
        for _ in range(MAX_MESSAGES_PER_TURN):
            try:
                frames = recv_bytes(sock, MAX_FRAMES)
            except zmq.Again:
                return
            try:
                message = self._codec.decode(frames)
            except ProtocolError as exc:
                self.protocol_errors += 1
                log.warning("dropping bad frame from coordinator=%s reason=%s count=%s", self.endpoint, exc,
                            self.protocol_errors)
            else:
                self._handle(message, now)
                if self.exit_code is not None or sock is not self._socket:  # done, or moved to another one
                    return
            if not has_input(sock):
                return

    def _handle(self, message: Message, now: float) -> None:
        if isinstance(message, Assign):
            self._on_assign(message, now)
        elif isinstance(message, Release):
            released = self._executor.release(message.attempts)
            self._send(Released(released))
        elif isinstance(message, CancelTasks):
            for ref in message.attempts:
                outcome = self._executor.cancel(ref, now)
                if outcome is not None:
                    self._outcomes.append(outcome)
                elif self._debug:
                    log.debug("cancel of unheld attempt ignored task_id=%s attempt=%s", ref.task_id, ref.attempt)
        elif isinstance(message, NotLeader):
            self._heard_at = now
            target = self.coordinators.after_not_leader(message.leader, now)
            if target != self.endpoint:
                self._move(now, target, f"coordinator={self.endpoint} stands by; epoch {message.epoch} leads there")
                return
            if self.registered:  # the coordinator it was registered with no longer leads
                self.registered = False
                self._register_attempts = 0
            if self._debug:
                log.debug("coordinator=%s stands by and names no live leader; registering again soon",
                          self.endpoint)
            self._next_register_at = min(self._next_register_at, now + NOT_LEADER_RETRY_S)
        elif isinstance(message, Welcome):
            self._heard_at = now
            self.coordinators.note_up(self.endpoint)
            self.registered = True
            self.epoch = message.epoch
            if message.heartbeat_interval_s > 0:
                self.heartbeat_interval_s = message.heartbeat_interval_s
            self._next_heartbeat_at = now + self.heartbeat_interval_s
            self._register_attempts = 0
            log.info("registered worker_id=%s coordinator=%s epoch=%s heartbeat_interval_s=%s",
                     self.worker_id, self.endpoint, self.epoch, self.heartbeat_interval_s)
            if self._resend_after_welcome:
                self._resend_after_welcome = False
                self._resend_results(now)
            if self.draining:  # a coordinator met after the drain began must not send it more
                self._send(Draining("draining (said again to this coordinator)"))
        elif isinstance(message, Reregister):
            if not self.registered:
                # A Register is on its way already (an unregistered worker always has one
                # out); this answers a heartbeat sent before it.  One Register per reconnect.
                self.ignored_reregisters += 1
                if self._debug:
                    log.debug("ignoring a request to register again reason=%r: a Register is on its way "
                              "(ignored=%d)", message.reason, self.ignored_reregisters)
                return
            log.info("coordinator asked to register again reason=%r held=%s", message.reason,
                     len(self._executor.held_task_ids()))
            self._resend_after_welcome = True
            self.registered = False
            self._register_attempts = 0
            self._send_register(now)
        elif isinstance(message, Shutdown):
            log.info("coordinator asked to shut down reason=%r", message.reason)
            if not self.draining:
                self._start_drain(now, f"shutdown requested by the coordinator: {message.reason}")
        elif isinstance(message, Refused):
            log.error("coordinator=%s refused this worker reason=%r; exiting", self.endpoint, message.reason)
            self.exit_code = EXIT_REFUSED
        else:  # the codec only yields TO_WORKER_MESSAGES; anything else is our bug
            raise TypeError(f"unhandled message kind {type(message).__name__}")

    def _on_assign(self, message: Assign, now: float) -> None:
        if self.draining:
            self.ignored_assignments += len(message.assignments)
            log.warning("ignoring %s assignment(s) received while draining; the coordinator requeues them",
                        len(message.assignments))
            return
        executor = self._executor
        for item in message.assignments:
            name = item.name
            try:
                error = self._allow_cache[name]
            except KeyError:
                error = check_task_name(name, self._allowed)
                if len(self._allow_cache) > 10_000:
                    self._allow_cache.clear()
                self._allow_cache[name] = error
            if error is not None:
                self._outcomes.append(TaskOutcome(item.task_id, item.epoch, item.attempt, False, None, error, 0.0))
                continue
            job = Job(item.task_id, item.epoch, item.attempt, name, item.args, item.kwargs,
                      self._default_timeout_s if item.timeout_s is None else item.timeout_s,
                      item.priority, item.short, item.trace)
            held = executor.held_attempt(item.task_id)
            if held is not None:
                if held == job.ref:
                    continue  # a duplicate of what we already hold
                superseded = executor.cancel(held, now, reason=f"superseded by attempt {item.attempt}")
                if superseded is not None:
                    self._outcomes.append(superseded)
            executor.submit(job)

    # ------------------------------------------------------------- outbound

    def _send_register(self, now: float) -> None:
        self._heard_at = now  # silence is counted from the Register on
        self._register_attempts += 1
        self._next_register_at = now + self._register_delay_s()
        # Sent on a live connection it is gone if that one drops; sent while down it waits in the queue.
        self._register_link = self._link_drops if self._link_up else None
        self._send(Register(self.worker_id, socket.gethostname(), os.getpid(), self.slots,
                            list(self.config.worker.tags), self._executor.held(), self.prefetch))

    def _send_results(self, outcomes: list[TaskOutcome]) -> None:
        """One Results for all ``outcomes``, split only if it cannot go as one message."""
        limit = self.config.connection.max_message_bytes
        try:
            frames = encode(Results(outcomes))
            problem = None if len(frames[2]) <= limit else (
                "ResultTooLarge", f"the outcome is {len(frames[2])} bytes, more than max_message_bytes={limit}")
        except ProtocolError as exc:
            problem = ("ResultNotSerializable", str(exc))
        if problem is None:
            self._send_result_frames(frames)
        elif len(outcomes) > 1:  # find the culprit by halving; the others go as they are
            middle = len(outcomes) // 2
            self._send_results(outcomes[:middle])
            self._send_results(outcomes[middle:])
        else:
            self._send_result_frames(encode(Results([_replace_error(outcomes[0], *problem)])))

    def _send_result_frames(self, frames: list[bytes]) -> None:
        """Send a Results and keep it for :data:`RESEND_WINDOW_S`, within ``max_message_bytes`` in all."""
        self._send_frames(frames)
        now = time.monotonic()
        self._sent_results.append((now, frames))
        self._sent_bytes += len(frames[2])
        self._forget_sent(now)

    def _forget_sent(self, now: float) -> None:
        """Drop kept Results older than :data:`RESEND_WINDOW_S`, and the oldest beyond the size and count bounds."""
        sent = self._sent_results
        while sent and (self._sent_bytes > self.config.connection.max_message_bytes
                        or len(sent) > RESEND_MAX_MESSAGES or sent[0][0] < now - RESEND_WINDOW_S):
            self._sent_bytes -= len(sent.popleft()[1][2])

    def _resend_results(self, now: float) -> None:
        """Send again the Results of the last :data:`RESEND_WINDOW_S` (after a reconnection's Welcome)."""
        self._forget_sent(now)
        sent = self._sent_results
        if not sent:
            return
        for _, frames in sent:
            self._send_frames(frames)
        self.resent_results += len(sent)
        log.info("sent again %d Results message(s) of the last %.0f s: the coordinator may not have read them "
                 "before the connection dropped (it drops those it has)", len(sent), RESEND_WINDOW_S)

    def _send(self, message: Message) -> None:
        self._send_frames(encode(message))

    def _send_frames(self, frames: list[bytes]) -> None:
        sock = self._socket
        assert sock is not None
        try:
            send_frames(sock, frames)
        except zmq.Again:
            self.dropped_sends += 1
            log.warning("send queue to coordinator=%s is full; dropped a %s message (dropped=%s)",
                        self.endpoint, frames[1].decode(), self.dropped_sends)


def _replace_error(outcome: TaskOutcome, error_type: str, message: str) -> TaskOutcome:
    return TaskOutcome(outcome.task_id, outcome.epoch, outcome.attempt, False, None,
                       ErrorInfo(error_type, message), outcome.duration_s, outcome.output)
