"""Entry point of the worker process: ``main(argv)`` parses flags, loads config, runs the loop.

Thin by design: argv and the TOML file become one validated :class:`WorkerConfig`,
logging is configured here (and only here), and SIGTERM/SIGINT handlers only count
stop requests and wake the event loop through a wake-up fd.  Exit codes: 0 after a
clean drain, 1 after a forced stop (second signal) or an unexpected error, 2 for a
config error or when the coordinator refuses the worker's registration (``Refused``).
A CURVE handshake the coordinator refuses (its key not allowed) does not end the
worker: it logs the refusal with the fix and keeps trying, so adding the key to the
coordinator's worker_keys_dir lets it in without a restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from actorsched import logs, security
from actorsched.config import LOG_LEVELS, WorkerConfig, load_worker_config, with_overrides
from actorsched.errors import ConfigError
from actorsched.worker.connection import EXIT_FORCED, StopRequests, WorkerConnection

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker", description="Run an actorsched worker: connect to a coordinator and run tasks.",
    )
    parser.add_argument("--config", metavar="PATH", help="worker TOML file (default: built-in defaults)")
    parser.add_argument("--connect", metavar="tcp://HOST:PORT[,...]",
                        help="coordinator worker endpoint, or every coordinator's separated by commas "
                             "(overrides [connection] coordinator)")
    parser.add_argument("--slots", type=int, metavar="N", help="child processes (0 = one per CPU)")
    parser.add_argument("--worker-id", metavar="ID", help="stable worker id (default: HOST-PID)")
    parser.add_argument("--tag", action="append", metavar="TAG",
                        help="placement tag; repeat for several (replaces [worker] tags)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="overrides [logging] level")
    parser.add_argument("--server-key", metavar="FILE",
                        help="coordinator's public CURVE key (overrides [connection] server_public_key_file)")
    parser.add_argument("--key", metavar="FILE",
                        help="this worker's CURVE NAME.key_secret (overrides [connection] secret_key_file)")
    return parser


def load_config(args: argparse.Namespace) -> WorkerConfig:
    """The config file (or defaults) with each flag applied on top, key files read; raises ConfigError."""
    config = load_worker_config(args.config)
    config = with_overrides(config, "connection", source="--connect", coordinator=args.connect)
    config = with_overrides(config, "connection", source="--server-key/--key",
                            server_public_key_file=args.server_key, secret_key_file=args.key)
    config = with_overrides(config, "worker", source="--slots", slots=args.slots)
    config = with_overrides(config, "worker", source="--worker-id", worker_id=args.worker_id)
    config = with_overrides(config, "worker", source="--tag", tags=args.tag)
    config = with_overrides(config, "logging", source="--log-level", level=args.log_level)
    # Read the keys now, so a wrong file is a config error before any socket or child exists.
    conn = config.connection
    if conn.server_public_key_file:
        security.load_public(conn.server_public_key_file, "--server-key / [connection] server_public_key_file")
    if conn.secret_key_file:
        security.load_keypair(conn.secret_key_file, "--key / [connection] secret_key_file")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    logs.set_up(config.logging.level, config.logging.format,
                "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s")
    stop_requests = StopRequests()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requests.request()

    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_wakeup = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    try:
        return WorkerConnection(config, stop_requests, wakeup_fd=wakeup_read).run()
    except Exception:
        log.exception("worker stopped by an unexpected error")
        return EXIT_FORCED
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wakeup_read)
        os.close(wakeup_write)
