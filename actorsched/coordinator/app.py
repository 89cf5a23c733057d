"""Coordinator wiring and entry point: config in, actors started, run until a signal.

:class:`Coordinator` builds the actors and the transport and connects them; it is
also what tests use to run a coordinator inside their own process.  :func:`main`
is the thin command-line entry point behind ``bin/coordinator``.

With ``[journal] backend = "postgresql"`` a coordinator first stands by: it binds its
ports (answering every peer ``NotLeader``, naming the leader) and tries the database's
lease every ``lease_s / 12`` until it wins it; only then does it read the journal and start
its actors, under the lease's epoch.  It leads until it stops (giving the lease up, so a
standby takes over at once) or loses the lease (fenced, or the database out of reach for
``lease_s``): then it stops serving and exits with :data:`EXIT_STEPPED_DOWN`, for its
supervisor to start it again, as a standby (see :mod:`actorsched.coordinator.journal_pg`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka
import zmq

from actorsched import config as cfg
from actorsched import logs
from actorsched.coordinator.dispatcher import DispatcherActor
from actorsched.coordinator.failure_detector import FailureDetectorActor
from actorsched.coordinator.journal import Journal, JournalBackend, JournalError
from actorsched.coordinator.registry import RegistryActor
from actorsched.coordinator.supervision import SupervisedActor, Supervisor
from actorsched.coordinator.task_queue import TaskQueueActor
from actorsched.coordinator.transport import Transport
from actorsched.errors import ActorschedError, ConfigError
from actorsched.http import StatusServer

if TYPE_CHECKING:
    from actorsched.coordinator.journal_pg import Lease

log = logging.getLogger(__name__)

EXIT_STEPPED_DOWN = 3
"""The exit code of a leader that lost its lease (another coordinator leads now, or the database was out of reach)."""


class Stopped(ActorschedError):
    """Asked to stop while standing by: nothing was started."""


class StartError(ActorschedError):
    """The coordinator cannot start (a port in use, an address not on this host); the message says which and why."""


class Coordinator:
    """All coordinator actors, started and connected.  ``stop()`` tears them down.

    Start-up takes every resource that can be refused first (the journal's lock, both
    ZeroMQ ports, the status page's port) and only then raises the journal's epoch and
    starts actors and threads.  Whatever fails along the way, everything taken so far
    is released before the error leaves the constructor: a half-started coordinator
    used to keep its actor threads (and so the process) alive with no one to stop them.
    """

    def __init__(self, config: cfg.CoordinatorConfig, stop: threading.Event | None = None,
                 on_standby: Callable[[Coordinator], None] | None = None) -> None:
        """``stop`` ends a standby's wait for the lease (raising :class:`Stopped`); ``on_standby`` is called
        once the ports are bound, when this coordinator starts standing by."""
        self.config = config
        self.journal: JournalBackend | None = None
        self.lease: Lease | None = None
        self._stop_request = stop or threading.Event()
        self._on_standby = on_standby
        self.epoch = 1
        self.transport: Transport | None = None
        self.http: StatusServer | None = None
        self.supervisor = Supervisor()
        self._actors: list[pykka.ActorRef[Any]] = []
        self._stopped = False
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        config = self.config
        address = cfg.http_address(config.http.endpoint, "[http] endpoint", config.http.token_file)
        token = cfg.read_http_token(config.http.token_file, "[http] token_file") if address is not None else None
        dsn = ""
        if config.journal.enabled and config.journal.backend == "postgresql":
            dsn = _prepare_postgresql(config.journal.resolved_dsn())
        elif config.journal.enabled:
            journal = Journal(config.journal.state_dir, config.journal.fsync)
            self.journal = journal
            self.epoch = journal.open()
        self.transport = transport = Transport(config.endpoints, config.security)
        try:
            transport.bind()
        except zmq.ZMQError as exc:
            # Transport.bind binds the client socket first: without it, the client port failed.
            if getattr(transport, "clients", None) is None:
                raise _bind_error("client endpoint", config.endpoints.client_endpoint, "--bind", exc) from None
            raise _bind_error("worker endpoint", config.endpoints.worker_endpoint, "--worker-bind", exc) from None
        if address is not None:
            try:
                self.http = StatusServer(*address, token=token)
            except OSError as exc:
                raise _bind_error("status page", config.http.endpoint, "--http", exc) from None
        # Every port is ours: only now may the stored epoch move (a start that fails above
        # leaves it as it was, so the fencing tokens of the running epoch stay valid).
        if isinstance(self.journal, Journal):
            self.journal.commit_epoch()
        if dsn:
            self._stand_by(dsn)
        SupervisedActor.supervisor = self.supervisor  # one coordinator per process
        transport.supervisor = self.supervisor
        self.dispatcher = self._started(DispatcherActor.start(config.placement))
        self.registry = self._started(RegistryActor.start(config.liveness, config.placement, self.epoch,
                                                          config.breaker))
        self.queue = self._started(TaskQueueActor.start(
            config.tasks, self.journal, self.epoch, config.journal,
            reply_budget_bytes=config.endpoints.max_message_bytes // 2))
        self.dispatcher.proxy().connect(self.queue, transport).get(timeout=30)
        self.registry.proxy().connect(self.queue, self.dispatcher, transport).get(timeout=30)
        self.queue.proxy().connect(self.dispatcher, transport, self.registry).get(timeout=30)
        self.failure_detector = self._started(FailureDetectorActor.start(config.liveness, self.queue, self.registry))
        if self.lease is not None:
            transport.lead(self.queue, self.registry)
        else:
            transport.connect(self.queue, self.registry)
            transport.start()
        if self.http is not None:
            self.http.start(self.queue, self.registry, transport.counters)
        log.info("coordinator started epoch=%d clients=%s workers=%s", self.epoch,
                 transport.client_endpoint, transport.worker_endpoint)

    def _stand_by(self, dsn: str) -> None:
        """Answer peers ``NotLeader`` until this coordinator wins the lease; then open the journal under its epoch."""
        from actorsched.coordinator.journal_pg import Lease, PgJournal

        transport = self.transport
        assert transport is not None
        ends = self.config.endpoints
        advertised = (ends.advertise_client_endpoint or transport.client_endpoint,
                      ends.advertise_worker_endpoint or transport.worker_endpoint)
        lease_s = self.config.journal.lease_s
        self.lease = lease = Lease(dsn, lease_s, f"{socket.gethostname()}:{os.getpid()}", *advertised)
        transport.standby = ("", "", 0)
        transport.start()
        if self.http is not None:
            self.http.stand_by(lambda: _leader_text(transport.standby))
        if self._on_standby is not None:
            self._on_standby(self)
        shown: tuple[str, int] | None = None
        while not lease.try_take():
            info = lease.leader()
            leading = info is not None and info.expires_in_s > 0 and info.epoch > 0
            transport.standby = (info.client_endpoint, info.worker_endpoint, info.epoch) if (
                info is not None and leading) else ("", "", 0)
            now = (info.holder, info.epoch) if info is not None and leading else ("", 0)
            if now != shown:
                shown = now
                if info is None:
                    log.warning("standing by: the journal database cannot be read; trying again")
                elif leading:
                    log.info("standing by: epoch %d leads (%s, clients %s, workers %s)", info.epoch, info.holder,
                             info.client_endpoint, info.worker_endpoint)
                else:
                    log.info("standing by: no coordinator leads; taking over once the last lease ends")
            if self._stop_request.wait(lease_s / 12):
                raise Stopped("asked to stop while standing by")
        # Renewed from now on, through the replay (which may take longer than a lease); meanwhile
        # peers hear that no one leads yet rather than the name of a leader that is gone.
        lease.start_keeping()
        transport.standby = ("", "", 0)
        self.epoch = lease.epoch
        self.journal = PgJournal(dsn, lease.epoch, lease.holds, lease.lose, lease_s)
        log.info("leading: took the lease epoch=%d holder=%s", lease.epoch, lease.holder)

    def leads(self) -> bool:
        """False once a PostgreSQL-backed leader lost its lease (it must stop serving)."""
        return self.lease is None or self.lease.holds()

    def _started(self, ref: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        self._actors.append(ref)
        return ref

    def stop(self) -> None:
        """Release everything this coordinator holds; also undoes a start that failed half-way.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.http is not None:
            self.http.stop()
        if self.transport is not None:
            self.transport.stop()  # no new input first, then the clock, then the actors
        clock = getattr(self, "failure_detector", None)
        for ref in sorted(self._actors, key=lambda ref: ref is not clock):  # the clock, then in start order
            try:
                ref.stop(block=True, timeout=10)
            except pykka.Timeout:  # stuck in a message: carry on releasing, the process ends anyway
                log.error("actor %s did not stop within 10 s", ref)
        if self.journal is not None:
            self.journal.close()
        if self.lease is not None:
            if self._actors and self.lease.holds():  # the writer has stopped: hand over at once
                self.lease.resign()
            self.lease.close()
        if self._actors:
            log.info("coordinator stopped")
        else:  # never started: do not read as if a running coordinator (perhaps another one) stopped
            log.info("coordinator start abandoned; everything it had taken is released")


def _leader_text(standby: tuple[str, str, int] | None) -> str:
    if standby is None:
        return "it leads now"
    clients, workers, epoch = standby
    return f"epoch {epoch} leads (clients {clients}, workers {workers})" if epoch else "no coordinator leads yet"


def _prepare_postgresql(dsn: str) -> str:
    """The DSN with network time bounds, after creating the journal's tables if missing."""
    try:
        from actorsched.coordinator import journal_pg
    except ImportError as exc:
        raise JournalError(f"[journal] backend = \"postgresql\" needs psycopg 3 ({exc}): "
                           f"pip install 'actorsched[postgresql]'") from None
    dsn = journal_pg.bounded_dsn(dsn)
    journal_pg.prepare(dsn)
    return dsn


def _bind_error(what: str, endpoint: str, flag: str, exc: OSError | zmq.ZMQError) -> StartError:
    """Name the endpoint that could not be bound, and the flag that picks another."""
    if not exc.errno:
        reason = str(exc)
    else:
        reason = zmq.strerror(exc.errno) if isinstance(exc, zmq.ZMQError) else os.strerror(exc.errno)
    in_use = exc.errno in (errno.EADDRINUSE, zmq.EADDRINUSE)
    hint = (f"is another coordinator (or another program) using it? Pick another with {flag}" if in_use
            else f"is the address one of this machine's? Pick another with {flag}")
    if what == "status page":
        hint += " ('' turns the page off)"
    return StartError(f"cannot bind the {what} {endpoint}: {reason}; {hint}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coordinator", description="Run the actorsched coordinator.")
    parser.add_argument("--config", help="TOML config file (default: built-in defaults; see configs/coordinator.toml)")
    parser.add_argument("--bind", help="client endpoint, tcp://HOST:PORT (overrides [endpoints] client_endpoint)")
    parser.add_argument("--worker-bind", help="tcp://HOST:PORT for workers (overrides [endpoints] worker_endpoint)")
    parser.add_argument("--state-dir", help="journal folder (overrides [journal] state_dir)")
    parser.add_argument("--no-journal", action="store_true", help="keep state in memory only (nothing survives)")
    parser.add_argument("--worker-timeout", type=float, help="seconds of silence before a worker is lost")
    parser.add_argument("--http", metavar="HOST:PORT", help="status page address, '' for none (overrides [http])")
    parser.add_argument("--log-level", choices=cfg.LOG_LEVELS, help="overrides [logging] level")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> cfg.CoordinatorConfig:
    config = cfg.load_coordinator_config(args.config)
    config = cfg.with_overrides(config, "endpoints", client_endpoint=args.bind, worker_endpoint=args.worker_bind)
    config = cfg.with_overrides(config, "journal", state_dir=args.state_dir,
                                enabled=False if args.no_journal else None)
    if args.worker_timeout is not None:
        live = config.liveness
        config = cfg.with_overrides(config, "liveness", worker_timeout_s=args.worker_timeout,
                                    suspect_after_s=min(live.suspect_after_s, args.worker_timeout),
                                    scan_interval_s=min(live.scan_interval_s, args.worker_timeout / 3),
                                    pause_threshold_s=min(live.pause_threshold_s, args.worker_timeout / 2))
    config = cfg.with_overrides(config, "logging", level=args.log_level)
    config = cfg.with_overrides(config, "http", endpoint=args.http)
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"coordinator: {exc}", file=sys.stderr)
        return 2
    logs.set_up(config.logging.level, config.logging.format, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    def on_standby(coordinator: Coordinator) -> None:
        assert coordinator.transport is not None
        print(f"coordinator standby clients={coordinator.transport.client_endpoint} "
              f"workers={coordinator.transport.worker_endpoint}", flush=True)

    try:
        coordinator = Coordinator(config, stop, on_standby)
    except Stopped:
        return 0
    except (JournalError, StartError, ConfigError) as exc:
        print(f"coordinator: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # our bug, but still a start that failed: everything is released by now
        log.exception("coordinator failed to start")
        print(f"coordinator: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    assert coordinator.transport is not None
    http = f" http={coordinator.http.endpoint}" if coordinator.http is not None else ""
    print(f"coordinator ready clients={coordinator.transport.client_endpoint} "
          f"workers={coordinator.transport.worker_endpoint} epoch={coordinator.epoch}{http}", flush=True)
    try:
        while not stop.wait(0.1) and not coordinator.supervisor.failed.is_set() and coordinator.leads():
            pass
    finally:
        stepped_down = not coordinator.leads()
        coordinator.stop()
        pykka.ActorRegistry.stop_all()
    if stepped_down:
        assert coordinator.lease is not None
        print(f"coordinator: stepped down: {coordinator.lease.reason or 'the lease ran out'}", file=sys.stderr)
        return EXIT_STEPPED_DOWN
    if coordinator.supervisor.failed.is_set():
        print(f"coordinator: stopped after an internal error: {coordinator.supervisor.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
