"""The ``actorsched`` command: submit, inspect, wait for and cancel tasks from a shell.

A thin shell over :class:`actorsched.client.Client`: parse argv, connect, make one
call, print.  Exit codes: 0 ok; 1 a task failed, was cancelled or is unknown (or
nothing was cancelled); 2 a usage error, a connection error (a refused CURVE key included:
its message names the key file and the coordinator's folder it belongs in) or a wait
that timed out.
Expected errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from actorsched import security
from actorsched.client import CLIENT_KEY_ENV, FINAL_STATES, SERVER_KEY_ENV, Client
from actorsched.config import (
    COORDINATOR_ENV,
    DEFAULT_CLIENT_ENDPOINT,
    default_client_endpoint,
    is_loopback_host,
    parse_endpoint,
)
from actorsched.errors import ActorschedError, ConfigError, ConnectionFailed, SubmitRejected, Timeout
from actorsched.protocol import TaskInfo

EXIT_OK = 0
EXIT_TASK = 1
EXIT_ERROR = 2
_BAD_STATES = ("FAILED", "CANCELLED", "NOT_FOUND")


class _UsageError(ActorschedError):
    """A command-line value that parsed but makes no sense; exit code 2."""


# --------------------------------------------------------------------------- output helpers


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, sort_keys=False)


def _parse_value(text: str) -> Any:
    """JSON if ``text`` is valid JSON, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_text(info: TaskInfo) -> str:
    if info.error is not None:
        return f"{info.error.type}: {info.error.message}"
    return {"NOT_FOUND": "no such task", "CANCELLED": "cancelled"}.get(info.state, "")


def _task_line(info: TaskInfo) -> str:
    if info.state == "SUCCEEDED":
        return f"{info.task_id} SUCCEEDED {_dumps(info.value)}"
    return f"{info.task_id} {info.state} {_error_text(info)}".rstrip()


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value, key=str):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    else:
        out.append((prefix, value))


# --------------------------------------------------------------------------- commands


def _cmd_submit(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    kwargs: dict[str, Any] = {}
    for item in args.kw or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--kw must look like KEY=VALUE, got {item!r}")
        kwargs[key] = _parse_value(text)
    spec = {"name": args.name, "args": [_parse_value(a) for a in args.args], "kwargs": kwargs,
            "priority": args.priority, "task_id": args.id, "deps": args.dep or [],
            "timeout_s": args.timeout_s, "max_attempts": args.max_attempts}
    (handle,) = client.submit_many([spec])
    print(_dumps({"task_id": handle.task_id}) if args.json else handle.task_id, file=out)
    return EXIT_OK


def _cmd_status(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    info = client.query(args.id)
    if args.json:
        print(_dumps(dataclasses.asdict(info)), file=out)
    elif info.state == "NOT_FOUND":
        print(f"{info.task_id} NOT_FOUND", file=out)
    else:
        rows = [("task_id", info.task_id), ("state", info.state), ("name", info.name),
                ("priority", info.priority), ("attempts", info.attempt), ("worker", info.worker_id or "-")]
        if info.error is not None:
            rows.append(("error", _error_text(info)))
        if info.state == "SUCCEEDED":
            rows.append(("value", _dumps(info.value)))
        for key, value in rows:
            print(f"{key:<9} {value}", file=out)
        for record in info.history:
            started = time.strftime("%H:%M:%S", time.localtime(record.started_at))
            error = f" {record.error.type}: {record.error.message}" if record.error is not None else ""
            print(f"attempt {record.attempt}: {record.outcome} on {record.worker_id or '-'} at {started}, "
                  f"{record.ended_at - record.started_at:.3f} s{error}", file=out)
    if info.state == "NOT_FOUND":
        print(f"actorsched: task {info.task_id!r} is not known to the coordinator at {client.endpoint}", file=err)
        return EXIT_TASK
    return EXIT_OK


def _cmd_result(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    handle = client.handle(args.id)
    try:
        for _ in client.as_completed([handle], timeout=args.timeout):
            pass
    except Timeout:
        print(f"actorsched: task {args.id!r} is not finished after {args.timeout} s; it keeps running "
              f"(see: actorsched status {args.id})", file=err)
        return EXIT_ERROR
    info = handle.info()
    if args.json:
        print(_dumps(dataclasses.asdict(info)), file=out)
    elif info.state == "SUCCEEDED":
        print(_dumps(info.value), file=out)
    if info.state == "SUCCEEDED":
        return EXIT_OK
    print(f"actorsched: task {info.task_id!r} {info.state}: {_error_text(info)}", file=err)
    return EXIT_TASK


def _cmd_cancel(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cancelled = client.cancel_many([args.id], cascade=not args.no_cascade)
    if args.json:
        print(_dumps({"cancelled": cancelled}), file=out)
    for task_id in [] if args.json else cancelled:
        print(f"cancelled {task_id}", file=out)
    if cancelled:
        return EXIT_OK
    info = client.query(args.id)
    if info.state == "NOT_FOUND":
        reason = "it is not known to the coordinator"
    elif info.state in ("SUCCEEDED", "FAILED", "CANCELLED"):
        reason = f"it is already {info.state}"
    elif args.no_cascade:
        reason = f"it is {info.state} and unfinished tasks depend on it; drop --no-cascade to cancel them too"
    else:
        reason = f"it is {info.state}; its worker did not confirm the cancel in time, see `actorsched status`"
    print(f"actorsched: nothing cancelled: task {args.id!r}: {reason}", file=err)
    return EXIT_TASK


def _cmd_wait(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    handles = [client.handle(task_id) for task_id in dict.fromkeys(args.ids)]
    live = err.isatty()
    done = failed = 0

    def progress(end: str) -> None:
        text = f"{done}/{len(handles)} done" + (f", {failed} failed" if failed else "")
        print(f"\r{text}" if live else text, end=end, file=err, flush=True)

    timed_out = False
    try:
        for handle in client.as_completed(handles, timeout=args.timeout):
            done += 1
            failed += handle.status() in _BAD_STATES
            if live:
                progress("")
    except Timeout:
        timed_out = True
    if live or timed_out or failed:
        progress("\n")
    pending = [h.task_id for h in handles if not h.done()] if timed_out else []
    current = dict(zip(pending, client.query_many(pending), strict=True))
    infos = [current.get(h.task_id) or h.info() for h in handles]
    if args.json:
        print(_dumps([dataclasses.asdict(i) for i in infos]), file=out)
    else:
        for info in infos:
            print(_task_line(info) if info.state in FINAL_STATES else f"{info.task_id} {info.state} (not finished)",
                  file=out)
    if timed_out:
        print(f"actorsched: {len(handles) - done} of {len(handles)} task(s) not finished after {args.timeout} s; "
              f"they keep running", file=err)
        return EXIT_ERROR
    return EXIT_TASK if failed else EXIT_OK


_WORKER_COLUMNS = ("id", "host", "pid", "slots", "running", "load", "state", "breaker", "heartbeat_age")


def _cmd_workers(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    workers = client.workers()
    if args.json:
        print(_dumps([dataclasses.asdict(w) for w in workers]), file=out)
        return EXIT_OK
    rows = [_WORKER_COLUMNS] + [
        (w.worker_id, w.host, str(w.pid), str(w.slots), str(w.running), f"{w.load_score:.2f}", w.state,
         w.breaker, f"{w.heartbeat_age_s:.1f}s") for w in workers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_WORKER_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
    if not workers:
        print("(no workers)", file=out)
    return EXIT_OK


def _cmd_stats(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stats = client.stats()
    if args.json:
        print(_dumps(stats), file=out)
        return EXIT_OK
    pairs: list[tuple[str, Any]] = []
    _flatten("", stats, pairs)
    for key, value in pairs:
        print(f"{key}: {value}", file=out)
    return EXIT_OK


def _cmd_purge(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    purged = client.purge(args.older_than)
    if args.json:
        print(_dumps({"purged": purged}), file=out)
    else:
        print(f"purged {purged} finished task(s)", file=out)
    return EXIT_OK


Command = Callable[[Client, argparse.Namespace, TextIO, TextIO], int]


def _curve_hint(args: argparse.Namespace) -> str:
    """What else "no answer" may mean.

    A handshake the coordinator refused (key not accepted, keys missing) or hung up on
    (wrong coordinator key) is named by the client itself, and its error does not start
    with "no answer"; this covers what the socket monitor cannot see, like a firewall
    that drops the packets of a coordinator that only admits CURVE peers.
    """
    server_key = args.server_key or os.environ.get(SERVER_KEY_ENV, "")
    key = args.key or os.environ.get(CLIENT_KEY_ENV, "")
    if server_key and key:
        return (f". Or it refused this client's CURVE keys: check that the public half of {key} (NAME.key) is "
                f"in the coordinator's [security] client_keys_dir, and that {server_key} is the coordinator's key")
    host, _ = parse_endpoint(args.coordinator or default_client_endpoint(), "--coordinator")
    if not is_loopback_host(host):
        return (". A coordinator listening beyond loopback admits only CURVE clients: pass --server-key and "
                "--key (or set $ACTORSCHED_SERVER_KEY and $ACTORSCHED_CLIENT_KEY)")
    return ""


# --------------------------------------------------------------------------- parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actorsched", description="Submit and inspect actorsched tasks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG messages on stderr")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("--coordinator", metavar="tcp://HOST:PORT",
                        help=f"coordinator client endpoint (default: ${COORDINATOR_ENV} or {DEFAULT_CLIENT_ENDPOINT})")
    common.add_argument("--connect-timeout", type=_positive_float, default=None, metavar="S",
                        help="seconds to wait for the coordinator to answer (default 10)")
    common.add_argument("--server-key", metavar="FILE", default=None,
                        help="coordinator's public CURVE key (default: $ACTORSCHED_SERVER_KEY)")
    common.add_argument("--key", metavar="FILE", default=None,
                        help="this client's CURVE NAME.key_secret (default: $ACTORSCHED_CLIENT_KEY)")
    connect = argparse.ArgumentParser(add_help=False)
    connect.add_argument("--timeout", type=_positive_float, dest="connect_timeout_alias", default=None,
                         metavar="S", help="seconds to wait for the coordinator to answer (default 10)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # No --timeout here: on submit it would read as the task's timeout (that is --timeout-s).
    p = sub.add_parser("submit", parents=[common], help="submit one task and print its id")
    p.add_argument("name", help="task function as package.module:function")
    p.add_argument("args", nargs="*", metavar="ARG", help="positional arguments (JSON if valid, else strings)")
    p.add_argument("--priority", type=int, default=0, help="smaller runs first (default 0)")
    p.add_argument("--id", default=None, help="task id (default: a random uuid); resubmitting an id is a no-op")
    p.add_argument("--kw", action="append", metavar="KEY=VALUE", help="keyword argument (repeatable)")
    p.add_argument("--timeout-s", type=float, default=None, help="task timeout in seconds (0: none)")
    p.add_argument("--max-attempts", type=int, default=None, help="attempts before the task FAILS")
    p.add_argument("--dep", action="append", metavar="ID", help="a task that must succeed first (repeatable)")
    p.set_defaults(run=_cmd_submit)

    p = sub.add_parser("status", parents=[common, connect], help="show a task's state")
    p.add_argument("id")
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser("result", parents=[common], help="wait for a task and print its value as JSON")
    p.add_argument("id")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                   help="give up waiting after S seconds (exit 2); the task keeps running")
    p.set_defaults(run=_cmd_result)

    p = sub.add_parser("cancel", parents=[common, connect], help="cancel a task (and its dependents)")
    p.add_argument("id")
    p.add_argument("--no-cascade", action="store_true",
                   help="leave the task alone if unfinished tasks depend on it (by default they go with it)")
    p.set_defaults(run=_cmd_cancel)

    p = sub.add_parser("wait", parents=[common], help="wait for tasks, showing progress")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                   help="give up waiting after S seconds (exit 2); the tasks keep running")
    p.set_defaults(run=_cmd_wait)

    p = sub.add_parser("workers", parents=[common, connect], help="list workers")
    p.set_defaults(run=_cmd_workers)
    p = sub.add_parser("stats", parents=[common, connect], help="show coordinator counters")
    p.set_defaults(run=_cmd_stats)
    p = sub.add_parser("purge", parents=[common, connect],
                       help="forget finished tasks (memory and journal) to reclaim space")
    p.add_argument("--older-than", type=float, default=0.0, metavar="S",
                   help="only tasks that finished at least S seconds ago (default 0: every finished task)")
    p.set_defaults(run=_cmd_purge)
    p = sub.add_parser("keygen", help="write a CURVE key pair DIR/NAME.key and DIR/NAME.key_secret")
    p.add_argument("dir")
    p.add_argument("name")
    p.add_argument("--force", action="store_true",
                   help="replace an existing pair (peers holding the old public key are then refused)")
    p.set_defaults(run=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 task failed or not found, 2 error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "keygen":
        try:
            public, secret = security.generate(args.dir, args.name, replace=args.force)
        except ConfigError as exc:
            print(f"actorsched: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"public key (hand it to the coordinator's allowlist): {public}\nsecret key (keep it): {secret}")
        return EXIT_OK
    connect_timeout = args.connect_timeout or getattr(args, "connect_timeout_alias", None) or 10.0
    run: Command = args.run
    try:
        with Client(args.coordinator, timeout_s=connect_timeout, server_key_file=args.server_key,
                    key_file=args.key) as client:
            return run(client, args, sys.stdout, sys.stderr)
    except ConnectionFailed as exc:
        silent = str(exc).startswith("no answer")  # rather than a Refused with its reason
        print(f"actorsched: {exc}{_curve_hint(args) if silent else ''}", file=sys.stderr)
        return EXIT_ERROR
    except (ConfigError, SubmitRejected, _UsageError) as exc:
        print(f"actorsched: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ActorschedError as exc:
        print(f"actorsched: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("actorsched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
