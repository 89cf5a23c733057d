"""The ``actorsched`` command: submit, list, inspect, wait for and cancel tasks from a shell.

A thin shell over :class:`actorsched.client.Client`: parse argv, connect, make one
call, print.  Exit codes: 0 ok; 1 a task failed, was cancelled or is unknown (or
nothing was cancelled); 2 a usage error, a connection error (a refused CURVE key included:
its message names the key file and the coordinator's folder it belongs in) or a wait
that timed out; 141 the output's reader stopped early (``| head``), quietly.
Expected errors print one line on stderr, never a traceback, naming the command
(``actorsched status: ...``).  Before its command each invocation checks, within ~2 s
(``--connect-timeout`` when given), that something completes a ZeroMQ handshake at the
coordinator's address, so a coordinator that is not running (or a wrong port) is named
at once rather than after the 10 s an answer may take.

Arguments of ``submit`` are JSON (a string is ``'"text"'``); one that is not is a usage
error showing how to quote it.  ``wait`` draws a progress bar (:class:`Progress`) on a
terminal and writes a plain line at most every few seconds otherwise.

No worker, no progress: ``stats`` warns on stderr (stdout, ``--json`` included, is
unchanged) when tasks wait (WAITING, QUEUED, RETRYING) and no worker is connected,
the dashboard's rule on the same figures; ``wait`` and ``result`` warn once while their
tasks are unfinished and no worker is connected (again if workers came and left),
asking the coordinator when they start and then every :data:`WORKER_CHECK_S` seconds.
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from actorsched import security
from actorsched.client import CLIENT_KEY_ENV, FINAL_STATES, SERVER_KEY_ENV, Client, TaskHandle
from actorsched.config import (
    COORDINATOR_ENV,
    DEFAULT_CLIENT_ENDPOINT,
    DEFAULT_WORKER_ENDPOINT,
    check_endpoints,
    default_client_endpoint,
    is_loopback_host,
    parse_endpoint,
)
from actorsched.core.states import TaskState
from actorsched.errors import ActorschedError, ConfigError, ConnectionFailed, SubmitRejected, Timeout
from actorsched.protocol import MAX_LIST_LIMIT, TaskInfo

EXIT_OK = 0
EXIT_TASK = 1
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141
"""The output's reader stopped reading (``| head``): 128 + SIGPIPE, what a shell reports for a command it kills."""
_BAD_STATES = ("FAILED", "CANCELLED", "NOT_FOUND")
_FAILED_STATES = ("FAILED", "CANCELLED")
REACH_TIMEOUT_S = 2.0
"""How long a command waits for a connection to the coordinator before it says none is there."""
_STATES = tuple(state.value for state in TaskState)
WORKER_CHECK_S = 5.0
"""While ``wait`` and ``result`` wait, how often they ask the coordinator whether a worker is connected."""
_STRANDED_STATES = ("QUEUED", "RETRYING", "WAITING")
"""States of tasks that wait for a worker to run them (the dashboard's no-worker banner counts the same)."""


class _UsageError(ActorschedError):
    """A command-line value that parsed but makes no sense; exit code 2."""


# --------------------------------------------------------------------------- output helpers


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, sort_keys=False)


def _parse_value(text: str, what: str) -> Any:
    """``text`` parsed as JSON; a usage error showing how to quote a string if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _UsageError(
            f"{what} {text!r} is not valid JSON ({exc.msg} at column {exc.colno}); arguments are JSON, so a "
            f"string goes in double quotes inside the shell's quotes: {shlex.quote(json.dumps(text))}") from None


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
        kwargs[key] = _parse_value(text, f"--kw {key}")
    spec = {"name": args.name, "args": [_parse_value(a, f"argument {i}") for i, a in enumerate(args.args, 1)],
            "kwargs": kwargs, "priority": args.priority, "task_id": args.id, "deps": args.dep or [],
            "timeout_s": args.timeout_s, "max_attempts": args.max_attempts, "retry_on": args.retry_on or [],
            "tags": args.tag or []}
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
        if info.output:
            rows.append(("output", f"{len(info.output.encode())} bytes (actorsched logs {info.task_id})"))
        for key, value in rows:
            print(f"{key:<9} {value}", file=out)
        for record in info.history:
            started = time.strftime("%H:%M:%S", time.localtime(record.started_at))
            error = f" {record.error.type}: {record.error.message}" if record.error is not None else ""
            print(f"attempt {record.attempt}: {record.outcome} on {record.worker_id or '-'} at {started}, "
                  f"{record.ended_at - record.started_at:.3f} s{error}", file=out)
    if info.state == "NOT_FOUND":
        print(f"actorsched status: task {info.task_id!r} is not known to the coordinator at {client.endpoint}",
              file=err)
        return EXIT_TASK
    return EXIT_TASK if info.state in _FAILED_STATES else EXIT_OK


def _cmd_result(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    handle = client.handle(args.id)
    alarm = _NoWorkerAlarm(client, "actorsched result", lambda text: print(text, file=err, flush=True))
    try:
        _wait_all(client, [handle], args.timeout, lambda _: None, alarm)
    except Timeout:
        print(f"actorsched result: task {args.id!r} is not finished after {args.timeout} s; it keeps running "
              f"(see: actorsched status {args.id})", file=err)
        return EXIT_ERROR
    info = handle.info()
    if args.json:
        print(_dumps(dataclasses.asdict(info)), file=out)
    elif info.state == "SUCCEEDED":
        print(_dumps(info.value), file=out)
    if info.state == "SUCCEEDED":
        return EXIT_OK
    print(f"actorsched result: task {info.task_id!r} {info.state}: {_error_text(info)}", file=err)
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
    print(f"actorsched cancel: nothing cancelled: task {args.id!r}: {reason}", file=err)
    return EXIT_TASK


def _cmd_wait(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    handles = [client.handle(task_id) for task_id in dict.fromkeys(args.ids)]
    progress = Progress(len(handles), err)
    alarm = _NoWorkerAlarm(client, "actorsched wait", progress.note)
    timed_out = False

    def finished(handle: TaskHandle) -> None:
        state = handle.status()
        progress.update(failed=state in _FAILED_STATES, not_found=state == "NOT_FOUND")

    try:
        _wait_all(client, handles, args.timeout, finished, alarm)
    except Timeout:
        timed_out = True
    progress.close()
    pending = [h.task_id for h in handles if not h.done()] if timed_out else []
    current = dict(zip(pending, client.query_many(pending), strict=True))
    infos = [current.get(h.task_id) or h.info() for h in handles]
    if args.json:
        print(_dumps([dataclasses.asdict(i) for i in infos]), file=out)
    else:
        for info in infos:
            print(_task_line(info) if info.state in FINAL_STATES else f"{info.task_id} {info.state} (not finished)",
                  file=out)
    if progress.not_found:
        unknown = [i.task_id for i in infos if i.state == "NOT_FOUND"]
        shown = ", ".join(repr(t) for t in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        print(f"actorsched wait: {len(unknown)} id(s) not known to the coordinator at {client.endpoint} (NOT_FOUND): "
              f"{shown}", file=err)
    if timed_out:
        print(f"actorsched wait: {len(handles) - progress.done} of {len(handles)} task(s) not finished after "
              f"{args.timeout} s; they keep running", file=err)
        return EXIT_ERROR
    return EXIT_TASK if progress.failed or progress.not_found else EXIT_OK


_TASK_COLUMNS = ("id", "state", "name", "attempt", "worker", "age")


def _age(updated_at: float, now: float) -> str:
    if updated_at <= 0:
        return "-"
    seconds = max(0.0, now - updated_at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}" if seconds >= 10 * size else f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def _cmd_tasks(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    listing = client.list_tasks(state=args.state, name=args.name, worker=args.worker, id_prefix=args.id,
                                limit=args.limit)
    if args.json:
        print(_dumps([dataclasses.asdict(info) for info in listing]), file=out)
    else:
        now = time.time()
        rows = [_TASK_COLUMNS] + [(i.task_id, i.state, i.name, str(i.attempt), i.worker_id or "-",
                                   _age(i.updated_at, now)) for i in listing]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_TASK_COLUMNS))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
        if not listing:
            print("(no tasks)", file=out)
    if listing.cut:
        print("actorsched tasks: the coordinator stopped searching its journal at its bound; older tasks may "
              "match too: narrow the search with --state, --name, --worker or --id", file=err)
    return EXIT_OK


def _cmd_logs(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    info = client.query(args.id)
    if info.state == "NOT_FOUND":
        print(f"actorsched logs: task {info.task_id!r} is not known to the coordinator at {client.endpoint}; "
              f"check the id (actorsched tasks lists recent ones)", file=err)
        return EXIT_TASK
    if args.json:
        print(_dumps({"task_id": info.task_id, "state": info.state, "attempt": info.attempt,
                      "output": info.output}), file=out)
        return EXIT_OK
    if info.output:
        out.write(info.output)
        if not info.output.endswith("\n"):
            out.write("\n")
        out.flush()
    elif info.state in FINAL_STATES or info.history:
        print(f"(task {info.task_id} is {info.state}; its last attempt wrote nothing to stdout or stderr)", file=err)
    else:
        print(f"(task {info.task_id} is {info.state}; what it writes shows here once an attempt ends)", file=err)
    return EXIT_OK


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
    else:
        pairs: list[tuple[str, Any]] = []
        _flatten("", stats, pairs)
        for key, value in pairs:
            print(f"{key}: {value}", file=out)
    figures = _worker_figures(stats)
    if figures is not None and figures.workers == 0 and figures.stranded:
        out.flush()  # the counters first, then the warning below them on a terminal
        print(f"actorsched stats: warning: {figures.stranded_text()} and no worker is connected to the coordinator "
              f"at {client.endpoint}; nothing runs until one connects: {_start_worker_hint(client.endpoint)}",
              file=err)
    return EXIT_OK


def _cmd_purge(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    purged = client.purge(args.older_than)
    if args.json:
        print(_dumps({"purged": purged}), file=out)
    else:
        print(f"purged {purged} finished task(s)", file=out)
    return EXIT_OK


Command = Callable[[Client, argparse.Namespace, TextIO, TextIO], int]


# --------------------------------------------------------------------------- no worker connected


@dataclasses.dataclass(frozen=True)
class _WorkerFigures:
    """What ``Client.stats()`` says about workers and the tasks waiting for one."""

    workers: int
    registered: int
    """Registrations the coordinator counted since it started: a change means workers came (and maybe went)."""
    waiting: dict[str, int]
    """Tasks in each of :data:`_STRANDED_STATES` that has any."""

    @property
    def stranded(self) -> int:
        return sum(self.waiting.values())

    def stranded_text(self) -> str:
        """``12 task(s) waiting (QUEUED 10, RETRYING 2)``."""
        parts = ", ".join(f"{state} {n}" for state, n in self.waiting.items())
        return f"{self.stranded} task(s) waiting ({parts})"


def _worker_figures(stats: Any) -> _WorkerFigures | None:
    """The figures from a ``stats()`` answer, or None if it lacks them (then nothing is said)."""
    if not isinstance(stats, dict):
        return None
    workers, queue = stats.get("workers"), stats.get("queue")
    if not isinstance(workers, dict) or not isinstance(queue, dict):
        return None
    count, registered, states = workers.get("workers"), workers.get("registered"), queue.get("states")
    if type(count) is not int or not isinstance(states, dict):
        return None
    waiting = {state: n for state in _STRANDED_STATES if type(n := states.get(state, 0)) is int and n > 0}
    return _WorkerFigures(count, registered if type(registered) is int else -1, waiting)


def _start_worker_hint(client_endpoint: str) -> str:
    """How to start a worker for the coordinator at ``client_endpoint``.

    Workers connect to the coordinator's worker endpoint, which clients do not learn: on
    the default client port the default worker port is shown, elsewhere a placeholder.
    """
    base, _, port = client_endpoint.rpartition(":")
    default_client_port = DEFAULT_CLIENT_ENDPOINT.rpartition(":")[2]
    default_worker_port = DEFAULT_WORKER_ENDPOINT.rpartition(":")[2]
    if port == default_client_port:
        return (f"start one with `actorsched-worker --connect {base}:{default_worker_port}` (the coordinator's "
                f"worker endpoint by default; its --worker-bind if it has one)")
    return (f"start one with `actorsched-worker --connect {base}:PORT`, PORT the coordinator's worker port "
            f"(its --worker-bind; {default_worker_port} by default)")


class _NoWorkerAlarm:
    """Says, through ``say``, that tasks being waited for cannot run because no worker is connected.

    Once per episode: after a warning it stays quiet while the coordinator has no worker
    and has counted no new registration; a worker seen connected, or registrations counted
    since (workers came and left between two checks), start a new episode.  :meth:`check`
    costs one ``stats()``, plus a ``query_many()`` of the unfinished ids when a warning is
    about to be given (their own states, not the whole queue's, decide it).
    """

    def __init__(self, client: Client, prefix: str, say: Callable[[str], None], every_s: float = WORKER_CHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.prefix = prefix
        self.say = say
        self.every_s = every_s
        self.clock = clock
        self.next_at = -math.inf
        self._warned = False
        self._registered = -1

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def check(self, pending: Sequence[TaskHandle]) -> None:
        """Ask the coordinator now, and warn if ``pending`` tasks wait with no worker to run them."""
        try:
            self._check(pending)
        finally:
            self.next_at = self.clock() + self.every_s

    def _check(self, pending: Sequence[TaskHandle]) -> None:
        if not pending:
            return
        figures = _worker_figures(self.client.stats())
        if figures is None:
            return
        if figures.workers:
            self._warned = False
            return
        if not figures.stranded or (self._warned and figures.registered == self._registered):
            return
        infos = [i for i in self.client.query_many([h.task_id for h in pending]) if i.state not in FINAL_STATES]
        if not infos:
            return
        self._warned, self._registered = True, figures.registered
        if len(infos) == 1:
            what = f"task {infos[0].task_id!r} is {infos[0].state}"
        else:
            counts = collections.Counter(i.state for i in infos)
            what = f"{len(infos)} task(s) are unfinished ({', '.join(f'{s} {n}' for s, n in counts.items())})"
        self.say(f"{self.prefix}: warning: {what} and no worker is connected to the coordinator at "
                 f"{self.client.endpoint}; still waiting, but nothing runs until one connects: "
                 f"{_start_worker_hint(self.client.endpoint)}")


def _wait_all(client: Client, handles: Sequence[TaskHandle], timeout: float | None,
              finished: Callable[[TaskHandle], None], alarm: _NoWorkerAlarm) -> None:
    """Wait until every handle's task is final, calling ``finished`` for each as it is; Timeout past ``timeout``.

    ``client.as_completed`` blocks until a task is reported final, and with no worker
    none is: so it waits in slices that end when the alarm is due (every few seconds),
    and the alarm checks between slices, and between reports when they keep coming.
    Each slice watches the unfinished tasks afresh; a task that ended in between is
    reported by the new watch at once.
    """
    pending = {h.task_id: h for h in handles}
    deadline = None if timeout is None else time.monotonic() + timeout
    alarm.check(list(pending.values()))
    while pending:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise Timeout(f"{len(pending)} of {len(handles)} task(s) not final within {timeout} s")
        until = alarm.next_at if deadline is None else min(alarm.next_at, deadline)
        try:
            for handle in client.as_completed(list(pending.values()), timeout=max(until - now, 0.01)):
                pending.pop(handle.task_id, None)
                finished(handle)
                if pending and alarm.due():
                    alarm.check(list(pending.values()))
        except Timeout:
            pass  # the slice's end, not necessarily the deadline: checked above
        if pending and alarm.due():
            alarm.check(list(pending.values()))


# --------------------------------------------------------------------------- progress


class Progress:
    """``done/total`` on ``stream``: a bar redrawn in place on a terminal, plain lines otherwise.

    On a terminal (``stream.isatty()``, or ``live=True``) one line is redrawn with
    ``\\r`` at most every ``redraw_s`` (0.1 s): a bar, done/total, percent, the rate
    over the last ``window_s`` seconds, the ETA at that rate, failures so far.  Elsewhere
    (a file, a pipe, a CI log) a full line is written every ``every_s`` seconds at most
    (the first after ``every_s``), and one at the end: a log stays readable and short.
    """

    def __init__(self, total: int, stream: TextIO, live: bool | None = None, what: str = "tasks",
                 clock: Callable[[], float] = time.monotonic, redraw_s: float = 0.1, every_s: float = 5.0,
                 window_s: float = 10.0) -> None:
        self.total = total
        self.stream = stream
        self.live = _isatty(stream) if live is None else live
        self.what = what
        self.clock = clock
        self.interval = redraw_s if self.live else every_s
        self.window_s = window_s
        self.done = self.failed = self.not_found = 0
        self.started = clock()
        self._shown_at = -math.inf if self.live else self.started  # a first plain line only after every_s
        self._shown_done = -1
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])
        self._drawn = False  # a bar is on the terminal's current line

    def update(self, count: int = 1, failed: bool = False, not_found: bool = False) -> None:
        """``count`` more finished (failed, or unknown ids), redrawn if it is time."""
        self.done += count
        self.failed += count if failed else 0
        self.not_found += count if not_found else 0
        now = self.clock()
        if now - self._shown_at >= self.interval:
            self._show(now)

    def note(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if self.live and self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        if self.live and self._drawn:
            self._draw(self.clock())
        self.stream.flush()

    def close(self) -> None:
        """The final figures: the bar ends its line, or a last plain line (unless one says it all)."""
        now = self.clock()
        if self.live:
            self._draw(now)
            self.stream.write("\n")
            self._drawn = False
        elif self._shown_done != self.done:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def rate(self, now: float) -> float:
        """Finished per second over the last ``window_s`` seconds (since the start, at first)."""
        samples = self._samples
        samples.append((now, self.done))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        then, done_then = samples[0]
        return (self.done - done_then) / (now - then) if now > then else 0.0

    def line(self, now: float) -> str:
        """The figures as one line: ``120/3000 done, 2 failed, 812 tasks/s, ETA 0:04, 0:01 elapsed``."""
        rate = self.rate(now)
        parts = [f"{self.done}/{self.total} done", f"{self.failed} failed"]
        if self.not_found:
            parts.append(f"{self.not_found} not found")
        parts.append(f"{rate:,.0f} {self.what}/s")
        if self.done < self.total:
            parts.append(f"ETA {_clock_text((self.total - self.done) / rate) if rate > 0 else '?'}")
        parts.append(f"{_clock_text(now - self.started)} elapsed")
        return ", ".join(parts)

    def _show(self, now: float) -> None:
        if self.live:
            self._draw(now)
        else:
            self.stream.write(self.line(now) + "\n")
        self._shown_at = now
        self._shown_done = self.done
        self.stream.flush()

    def _draw(self, now: float) -> None:
        fraction = self.done / self.total if self.total else 1.0
        text = f" {fraction:4.0%} {self.line(now)}"
        width = max(10, min(40, _columns(self.stream) - len(text) - 3))
        filled = int(round(width * fraction))
        self.stream.write(f"\r[{'#' * filled}{'-' * (width - filled)}]{text}\x1b[K")
        self._drawn = True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80


def _clock_text(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour)."""
    if not math.isfinite(seconds) or seconds > 99 * 3600:
        return "?"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _curve_hint(args: argparse.Namespace) -> str:
    """What else "no answer" may mean.

    A handshake the coordinator refused (key not accepted, keys missing) or hung up on
    (wrong coordinator key) is named by the client itself, and its error does not start
    with "no answer"; this covers what the socket monitor cannot see.  A client without
    keys is not told a key may have been refused; but pointed beyond loopback, where a
    coordinator admits only CURVE peers, it is told it needs keys (a firewall that drops
    the packets leaves no handshake to report).
    """
    server_key = args.server_key or os.environ.get(SERVER_KEY_ENV, "")
    key = args.key or os.environ.get(CLIENT_KEY_ENV, "")
    if server_key and key:
        return (f". Or it refused this client's CURVE keys: check that the public half of {key} (NAME.key) is "
                f"in the coordinator's [security] client_keys_dir, and that {server_key} is the coordinator's key")
    endpoints = check_endpoints(args.coordinator or default_client_endpoint(), "--coordinator")
    if not key and not all(is_loopback_host(parse_endpoint(e, "--coordinator")[0]) for e in endpoints):
        return (". A coordinator listening beyond loopback admits only CURVE clients: pass --server-key and "
                "--key (or set $ACTORSCHED_SERVER_KEY and $ACTORSCHED_CLIENT_KEY)")
    return ""


COORDINATOR_KEY_NAME = "coordinator"
"""The NAME ``keygen`` takes for the coordinator's own pair (the name the README and the operations guide use)."""


def keygen_message(name: str, public: object, secret: object) -> str:
    """Where the two halves of a new pair go, which depends on whose pair it is.

    The coordinator's public key goes to every worker and client (they check that they
    talk to the right coordinator); a worker's or a client's goes the other way, into the
    coordinator's allowlist.  Whose it is comes from NAME alone: ``coordinator`` is the
    coordinator's (see ``actorsched keygen --help``), anything else a worker's or a client's.
    """
    if name == COORDINATOR_KEY_NAME:
        return (f"public key (copy it to every worker and client: their --server-key, [connection] "
                f"server_public_key_file or ${SERVER_KEY_ENV}): {public}\n"
                f"secret key (keep it on the coordinator's host: its [security] secret_key_file): {secret}")
    return (f"public key (copy it into the coordinator's [security] worker_keys_dir for a worker, or "
            f"client_keys_dir for a client): {public}\n"
            f"secret key (keep it: the worker's --key / [connection] secret_key_file, or the client's --key / "
            f"${CLIENT_KEY_ENV}): {secret}\n"
            f"(a worker's or a client's pair; the coordinator's own is the one named '{COORDINATOR_KEY_NAME}')")


# --------------------------------------------------------------------------- parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _state(text: str) -> str:
    if text.upper() not in _STATES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(_STATES)}, got {text!r}")
    return text.upper()


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_LIST_LIMIT}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actorsched", description="Submit and inspect actorsched tasks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG messages on stderr")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("--coordinator", metavar="tcp://HOST:PORT[,...]",
                        help=f"coordinator client endpoint, or a leader and its standbys separated by commas "
                             f"(default: ${COORDINATOR_ENV} or {DEFAULT_CLIENT_ENDPOINT})")
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
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="positional arguments, each JSON: 5, [1, 2], '\"a string\"'")
    p.add_argument("--priority", type=int, default=0, help="smaller runs first (default 0)")
    p.add_argument("--id", default=None, help="task id (default: a random uuid); resubmitting an id is a no-op")
    p.add_argument("--kw", action="append", metavar="KEY=VALUE", help="keyword argument, VALUE JSON (repeatable)")
    p.add_argument("--timeout-s", type=float, default=None, help="task timeout in seconds (0: none)")
    p.add_argument("--max-attempts", type=int, default=None, help="attempts before the task FAILS")
    p.add_argument("--dep", action="append", metavar="ID", help="a task that must succeed first (repeatable)")
    p.add_argument("--retry-on", action="append", metavar="ERROR",
                   help="retry only failures of this exception type, e.g. ConnectionError (repeatable)")
    p.add_argument("--tag", action="append", metavar="TAG", help="a tag of the task (repeatable)")
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

    p = sub.add_parser("tasks", parents=[common, connect], help="list tasks, newest first")
    p.add_argument("--state", type=_state, default=None, metavar="STATE",
                   help=f"only tasks in this state: {', '.join(_STATES)}")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="only this task name, its function part (echo) or a shell pattern ('*.tasks:e*')")
    p.add_argument("--worker", default=None, metavar="ID", help="only tasks whose last attempt ran on this worker")
    p.add_argument("--id", default=None, metavar="PREFIX", help="only tasks whose id starts with PREFIX")
    p.add_argument("--limit", type=_limit, default=100, metavar="K",
                   help=f"at most K tasks (default 100, at most {MAX_LIST_LIMIT:,})")
    p.set_defaults(run=_cmd_tasks)

    p = sub.add_parser("logs", parents=[common, connect],
                       help="print what a task wrote to stdout and stderr (its last attempt)")
    p.add_argument("id")
    p.set_defaults(run=_cmd_logs)

    p = sub.add_parser("workers", parents=[common, connect], help="list workers")
    p.set_defaults(run=_cmd_workers)
    p = sub.add_parser("stats", parents=[common, connect], help="show coordinator counters")
    p.set_defaults(run=_cmd_stats)
    p = sub.add_parser("purge", parents=[common, connect],
                       help="forget finished tasks (memory and journal) to reclaim space")
    p.add_argument("--older-than", type=float, default=0.0, metavar="S",
                   help="only tasks that finished at least S seconds ago (default 0: every finished task)")
    p.set_defaults(run=_cmd_purge)
    p = sub.add_parser("keygen", help="write a CURVE key pair DIR/NAME.key and DIR/NAME.key_secret",
                       description="Write a CURVE key pair DIR/NAME.key (public) and DIR/NAME.key_secret. "
                                   f"NAME {COORDINATOR_KEY_NAME!r} makes the coordinator's own pair (its public "
                                   "key goes to workers and clients); any other NAME a worker's or a client's "
                                   "(its public key goes into the coordinator's worker_keys_dir or client_keys_dir).")
    p.add_argument("dir")
    p.add_argument("name", help=f"{COORDINATOR_KEY_NAME!r} for the coordinator's pair, else the worker's or "
                                f"client's name (a worker key NAME lets it register as NAME or NAME-...)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing pair (peers holding the old public key are then refused)")
    p.set_defaults(run=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 task failed or not found, 2 error, 141 output cut).

    Output piped into a reader that stops early (``actorsched tasks | head``) ends the
    command quietly with 141, the status of a shell command killed by SIGPIPE (128 + 13),
    rather than with a BrokenPipeError traceback: the reader has all it wanted, and a
    script under ``set -o pipefail`` still sees that the output was cut, as it would for
    ``cat`` or ``grep``.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # what is still buffered breaks here, not in the interpreter's exit
    except BrokenPipeError:
        _silence_broken_pipe()
        return EXIT_BROKEN_PIPE
    return code


def _silence_broken_pipe() -> None:
    """Point stdout and stderr at /dev/null: the interpreter flushes them at exit, and a flush into the
    closed pipe would print "Exception ignored ... BrokenPipeError" after all."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (AttributeError, OSError, ValueError):  # not a file (a test's capture): nothing flushed at exit
                pass
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
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
            print(f"actorsched keygen: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(keygen_message(args.name, public, secret))
        return EXIT_OK
    given_timeout = args.connect_timeout or getattr(args, "connect_timeout_alias", None)
    run: Command = args.run
    prefix = f"actorsched {args.command}"
    try:
        with Client(args.coordinator, timeout_s=given_timeout or 10.0, server_key_file=args.server_key,
                    key_file=args.key) as client:
            client.wait_connected(given_timeout or REACH_TIMEOUT_S)
            return run(client, args, sys.stdout, sys.stderr)
    except ConnectionFailed as exc:
        silent = str(exc).startswith(("no answer", "no connection"))  # rather than a Refused with its reason
        print(f"{prefix}: {exc}{_curve_hint(args) if silent else ''}", file=sys.stderr)
        return EXIT_ERROR
    except (ConfigError, SubmitRejected, _UsageError) as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ActorschedError as exc:
        print(f"{prefix}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
