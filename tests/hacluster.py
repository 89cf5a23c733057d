"""Several coordinators on one PostgreSQL journal, with workers and clients that know them all.

For the chaos tests (tests/chaos/test_ha.py) and bench/failover_ha.py.  Every coordinator
is a real ``python -m actorsched.coordinator`` process with its own fixed loopback ports
and ``[journal] backend = "postgresql"``; workers get every coordinator's worker endpoint
and clients every client endpoint, and follow the leader themselves.  What each
coordinator prints on stdout is read on a thread and kept with its time, so a test can
wait for "coordinator ready" (leading) and measure a takeover.  ``stop()`` ends every
process started here, by PID, even when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from actorsched.localcluster import FROM_CHECKOUT, ROOT, wait_until


def committed_rows(dsn: str) -> dict[str, tuple[str, list[Any], Any]]:
    """task_id -> (state, attempt history, value), read straight from the PostgreSQL journal's table."""
    import msgpack
    import psycopg

    with psycopg.connect(dsn) as db:
        rows = {}
        for task_id, state, result in db.execute("SELECT task_id, state, result FROM actorsched_tasks"):
            stored = msgpack.unpackb(result, raw=False) if result else [None, None, []]
            rows[task_id] = (state, stored[2], stored[0])
        return rows


def committed_successes(history: list[Any]) -> int:
    """Attempts of a stored history whose outcome is "succeeded" (more than one would be a double commit)."""
    return sum(1 for attempt in history if len(attempt) > 2 and attempt[2] == "succeeded")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CoordinatorProcess:
    """One coordinator: its ports, its process (restartable) and every line it printed, with times."""

    def __init__(self, index: int, config_path: Path, log_dir: Path, env: dict[str, str]) -> None:
        self.index = index
        self.client_port, self.worker_port = free_port(), free_port()
        self.client_endpoint = f"tcp://127.0.0.1:{self.client_port}"
        self.worker_endpoint = f"tcp://127.0.0.1:{self.worker_port}"
        self.config_path = config_path
        self.log_path = log_dir / f"coordinator-{index}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[tuple[float, str]] = []  # (monotonic time, line), of every incarnation
        self._lock = threading.Lock()

    def start(self, *extra: str, prefix: tuple[str, ...] = ()) -> None:
        """Start (again) on the same ports; ``prefix`` runs it under a command (``ip netns exec NS``)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "actorsched.coordinator", "--config", str(self.config_path),
                 "--bind", self.client_endpoint, "--worker-bind", self.worker_endpoint, "--http", "", *extra],
                stdout=subprocess.PIPE, stderr=log, env=self.env, cwd=str(ROOT) if FROM_CHECKOUT else None)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # ends when the process closes its stdout (exits)
            with self._lock:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").strip()))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready_since(self, since: float) -> float | None:
        """When this coordinator printed "coordinator ready" (it leads) at or after ``since``, if it did."""
        with self._lock:
            return next((t for t, line in self.lines if t >= since and line.startswith("coordinator ready")), None)

    def standing_by_since(self, since: float) -> bool:
        with self._lock:
            return any(t >= since and line.startswith("coordinator standby") for t, line in self.lines)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                self.proc.terminate()
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class HaCluster:
    """``coordinators`` coordinators on the database ``dsn``, and workers started with :meth:`add_worker`."""

    def __init__(self, dsn: str, coordinators: int = 2, lease_s: float = 3.0, log_dir: str | None = None,
                 extra_config: str = "") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="actorsched-ha-") if log_dir is None else None
        self.dir = Path(log_dir or self._tmp.name)  # type: ignore[union-attr]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        config = self.dir / "coordinator.toml"
        config.write_text(f'[journal]\nbackend = "postgresql"\ndsn = "{dsn}"\nlease_s = {lease_s}\n{extra_config}')
        self.env = dict(os.environ)
        if FROM_CHECKOUT:
            self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.coordinators = [CoordinatorProcess(i, config, self.dir, self.env) for i in range(coordinators)]
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def client_endpoints(self) -> str:
        return ",".join(c.client_endpoint for c in self.coordinators)

    @property
    def worker_endpoints(self) -> str:
        return ",".join(c.worker_endpoint for c in self.coordinators)

    def start(self, timeout_s: float = 30.0, expect_leader: bool = True) -> HaCluster:
        """Start every coordinator (the first one to win the lease leads) and wait until one leads
        (unless ``expect_leader`` is false: another coordinator, not started here, leads)."""
        since = time.monotonic()
        for coordinator in self.coordinators:
            coordinator.start()
        if expect_leader:
            self.wait_for_leader(since, timeout_s)
        wait_until(lambda: all(c.standing_by_since(since) or c.ready_since(since) for c in self.coordinators),
                   timeout_s, "every coordinator to be up (leading or standing by)")
        return self

    def wait_for_leader(self, since: float, timeout_s: float = 30.0) -> tuple[CoordinatorProcess, float]:
        """The coordinator that started leading at or after ``since``, and when it did."""
        def leading() -> tuple[CoordinatorProcess, float] | None:
            for coordinator in self.coordinators:
                at = coordinator.ready_since(since)
                if at is not None and coordinator.alive():
                    return coordinator, at
            return None
        found: tuple[CoordinatorProcess, float] = wait_until(leading, timeout_s, "a coordinator to lead", 0.01)
        return found

    def leader(self) -> CoordinatorProcess:
        """The live coordinator that most recently started leading."""
        best: tuple[float, CoordinatorProcess] | None = None
        for coordinator in self.coordinators:
            at = coordinator.ready_since(0.0) if coordinator.alive() else None
            latest = max((t for t, line in coordinator.lines if line.startswith("coordinator ready")), default=None)
            if at is not None and latest is not None and (best is None or latest > best[0]):
                best = (latest, coordinator)
        if best is None:
            raise RuntimeError("no live coordinator leads")
        return best[1]

    def add_worker(self, worker_id: str, slots: int = 2, *extra: str, endpoints: str = "") -> subprocess.Popen[bytes]:
        """A worker given every coordinator (or ``endpoints``, a list in another order)."""
        with open(self.dir / f"{worker_id}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "actorsched.worker", "--connect", endpoints or self.worker_endpoints,
                 "--slots", str(slots),
                 "--worker-id", worker_id, *extra],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(ROOT) if FROM_CHECKOUT else None)
        self.workers.append(proc)
        return proc

    def client(self, timeout_s: float = 30.0) -> Any:
        from actorsched.client import Client

        return Client(self.client_endpoints, timeout_s=timeout_s)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for coordinator in self.coordinators:
            coordinator.stop()
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> HaCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
