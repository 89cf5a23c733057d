"""Coordinator wiring and entry point: config in, actors started, run until a signal.

:class:`Coordinator` builds the actors and the transport and connects them; it is
also what tests use to run a coordinator inside their own process.  :func:`main`
is the thin command-line entry point behind ``bin/coordinator``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

import pykka

from actorsched import config as cfg
from actorsched.coordinator.dispatcher import DispatcherActor
from actorsched.coordinator.failure_detector import FailureDetectorActor
from actorsched.coordinator.journal import Journal, JournalError
from actorsched.coordinator.registry import RegistryActor
from actorsched.coordinator.supervision import SupervisedActor, Supervisor
from actorsched.coordinator.task_queue import TaskQueueActor
from actorsched.coordinator.transport import Transport
from actorsched.errors import ConfigError
from actorsched.http import StatusServer

log = logging.getLogger(__name__)


class Coordinator:
    """All coordinator actors, started and connected.  ``stop()`` tears them down."""

    def __init__(self, config: cfg.CoordinatorConfig) -> None:
        self.config = config
        self.journal: Journal | None = None
        self.epoch = 1
        if config.journal.enabled:
            self.journal = Journal(config.journal.state_dir, config.journal.fsync)
            self.epoch = self.journal.open()
        self.transport = Transport(config.endpoints, config.security)
        try:
            self.transport.bind()
        except Exception:
            self.transport.stop()
            if self.journal is not None:
                self.journal.close()
            raise
        self.supervisor = Supervisor()
        SupervisedActor.supervisor = self.supervisor  # one coordinator per process
        self.transport.supervisor = self.supervisor
        try:
            self.dispatcher = DispatcherActor.start(config.placement)
            self.registry = RegistryActor.start(config.liveness, config.placement, self.epoch, config.breaker)
            self.queue = TaskQueueActor.start(config.tasks, self.journal, self.epoch, config.journal)
            self.dispatcher.proxy().connect(self.queue, self.transport).get(timeout=30)
            self.registry.proxy().connect(self.queue, self.dispatcher, self.transport).get(timeout=30)
            self.queue.proxy().connect(self.dispatcher, self.transport, self.registry).get(timeout=30)
            self.failure_detector = FailureDetectorActor.start(config.liveness, self.queue, self.registry)
        except BaseException:
            # Half-started: stop what runs, or its threads would keep the process alive.
            pykka.ActorRegistry.stop_all(timeout=10)
            self.transport.stop()
            if self.journal is not None:
                self.journal.close()
            raise
        self.transport.connect(self.queue, self.registry)
        self.transport.start()
        self.http: StatusServer | None = None
        address = cfg.http_address(config.http.endpoint, "[http] endpoint")
        if address is not None:
            self.http = StatusServer(*address, self.queue, self.registry, self.transport.counters)
            self.http.start()
        log.info("coordinator started epoch=%d clients=%s workers=%s", self.epoch,
                 self.transport.client_endpoint, self.transport.worker_endpoint)

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
        self.transport.stop()  # no new input first, then the clock, then the actors
        for ref in (self.failure_detector, self.dispatcher, self.registry, self.queue):
            ref.stop(block=True, timeout=10)
        if self.journal is not None:
            self.journal.close()
        log.info("coordinator stopped")


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
    logging.basicConfig(level=config.logging.level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        coordinator = Coordinator(config)
    except JournalError as exc:
        print(f"coordinator: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bind failure names the endpoint; anything else is our bug
        if "Address already in use" in str(exc):
            print(f"coordinator: cannot bind {config.endpoints.client_endpoint} / "
                  f"{config.endpoints.worker_endpoint}: address already in use; is another coordinator "
                  f"running? Pick other ports with --bind / --worker-bind", file=sys.stderr)
            return 2
        raise
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
