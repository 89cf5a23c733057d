"""Coordinator wiring and entry point: config in, actors started, run until a signal.

:class:`Coordinator` builds the actors and the transport and connects them; it is
also what tests use to run a coordinator inside their own process.  :func:`main`
is the thin command-line entry point behind ``bin/coordinator``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from typing import Any

import pykka
import zmq

from actorsched import config as cfg
from actorsched import logs
from actorsched.coordinator.dispatcher import DispatcherActor
from actorsched.coordinator.failure_detector import FailureDetectorActor
from actorsched.coordinator.journal import Journal, JournalError
from actorsched.coordinator.registry import RegistryActor
from actorsched.coordinator.supervision import SupervisedActor, Supervisor
from actorsched.coordinator.task_queue import TaskQueueActor
from actorsched.coordinator.transport import Transport
from actorsched.errors import ActorschedError, ConfigError
from actorsched.http import StatusServer

log = logging.getLogger(__name__)


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

    def __init__(self, config: cfg.CoordinatorConfig) -> None:
        self.config = config
        self.journal: Journal | None = None
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
        if config.journal.enabled:
            self.journal = Journal(config.journal.state_dir, config.journal.fsync)
            self.epoch = self.journal.open()
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
        if self.journal is not None:
            self.journal.commit_epoch()
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
        transport.connect(self.queue, self.registry)
        transport.start()
        if self.http is not None:
            self.http.start(self.queue, self.registry, transport.counters)
        log.info("coordinator started epoch=%d clients=%s workers=%s", self.epoch,
                 transport.client_endpoint, transport.worker_endpoint)

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
        if self._actors:
            log.info("coordinator stopped")
        else:  # never started: do not read as if a running coordinator (perhaps another one) stopped
            log.info("coordinator start abandoned; everything it had taken is released")


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
    try:
        coordinator = Coordinator(config)
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
        while not stop.wait(0.2) and not coordinator.supervisor.failed.is_set():
            pass
    finally:
        coordinator.stop()
        pykka.ActorRegistry.stop_all()
    if coordinator.supervisor.failed.is_set():
        print(f"coordinator: stopped after an internal error: {coordinator.supervisor.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
