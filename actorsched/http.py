"""The coordinator's HTTP status port: health, JSON status and Prometheus metrics.

Read-only and loopback by default (``[http] endpoint``, empty to turn it off).  It is
the one place outside tests where the coordinator ``ask``s its actors: a status page
may wait a moment for an answer, the actors never wait for it.

``GET /healthz``  200 "ok" while the actors answer, 503 otherwise
``GET /status``   JSON: queue, worker and transport figures, and every worker
``GET /metrics``  the same figures in the Prometheus text format
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pykka

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 2.0


class StatusServer:
    def __init__(self, host: str, port: int, queue: pykka.ActorRef[Any], registry: pykka.ActorRef[Any],
                 transport_counters: dict[str, int]) -> None:
        self.queue = queue
        self.registry = registry
        self.transport_counters = transport_counters
        handler = type("Handler", (_Handler,), {"status": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="http-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> dict[str, Any]:
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


def prometheus(snapshot: dict[str, Any]) -> str:
    lines = ["# TYPE actorsched_tasks gauge"]
    queue = snapshot["queue"]
    for state, count in sorted(queue["states"].items()):
        lines.append(f'actorsched_tasks{{state="{state}"}} {count}')
    for name in ("submitted", "retries", "requeued_lost", "stale_outcomes", "rejected_batches", "purged"):
        lines += [f"# TYPE actorsched_{name}_total counter", f"actorsched_{name}_total {queue.get(name, 0)}"]
    lines += ["# TYPE actorsched_epoch gauge", f"actorsched_epoch {queue['epoch']}"]
    lines.append("# TYPE actorsched_worker_running gauge")
    for worker in snapshot["workers"]:
        labels = f'worker="{worker["worker_id"]}",state="{worker["state"]}",breaker="{worker["breaker"]}"'
        lines.append(f"actorsched_worker_running{{{labels}}} {worker['running']}")
        lines.append(f"actorsched_worker_slots{{{labels}}} {worker['slots']}")
        lines.append(f"actorsched_worker_load_score{{{labels}}} {worker['load_score']}")
    lines.append("# TYPE actorsched_transport_total counter")
    for name, value in sorted(snapshot["transport"].items()):
        lines.append(f'actorsched_transport_total{{event="{name}"}} {value}')
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    status: StatusServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        path = self.path.split("?", 1)[0]
        if path not in ("/healthz", "/status", "/metrics"):
            self._reply(404, "text/plain", "not found: try /healthz, /status or /metrics\n")
            return
        try:
            snapshot = self.status.snapshot()
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            self._reply(503, "text/plain", f"coordinator not answering: {type(exc).__name__}\n")
            return
        if path == "/healthz":
            self._reply(200, "text/plain", "ok\n")
        elif path == "/status":
            self._reply(200, "application/json", json.dumps(snapshot, indent=2, default=str) + "\n")
        else:
            self._reply(200, "text/plain; version=0.0.4", prometheus(snapshot))

    def _reply(self, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("http %s", format % args)
