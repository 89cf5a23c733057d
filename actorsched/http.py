"""The coordinator's HTTP status port: dashboard, health, JSON status and Prometheus metrics.

Read-only and loopback by default (``[http] endpoint``, empty to turn it off).  It is
the one place outside tests where the coordinator ``ask``s its actors: a status page
may wait a moment for an answer, the actors never wait for it.

``GET /``, ``/dashboard``  the live dashboard (static files shipped in ``actorsched/dashboard``;
                  the browser polls the JSON below about once a second)
``GET /healthz``  200 "ok" while the actors answer, 503 otherwise
``GET /status``   JSON: queue, worker and transport figures, and every worker
``GET /metrics``  the same figures and the measured distributions, in the Prometheus
                  text format (rendered by ``prometheus_client``, see
                  :mod:`actorsched.coordinator.metrics`)
``GET /api/overview``  JSON: /status plus the queue's cumulative histograms and outcome
                  counts (the browser turns successive ones into rates and charts)
``GET /api/tasks?state=&name=&worker=&id=&limit=``  JSON: light task rows, newest first
``GET /api/task/<id>``  JSON: one task's spec, state, attempts, value, error and output

Access: with ``[http] token_file`` every request must carry the token (``Authorization:
Bearer``, or ``?token=`` once, which a browser keeps as a cookie); without it the page
binds loopback only and answers only requests addressed to a loopback name, so a web
page elsewhere cannot read it through DNS rebinding.
"""

from __future__ import annotations

import dataclasses
import hmac
import importlib.resources
import json
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from queue import SimpleQueue
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pykka

from actorsched.config import is_loopback_host, split_host_port
from actorsched.coordinator import events as ev
from actorsched.coordinator import metrics
from actorsched.core.queue import all_deps
from actorsched.core.states import TaskState

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 2.0
HANDLER_THREADS = 2
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192
TASK_ROWS_DEFAULT = 100
TASK_ROWS_MAX = 1000
VALUE_PREVIEW_CHARS = 64 * 1024  # a task's args, kwargs or value bigger than this as JSON is shown cut
OUTPUT_PREVIEW_CHARS = 256 * 1024  # a task's captured output is shown up to this, its end kept
FILTER_MAX_CHARS = 256

_ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_STATES = [state.value for state in TaskState]


class StatusServer:
    """One selector thread reads requests, ``HANDLER_THREADS`` threads answer them.

    A connection costs a thread only once its whole request head has arrived, so idle or
    trickling connections hold nothing but a socket, and only for ``REQUEST_TIMEOUT_S``;
    at most ``MAX_CONNECTIONS`` wait at once (a new one closes the oldest waiting), and a
    reply that the peer does not take within ``REPLY_TIMEOUT_S`` is abandoned.  So the
    page costs a fixed number of threads and answers a client that asks promptly, however
    many others connect and say nothing.
    """

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        """Bind the port now, serve only from :meth:`start`.

        The coordinator binds every port before it starts an actor or raises the
        journal's epoch, so a port in use fails the start with nothing to undo but
        sockets; an ``OSError`` here names no endpoint, so the caller names it.
        ``token``: every request must carry it (see :meth:`_access`); None leaves the page
        open to requests addressed to loopback.
        """
        self.token = token.encode() if token is not None else None
        self.assets = _load_assets()
        self.queue: pykka.ActorRef[Any] | None = None
        self.registry: pykka.ActorRef[Any] | None = None
        self.transport_counters: dict[str, int] = {}
        address = host.strip("[]")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.create_server((address, port), family=family)
        self._listener.setblocking(False)
        self.endpoint = f"http://{host}:{self._listener.getsockname()[1]}"
        self._cookie = f"actorsched_token_{self._listener.getsockname()[1]}"  # cookies ignore ports; names do not
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._waiting: dict[socket.socket, tuple[float, bytearray]] = {}  # oldest first: (deadline, head so far)
        self._requests: SimpleQueue[tuple[socket.socket, bytes] | None] = SimpleQueue()
        self._stopping = False
        self._threads = [threading.Thread(target=self._read_loop, name="http-status", daemon=True)] + [
            threading.Thread(target=self._answer_loop, name=f"http-status-{i}", daemon=True)
            for i in range(HANDLER_THREADS)]
        self._standby: Callable[[], str] | None = None

    def start(self, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any],
              transport_counters: dict[str, int]) -> None:
        """Serve the page from the actors that now run."""
        self.queue = queue
        self.registry = registry
        self.transport_counters = transport_counters
        if self._standby is None:
            self._start_threads()

    def stand_by(self, leader: Callable[[], str]) -> None:
        """Until :meth:`start`, answer every request 503 with ``leader()``, who leads instead (for a standby)."""
        self._standby = leader
        self._start_threads()

    def _start_threads(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Close the port and end the threads; safe on a server bound but never started, and twice."""
        if self._stopping:
            return
        self._stopping = True
        self._wake_write.send(b"x")
        for _ in range(HANDLER_THREADS):
            self._requests.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(ASK_TIMEOUT_S * 2 + REPLY_TIMEOUT_S)
        for conn in list(self._waiting):
            self._drop(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()

    def snapshot(self) -> dict[str, Any]:
        assert self.queue is not None and self.registry is not None, "answers come only after start()"
        queue = self.queue.ask("stats", timeout=ASK_TIMEOUT_S)
        workers: Any = self.registry.ask("infos", timeout=ASK_TIMEOUT_S)
        for _ in range(3):  # the transport thread may add a counter while we copy
            try:
                transport = dict(self.transport_counters)
                break
            except RuntimeError:
                continue
        else:
            transport = {}
        return {"queue": queue, "transport": transport, "workers": [dataclasses.asdict(w) for w in workers]}

    # ------------------------------------------------------------- reading requests

    def _read_loop(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for conn, (deadline, _) in list(self._waiting.items()):
                if deadline > now:
                    break  # oldest first, so the rest are younger
                log.debug("http connection closed: no whole request within %s s", REQUEST_TIMEOUT_S)
                self._drop(conn)
            timeout_s = next(iter(self._waiting.values()))[0] - now if self._waiting else None
            for key, _ in self._selector.select(timeout_s):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is not self._wake_read:
                    self._read(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if len(self._waiting) + self._requests.qsize() >= MAX_CONNECTIONS:
            if not self._waiting:  # every place holds a request awaiting its answer: refuse this one
                conn.close()
                return
            log.debug("http connection closed: %d others open", MAX_CONNECTIONS)
            self._drop(next(iter(self._waiting)))
        conn.setblocking(False)
        self._waiting[conn] = (time.monotonic() + REQUEST_TIMEOUT_S, bytearray())
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        waiting = self._waiting.get(conn)
        if waiting is None:  # closed by an accept earlier in this turn
            return
        head = waiting[1]
        try:
            data = conn.recv(MAX_REQUEST_BYTES - len(head))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        head += data
        if b"\r\n\r\n" in head or b"\n\n" in head or len(head) >= MAX_REQUEST_BYTES:
            self._selector.unregister(conn)
            del self._waiting[conn]
            self._requests.put((conn, bytes(head)))

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._waiting[conn]
        conn.close()

    # ------------------------------------------------------------- answering

    def _answer_loop(self) -> None:
        while (item := self._requests.get()) is not None:
            conn, head = item
            try:
                if not self._stopping:
                    conn.settimeout(REPLY_TIMEOUT_S)  # sendall's timeout bounds the whole reply
                    conn.sendall(self._answer(head))
            except OSError as exc:  # the peer went away or would not take the reply
                log.debug("http reply abandoned: %s", exc)
            except Exception:  # our bug: loud, and the page stays up for the next request
                log.exception("http status page failed to answer")
            finally:
                conn.close()

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").splitlines()
        request_line = lines[0].split() if lines else []
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
            return _reply(400, "text/plain", "bad request\n")
        method, target, _ = request_line
        log.debug("http %s %s", method, target)
        if method != "GET":
            return _reply(405, "text/plain", "only GET is served\n")
        url = urlsplit(target)
        path, query = url.path, parse_qs(url.query)
        refused = self._access(path, url.query, _headers(lines[1:]))
        if refused is not None:
            return refused
        if self.queue is None and self._standby is not None:
            return _reply(503, "text/plain", f"standby: this coordinator does not lead; {self._standby()}\n")
        if path in ("/", "/dashboard"):
            return self._asset("index.html")
        if path == "/dashboard/":  # the page's links are relative to /dashboard
            return _reply(301, "text/plain", "moved to /dashboard\n", {"Location": "/dashboard"})
        if path.startswith("/dashboard/"):
            return self._asset(path.removeprefix("/dashboard/"))
        try:
            if path.startswith("/api/"):
                try:
                    return self._api(path, query)
                except (pykka.ActorDeadError, pykka.Timeout):
                    raise
                except Exception as exc:  # an ask that failed in the actor (our bug): say so, stay up
                    log.exception("http %s failed", path)
                    return _json(500, {"error": f"the coordinator failed to answer: {type(exc).__name__}: {exc}"})
            if path not in ("/healthz", "/status", "/metrics"):
                return _reply(404, "text/plain", "not found: try /, /healthz, /status, /metrics or /api/overview\n")
            snapshot = self.snapshot()
            if path == "/healthz":
                return _reply(200, "text/plain", "ok\n")
            if path == "/status":
                return _reply(200, "application/json", json.dumps(snapshot, indent=2, default=str) + "\n")
            measured: Any = self.queue.ask("metrics", timeout=ASK_TIMEOUT_S)  # type: ignore[union-attr]
            return _reply(200, metrics.CONTENT_TYPE, metrics.render(snapshot, measured))
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            return _reply(503, "text/plain", f"coordinator not answering: {type(exc).__name__}\n")

    # ------------------------------------------------------------- access

    def _access(self, path: str, query: str, headers: dict[str, str]) -> bytes | None:
        """None if the request may be answered, else the reply that refuses it.

        Without a token the page is loopback-only, and answers only requests whose Host
        names loopback: a page on another site that rebinds its DNS name to 127.0.0.1
        would otherwise read it with the user's browser.  With a token every request
        carries it as ``Authorization: Bearer TOKEN`` (scripts, Prometheus), in the
        cookie, or once as ``?token=TOKEN``: then the reply sets the cookie (HttpOnly,
        SameSite=Strict) and redirects to the same address without the token, so the
        token does not stay in the address bar or the history of every later page.
        Tokens are compared in constant time.
        """
        if self.token is None:
            host = headers.get("host")
            if host is None or _is_loopback_authority(host):
                return None
            return _reply(403, "text/plain", f"this page answers only requests addressed to loopback (127.0.0.1, "
                                             f"localhost, [::1]), not {host[:100]!r}; to serve it beyond loopback "
                                             f"set [http] token_file\n")
        params = [part.partition("=") for part in query.split("&") if part]
        given = [unquote(value) for key, _, value in params if key == "token"]  # a + in a token stays a +
        if given:
            if not self._valid(given[-1]):
                return self._unauthorized("the ?token= given is wrong")
            rest = "&".join(f"{key}{sep}{value}" for key, sep, value in params if key != "token")
            location = "/" + path.lstrip("/") + (f"?{rest}" if rest else "")  # never //host
            return _reply(303, "text/plain", "token accepted\n", {
                "Location": location,
                "Set-Cookie": f"{self._cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"})
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return None if self._valid(credentials.strip()) else self._unauthorized("the bearer token is wrong")
        cookie = _cookies(headers.get("cookie", "")).get(self._cookie)
        if cookie is not None:
            return None if self._valid(cookie) else self._unauthorized("the token cookie is out of date")
        return self._unauthorized("no token given")

    def _valid(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode("latin-1", "replace"), self.token)

    @staticmethod
    def _unauthorized(why: str) -> bytes:
        return _reply(401, "text/plain", f"401: {why}. This page needs the token in [http] token_file: send "
                                         f"'Authorization: Bearer TOKEN', or open /?token=TOKEN once in a browser\n",
                      {"WWW-Authenticate": 'Bearer realm="actorsched"'})

    # ------------------------------------------------------------- dashboard

    def _asset(self, name: str) -> bytes:
        asset = self.assets.get(name)
        if asset is None:
            if name == "index.html":
                return _reply(404, "text/plain", "the dashboard's files are not installed with this package "
                                                 "(actorsched/dashboard); /status and /metrics still answer\n")
            return _reply(404, "text/plain", "not found\n")
        content_type, body = asset
        return _reply(200, content_type, body, {"Cache-Control": "no-cache", "Content-Security-Policy": _CSP,
                                                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})

    def _api(self, path: str, query: dict[str, list[str]]) -> bytes:
        """The dashboard's JSON; asks raise pykka errors, answered 503 by the caller."""
        assert self.queue is not None
        if path == "/api/overview":
            snapshot = self.snapshot()
            measured: Any = self.queue.ask("metrics", timeout=ASK_TIMEOUT_S)
            return _json(200, {"time": time.time(), **snapshot, "metrics": _compact_metrics(measured)})
        if path == "/api/tasks":
            params = {key: values[-1].strip()[:FILTER_MAX_CHARS] for key, values in query.items()}
            state = params.get("state", "").upper()
            if state and state not in _STATES:
                return _json(400, {"error": f"state must be one of {', '.join(_STATES)}, got {state!r}"})
            try:
                limit = int(params.get("limit") or TASK_ROWS_DEFAULT)
            except ValueError:
                return _json(400, {"error": f"limit must be an integer, got {params['limit']!r}"})
            limit = max(1, min(limit, TASK_ROWS_MAX))
            rows: Any = self.queue.ask(ev.ListTasks(state or None, params.get("name") or None,
                                                    params.get("worker") or None, params.get("id") or None, limit),
                                       timeout=ASK_TIMEOUT_S)
            return _json(200, {"time": time.time(), "limit": limit, "cut": bool(getattr(rows, "cut", False)),
                               "tasks": [_row(row) for row in rows]})
        if path.startswith("/api/task/"):
            task_id = unquote(path.removeprefix("/api/task/"))
            answer: Any = self.queue.ask(ev.TaskDetail(task_id), timeout=ASK_TIMEOUT_S)
            spec, info = answer
            detail = _task_detail(spec, info)
            return _json(404 if info.state == "NOT_FOUND" else 200, detail)
        return _json(404, {"error": "not found: try /api/overview, /api/tasks or /api/task/<id>"})


def _load_assets() -> dict[str, tuple[str, bytes]]:
    """The dashboard's files by name, read once: (content type, bytes).  Empty if not installed."""
    assets: dict[str, tuple[str, bytes]] = {}
    try:
        folder = importlib.resources.files("actorsched").joinpath("dashboard")
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _ASSET_TYPES:
                assets[entry.name] = (_ASSET_TYPES[suffix], entry.read_bytes())
    except (OSError, ModuleNotFoundError) as exc:
        log.warning("the dashboard's files cannot be read (%s); / will answer 404", exc)
    return assets


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _cookies(header: str) -> dict[str, str]:
    cookies = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            cookies[name] = value.strip('"')
    return cookies


def _is_loopback_authority(authority: str) -> bool:
    """Whether a Host header (``HOST[:PORT]``) names this machine's loopback."""
    address = split_host_port(authority)
    return is_loopback_host(address[0] if address is not None else authority)


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it: non-finite floats and unknown types as text, keys as strings."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


def _preview(value: Any, limit: int = VALUE_PREVIEW_CHARS) -> Any:
    """``value`` for the page, or the start of its JSON text if that is longer than ``limit``."""
    value = _plain(value)
    text = json.dumps(value)
    if len(text) <= limit:
        return value
    return {"clipped": f"{len(text)} characters of JSON, the first {limit} shown", "preview": text[:limit]}


def _tail(text: Any, limit: int = OUTPUT_PREVIEW_CHARS) -> Any:
    if isinstance(text, str) and len(text) > limit:
        return f"[... {len(text) - limit} earlier characters not shown]\n" + text[-limit:]
    return _plain(text)


def _row(info: Any) -> dict[str, Any]:
    """A listing's row as JSON: what the table shows (light rows carry no value, output or history)."""
    error = info.error
    return {"task_id": info.task_id, "state": info.state, "name": info.name, "priority": info.priority,
            "attempt": info.attempt, "worker_id": info.worker_id, "updated_at": _plain(info.updated_at),
            "error": {"type": error.type, "message": error.message} if error is not None else None}


def _task_detail(spec: Any, info: Any) -> dict[str, Any]:
    task = dataclasses.asdict(info)
    task["value"] = _preview(task.get("value"))
    if "output" in task:
        task["output"] = _tail(task["output"])
    detail: dict[str, Any] = {"time": time.time(), "task": _plain(task), "spec": None}
    if spec is not None:
        spec_dict = dataclasses.asdict(spec)
        spec_dict["all_deps"] = list(all_deps(spec))  # deps and the tasks whose results its arguments take
        spec_dict["args"] = _preview(spec_dict["args"])
        spec_dict["kwargs"] = _preview(spec_dict["kwargs"])
        detail["spec"] = _plain(spec_dict)
    return detail


def _compact_metrics(measured: dict[str, Any]) -> dict[str, Any]:
    """The queue's ``metrics`` ask as JSON: each histogram as finite bounds ``le``, cumulative ``n``, sum."""
    def histogram(h: dict[str, Any] | None) -> dict[str, Any] | None:
        if h is None:
            return None
        bounds = [bound for bound, _ in h["buckets"]]
        return {"le": [b for b in bounds if math.isfinite(b)], "n": [n for _, n in h["buckets"]],
                "sum": h["sum"], "count": h["count"]}
    return {"queue_wait": histogram(measured.get("queue_wait")), "latency": histogram(measured.get("latency")),
            "journal_commit": histogram(measured.get("journal_commit")),
            "run_time": {name: histogram(h) for name, h in (measured.get("run_time") or {}).items()},
            "outcomes": measured.get("outcomes") or {}}


def _json(code: int, body: Any) -> bytes:
    return _reply(code, "application/json", json.dumps(body, separators=(",", ":"), default=str),
                  {"Cache-Control": "no-store"})


def _reply(code: int, content_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nX-Content-Type-Options: nosniff\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + data
