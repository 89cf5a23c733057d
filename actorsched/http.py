"""The coordinator's HTTP status port: health, JSON status and Prometheus metrics.

Read-only and loopback by default (``[http] endpoint``, empty to turn it off).  It is
the one place outside tests where the coordinator ``ask``s its actors: a status page
may wait a moment for an answer, the actors never wait for it.

``GET /healthz``  200 "ok" while the actors answer, 503 otherwise
``GET /status``   JSON: queue, worker and transport figures, and every worker
``GET /metrics``  the same figures and the measured distributions, in the Prometheus
                  text format (rendered by ``prometheus_client``, see
                  :mod:`actorsched.coordinator.metrics`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import selectors
import socket
import threading
import time
from http import HTTPStatus
from queue import SimpleQueue
from typing import Any

import pykka

from actorsched.coordinator import metrics

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 2.0
HANDLER_THREADS = 2
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192


class StatusServer:
    """One selector thread reads requests, ``HANDLER_THREADS`` threads answer them.

    A connection costs a thread only once its whole request head has arrived, so idle or
    trickling connections hold nothing but a socket, and only for ``REQUEST_TIMEOUT_S``;
    at most ``MAX_CONNECTIONS`` wait at once (a new one closes the oldest waiting), and a
    reply that the peer does not take within ``REPLY_TIMEOUT_S`` is abandoned.  So the
    page costs a fixed number of threads and answers a client that asks promptly, however
    many others connect and say nothing.
    """

    def __init__(self, host: str, port: int) -> None:
        """Bind the port now, serve only from :meth:`start`.

        The coordinator binds every port before it starts an actor or raises the
        journal's epoch, so a port in use fails the start with nothing to undo but
        sockets; an ``OSError`` here names no endpoint, so the caller names it.
        """
        self.queue: pykka.ActorRef[Any] | None = None
        self.registry: pykka.ActorRef[Any] | None = None
        self.transport_counters: dict[str, int] = {}
        address = host.strip("[]")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.create_server((address, port), family=family)
        self._listener.setblocking(False)
        self.endpoint = f"http://{host}:{self._listener.getsockname()[1]}"
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

    def start(self, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any],
              transport_counters: dict[str, int]) -> None:
        """Serve the page from the actors that now run."""
        self.queue = queue
        self.registry = registry
        self.transport_counters = transport_counters
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
        request_line = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
            return _reply(400, "text/plain", "bad request\n")
        method, target, _ = request_line
        log.debug("http %s %s", method, target)
        if method != "GET":
            return _reply(405, "text/plain", "only GET is served\n")
        path = target.split("?", 1)[0]
        if path not in ("/healthz", "/status", "/metrics"):
            return _reply(404, "text/plain", "not found: try /healthz, /status or /metrics\n")
        try:
            snapshot = self.snapshot()
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            return _reply(503, "text/plain", f"coordinator not answering: {type(exc).__name__}\n")
        if path == "/healthz":
            return _reply(200, "text/plain", "ok\n")
        if path == "/status":
            return _reply(200, "application/json", json.dumps(snapshot, indent=2, default=str) + "\n")
        try:
            measured: Any = self.queue.ask("metrics", timeout=ASK_TIMEOUT_S)  # type: ignore[union-attr]
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            return _reply(503, "text/plain", f"coordinator not answering: {type(exc).__name__}\n")
        return _reply(200, metrics.CONTENT_TYPE, metrics.render(snapshot, measured).decode())


def _reply(code: int, content_type: str, body: str) -> bytes:
    data = body.encode()
    head = (f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + data
