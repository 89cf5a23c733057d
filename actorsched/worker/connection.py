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
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time

import zmq

from actorsched.config import WorkerConfig
from actorsched.errors import ProtocolError
from actorsched.protocol import (
    TO_WORKER_MESSAGES,
    Assign,
    CancelTasks,
    Codec,
    Draining,
    ErrorInfo,
    Goodbye,
    Heartbeat,
    Message,
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

_incarnations = 0


def register_retry_delay_s(attempt: int, heartbeat_interval_s: float,
                           reconnect_min_s: float, reconnect_max_s: float) -> float:
    """How long to wait for a Welcome after the ``attempt``-th Register (1-based).

    At least ``max(2 s, 2 heartbeat intervals)`` (the coordinator's reply time), plus a
    backoff doubling from ``reconnect_min_s`` up to ``reconnect_max_s``.
    """
    backoff = min(reconnect_max_s, reconnect_min_s * 2 ** max(0, attempt - 1))
    return max(2.0, 2 * heartbeat_interval_s) + backoff


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
        self.endpoint = config.connection.coordinator
        self._stop_requests = stop_requests
        self._wakeup_fd = wakeup_fd
        self._executor = executor or Executor(
            self.slots, config.worker.start_method,
            max_result_bytes=config.connection.max_message_bytes - 64 * 1024,
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
        self.ignored_assignments = 0
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._poller_version = -1

    # ------------------------------------------------------------- lifecycle

    def run(self) -> int:
        """Connect, register and serve until done; the process exit code.  Children never outlive it."""
        self._executor.start()
        try:
            self._context = zmq.Context()
            self._socket = self._open_socket()
            log.info("worker starting worker_id=%s slots=%s coordinator=%s", self.worker_id, self.slots,
                     self.endpoint)
            self._send_register(time.monotonic())
            while self.exit_code is None:
                self._turn()
        finally:
            self._executor.stop()
            if self._socket is not None:
                self._socket.close(LINGER_MS)
            if self._context is not None:
                self._context.term()
        log.info("worker stopped worker_id=%s exit_code=%s tasks_finished=%s protocol_errors=%s "
                 "dropped_sends=%s ignored_assignments=%s", self.worker_id, self.exit_code,
                 self._executor.tasks_finished, self.protocol_errors, self.dropped_sends, self.ignored_assignments)
        return self.exit_code

    def _open_socket(self) -> zmq.Socket[bytes]:
        assert self._context is not None
        conn = self.config.connection
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, routing_id(self.worker_id, os.getpid()))
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, max(1, int(conn.reconnect_min_s * 1000)))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(1, int(conn.reconnect_max_s * 1000)))
        sock.setsockopt(zmq.MAXMSGSIZE, conn.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        secure_client_socket(sock, conn.server_public_key_file, conn.secret_key_file)
        sock.connect(self.endpoint)
        return sock

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
        for item, _event in events:
            if item is self._socket:
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
        self._poller.register(self._socket, zmq.POLLIN)
        if self._wakeup_fd is not None:
            self._poller.register(self._wakeup_fd, zmq.POLLIN)
        for fd in self._executor.fds():
            self._poller.register(fd, zmq.POLLIN)
        self._poller_version = self._executor.fds_version

    def _next_timer(self, task_deadline: float) -> float:
        timer = min(task_deadline, self._drain_deadline,
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
        if self.registered and now >= self._next_heartbeat_at:
            load = self._sampler.sample()
            self._send(Heartbeat(load.cpu_percent, load.memory_percent, self._executor.held_task_ids()))
            self._next_heartbeat_at = now + self.heartbeat_interval_s
        if not self.registered and now >= self._next_register_at:
            level = logging.INFO if self._register_attempts < 3 else logging.WARNING
            log.log(level, "no Welcome from coordinator=%s after %s Register(s); sending Register again",
                    self.endpoint, self._register_attempts)
            self._send_register(now)
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

    # ------------------------------------------------------------- inbound

    def _read_socket(self, now: float) -> None:
        sock = self._socket
        assert sock is not None
        for _ in range(MAX_MESSAGES_PER_TURN):
            try:
                frames = recv_bytes(sock)
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
                if self.exit_code is not None:
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
        elif isinstance(message, Welcome):
            self.registered = True
            self.epoch = message.epoch
            if message.heartbeat_interval_s > 0:
                self.heartbeat_interval_s = message.heartbeat_interval_s
            self._next_heartbeat_at = now + self.heartbeat_interval_s
            self._register_attempts = 0
            log.info("registered worker_id=%s coordinator=%s epoch=%s heartbeat_interval_s=%s",
                     self.worker_id, self.endpoint, self.epoch, self.heartbeat_interval_s)
        elif isinstance(message, Reregister):
            log.info("coordinator asked to register again reason=%r held=%s", message.reason,
                     len(self._executor.held_task_ids()))
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
                      item.priority, item.short)
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
        self._register_attempts += 1
        self._next_register_at = now + register_retry_delay_s(
            self._register_attempts, self.heartbeat_interval_s,
            self.config.connection.reconnect_min_s, self.config.connection.reconnect_max_s,
        )
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
            self._send_frames(frames)
        elif len(outcomes) > 1:  # find the culprit by halving; the others go as they are
            middle = len(outcomes) // 2
            self._send_results(outcomes[:middle])
            self._send_results(outcomes[middle:])
        else:
            self._send_frames(encode(Results([_replace_error(outcomes[0], *problem)])))

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
                       ErrorInfo(error_type, message), outcome.duration_s)
