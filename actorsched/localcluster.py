"""A coordinator and workers as real processes on this machine, for demos, tests and benchmarks.

``LocalCluster`` starts the coordinator (``python -m actorsched.coordinator``, the same
``main`` as the ``actorsched-coordinator`` command and ``bin/coordinator``) on free
loopback ports, reads the endpoints it prints, starts workers (``python -m
actorsched.worker``) against it, and on ``stop()`` ends every process it started, by PID,
escalating from SIGTERM to SIGKILL.  It is a context manager so that a failing test or an
interrupted demo still cleans up.

It needs only the installed package, not a checkout: the processes run as modules of
``python`` (the current interpreter by default).  From a source checkout they run in the
checkout's root with it on ``PYTHONPATH``, as ``bin/*`` do, so that ``bench`` and
``tests`` modules are importable as tasks; an installed package runs them in the
caller's working directory (or ``cwd``).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actorsched.errors import ActorschedError

ROOT = Path(__file__).resolve().parent.parent
"""The folder that holds the ``actorsched`` package: a source checkout's root, or site-packages once installed."""
BIN = ROOT / "bin"
"""The checkout's launchers (``bin/coordinator``, ``bin/worker``); they do not exist in an installed package."""
FROM_CHECKOUT = (ROOT / "pyproject.toml").is_file()
"""Whether this package is imported from a source checkout (an editable install included)."""
COORDINATOR_MODULE = "actorsched.coordinator"
WORKER_MODULE = "actorsched.worker"


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class LocalCluster:
    """Processes of one local cluster.  Use as ``with LocalCluster(...) as cluster:``."""

    workers: int = 2
    slots: int = 2
    state_dir: str | None = None
    coordinator_args: list[str] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)
    log_dir: str | None = None
    python: str = sys.executable
    cwd: str | None = None
    """Working directory of the processes: default the checkout's root, or the caller's once installed."""
    client_endpoint: str = ""
    worker_endpoint: str = ""
    http_endpoint: str = ""
    coordinator: subprocess.Popen[bytes] | None = None
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _worker_count: int = 0

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ processes

    def start(self) -> None:
        if self.state_dir is None or self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="actorsched-")
            self.state_dir = self.state_dir or os.path.join(self._tmp.name, "state")
            self.log_dir = self.log_dir or self._tmp.name
        os.makedirs(self.log_dir, exist_ok=True)
        self.start_coordinator()
        for _ in range(self.workers):
            self.add_worker()

    def start_coordinator(self, timeout_s: float = 20.0) -> None:
        """Start (or restart) the coordinator on the same endpoints and state_dir."""
        bind = self.client_endpoint or "tcp://127.0.0.1:0"
        worker_bind = self.worker_endpoint or "tcp://127.0.0.1:0"
        assert self.log_dir is not None and self.state_dir is not None
        log = open(os.path.join(self.log_dir, "coordinator.log"), "ab")
        self.coordinator = subprocess.Popen(
            [self.python, "-m", COORDINATOR_MODULE, "--bind", bind, "--worker-bind", worker_bind,
             "--state-dir", self.state_dir, "--http", self.http_endpoint or "127.0.0.1:0", *self.coordinator_args],
            stdout=subprocess.PIPE, stderr=log, cwd=self._cwd(), env=self._env(),
        )
        log.close()
        line = _read_line(self.coordinator, timeout_s)
        if line.startswith("coordinator standby"):  # PostgreSQL backend: it stands by until it wins the lease
            line = _read_line(self.coordinator, timeout_s)
        if not line.startswith("coordinator ready"):
            self.coordinator.kill()
            self.coordinator.wait(10)
            raise ActorschedError(f"coordinator did not start: {line!r}; see {self.log_dir}/coordinator.log")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        self.client_endpoint = fields["clients"]
        self.worker_endpoint = fields["workers"]
        self.http_endpoint = fields.get("http", "").removeprefix("http://")

    def add_worker(self, *extra_args: str, slots: int | None = None,
                   env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker; ``env`` adds environment variables for it alone."""
        assert self.log_dir is not None
        self._worker_count += 1
        worker_id = f"worker-{self._worker_count}"
        log = open(os.path.join(self.log_dir, f"{worker_id}.log"), "ab")
        proc = subprocess.Popen(
            [self.python, "-m", WORKER_MODULE, "--connect", self.worker_endpoint,
             "--slots", str(slots or self.slots), "--worker-id", worker_id, *self.worker_args, *extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=self._cwd(), env=self._env(env),
        )
        log.close()
        self.worker_procs.append(proc)
        return proc

    def _cwd(self) -> str | None:
        if self.cwd is not None:
            return self.cwd
        return str(ROOT) if FROM_CHECKOUT else None

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process: ours, the checkout first on PYTHONPATH (as ``bin/*`` put it), ``extra``."""
        env = dict(os.environ)
        if FROM_CHECKOUT:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(extra or {})
        return env

    def kill_coordinator(self, sig: int = signal.SIGKILL) -> None:
        assert self.coordinator is not None
        self.coordinator.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.coordinator.wait(30)

    def stop(self) -> None:
        """End every process this cluster started: SIGTERM, then SIGKILL after a grace period."""
        procs = [p for p in [*self.worker_procs, self.coordinator] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)  # a SIGSTOPped process cannot act on SIGTERM
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_text(self, name: str = "coordinator") -> str:
        assert self.log_dir is not None
        path = Path(self.log_dir) / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, timeout_s: float = 10.0) -> Any:
        from actorsched.client import Client

        return Client(self.client_endpoint, timeout_s=timeout_s)

    def wait_for_workers(self, client: Any, count: int, timeout_s: float = 30.0) -> list[Any]:
        found: list[Any] = []

        def enough() -> bool:
            found[:] = client.workers()
            return len(found) >= count

        wait_until(enough, timeout_s, f"{count} workers to register")
        return found


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout_s):
            return f"no output within {timeout_s} s"
        return proc.stdout.readline().decode(errors="replace").strip()
    finally:
        selector.close()
