"""docs/operations.md, followed as an operator would, on "hosts" that are network namespaces.

One LAN (a bridge) joins three namespaces: ``sched`` runs the coordinator, ``node1`` and
``node2`` run a worker each, every one on a veth link of its own; this test process is
the client host, with an address on the bridge.  Each host has its own folder standing
for its ``/etc/actorsched`` (and ``/var/lib/actorsched`` on ``sched``).  The steps are
the document's: key pairs made on the host that uses them with ``actorsched keygen``
and only public halves copied; the coordinator bound to its LAN address with the
``[security]`` keys; workers with the coordinator's public key, their own key pair, a
stable worker id, and task code of their own (``allowed_modules``); a client configured
only through ``ACTORSCHED_COORDINATOR``, ``ACTORSCHED_SERVER_KEY`` and
``ACTORSCHED_CLIENT_KEY``.  Then what the document promises:

- tasks spread over both hosts;
- a host cut off (its link down) is removed after ``worker_timeout_s``, its tasks run on
  the other host, and it rejoins on its own when the link returns;
- ``kill -9`` of the coordinator and a restart from its state folder: every acknowledged
  task is committed exactly once (one successful attempt, its own value), and a batch whose
  acknowledgement never came is resubmitted under the same ids without running twice;
- the status page answers on the coordinator's loopback only, and an online ``.backup``
  of the journal taken while the coordinator runs holds every finished task.

Every wait polls a condition against a deadline.  Every process is stopped by its PID, and
every namespace and link is deleted, in ``finally``.  Skipped, with the reason, where
namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netns import ip

from actorsched.client import Client
from actorsched.errors import ActorschedError
from actorsched.localcluster import BIN, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

SCRIPTS = Path(sys.executable).parent
HOSTS = {"sched": 10, "node1": 11, "node2": 12}  # host -> last byte of its LAN address
CLIENT_HOST = 254  # this test process, on the bridge itself
TASK_MODULE = '''"""Task code of the operator's own, installed on each worker host."""
import os
import time


def square(x):
    return x * x


def where(seconds=0.0):
    """The host that ran the task (this test sets OPS_HOST per worker), after `seconds`."""
    time.sleep(seconds)
    return os.environ["OPS_HOST"]
'''
# The liveness section the document's "Failure detection" part describes, tightened so
# that a cut-off host is removed within ~3.5 s instead of 15-20 s.
LIVENESS = """
[liveness]
heartbeat_interval_s = 0.5
suspect_after_s = 1.5
worker_timeout_s = 3.0
scan_interval_s = 0.5
pause_threshold_s = 1.0
"""


def command(script: str, fallback: list[str]) -> list[str]:
    """The installed console script beside this interpreter, else the checkout's launcher."""
    path = SCRIPTS / script
    return [str(path)] if path.exists() else [sys.executable, *fallback]


COORDINATOR = command("actorsched-coordinator", [str(BIN / "coordinator")])
WORKER = command("actorsched-worker", [str(BIN / "worker")])
CLI = command("actorsched", ["-m", "actorsched.cli"])


def cli(*args: str) -> str:
    """Run the ``actorsched`` command on the client host (this process's environment); its stdout."""
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"actorsched {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


# --------------------------------------------------------------------------- the LAN


@dataclass
class Lan:
    """Namespaces on one bridge: ``netns[host]``, ``link[host]`` (its bridge-side veth), ``addr[host]``."""

    prefix: str
    subnet: str
    bridge: str = ""
    netns: dict[str, str] = field(default_factory=dict)
    link: dict[str, str] = field(default_factory=dict)
    addr: dict[str, str] = field(default_factory=dict)

    def on(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns[host], *argv]


def free_tag() -> int:
    """A tag whose namespaces and subnet no other run holds now (runs may overlap)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    taken = {line.split()[0] for line in listed.splitlines() if line.strip()}
    start = os.getpid() % 250
    for step in range(250):
        tag = (start + step) % 250 + 1
        if not any(name.startswith(f"asop{tag}") for name in taken):
            return tag
    pytest.skip("no free namespace tag (250 runs of this test at once?)")


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip`)")
    tag = free_tag()
    net = Lan(prefix=f"asop{tag}", subnet=f"10.214.{tag}")
    try:
        try:
            ip("netns", "add", f"{net.prefix}sched")
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"cannot create a network namespace here: {getattr(exc, 'stderr', '') or exc}")
        net.netns["sched"] = f"{net.prefix}sched"
        try:
            ip("link", "add", f"{net.prefix}br", "type", "bridge")
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"cannot create a bridge here: {getattr(exc, 'stderr', '') or exc}")
        net.bridge = f"{net.prefix}br"
        ip("addr", "add", f"{net.subnet}.{CLIENT_HOST}/24", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
        for host, last in HOSTS.items():
            ns = net.netns.setdefault(host, f"{net.prefix}{host}")
            if host != "sched":
                ip("netns", "add", ns)
            outside, inside = f"{net.prefix}{host[0]}{host[-1]}o", f"{net.prefix}{host[0]}{host[-1]}i"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            net.link[host] = outside
            ip("link", "set", inside, "netns", ns)
            ip("link", "set", outside, "master", net.bridge)
            ip("link", "set", outside, "up")
            net.addr[host] = f"{net.subnet}.{last}"
            ip("netns", "exec", ns, "ip", "addr", "add", f"{net.addr[host]}/24", "dev", inside)
            ip("netns", "exec", ns, "ip", "link", "set", inside, "up")
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield net
    finally:
        for outside in net.link.values():
            subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
        if net.bridge:
            subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, timeout=30)
        for ns in net.netns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process this test starts, each stopped by its PID at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, **(env or {})})

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, text: str, timeout_s: float) -> None:
        def seen() -> bool:
            proc = self.procs[name]
            if text in self.log(name):
                return True
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode} before logging {text!r}:\n{self.log(name)}")
            return False

        wait_until(seen, timeout_s, f"{name} to log {text!r}", interval_s=0.05)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> None:
        """SIGTERM each running process by its PID (workers drain), then SIGKILL what is left after 15 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


class Submitter(threading.Thread):
    """Submits batches under task ids until its client fails.

    ``acked`` maps each acknowledged task id to its expected value (None: the host that ran it);
    ``in_flight`` is the batch whose acknowledgement had not come when the client failed.
    """

    def __init__(self) -> None:
        super().__init__(name="submitter", daemon=True)
        self.client = Client(timeout_s=20)  # the environment names the coordinator and the keys
        self.acked: dict[str, int | None] = {}
        self.in_flight: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            for batch in range(10_000):
                self.in_flight = [{"task_id": f"kill9-{batch:04d}-{i}", "name": "opstasks:square",
                                   "args": [batch * 10 + i]} for i in range(8)]
                self.in_flight.append({"task_id": f"kill9-{batch:04d}-slow", "name": "opstasks:where", "args": [0.3]})
                self.client.submit_many(self.in_flight)
                with self.lock:
                    self.acked.update(expected(spec) for spec in self.in_flight)
                self.in_flight = []
        except Exception as exc:  # ActorschedError once the coordinator is gone or the client is closed
            self.error = exc

    def acked_now(self) -> dict[str, int | None]:
        with self.lock:
            return dict(self.acked)


def expected(spec: dict[str, Any]) -> tuple[str, int | None]:
    """(task id, the value it must commit); None for opstasks:where, whose value is the host that ran it."""
    return spec["task_id"], spec["args"][0] ** 2 if spec["name"] == "opstasks:square" else None


# --------------------------------------------------------------------------- the walkthrough


def keygen(folder: Path, name: str) -> None:
    out = subprocess.run([*CLI, "keygen", str(folder), name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (folder / f"{name}.key").is_file() and (folder / f"{name}.key_secret").is_file()


def workers_by_id(client: Client) -> dict[str, str]:
    return {w.worker_id: w.state for w in client.workers()}


def test_the_operations_guide_multi_host_walkthrough(lan: Lan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    etc = {host: tmp_path / host / "etc" for host in [*HOSTS, "client"]}  # each host's /etc/actorsched
    for folder in etc.values():
        folder.mkdir(parents=True)
    state_dir = tmp_path / "sched" / "var"  # the coordinator's /var/lib/actorsched

    # Keys: each pair made on the host that uses it; only public halves travel.
    keygen(etc["sched"] / "keys", "coordinator")
    for host in ("node1", "node2"):
        keygen(etc[host] / "keys", host)
    keygen(etc["client"], "alice")
    (etc["sched"] / "worker_keys").mkdir()
    (etc["sched"] / "client_keys").mkdir()
    for host in ("node1", "node2"):
        shutil.copy(etc[host] / "keys" / f"{host}.key", etc["sched"] / "worker_keys")
        shutil.copy(etc["sched"] / "keys" / "coordinator.key", etc[host] / "keys")
    shutil.copy(etc["client"] / "alice.key", etc["sched"] / "client_keys")
    shutil.copy(etc["sched"] / "keys" / "coordinator.key", etc["client"])
    assert not list((etc["sched"] / "worker_keys").glob("*secret*"))
    assert not list((etc["sched"] / "client_keys").glob("*secret*"))

    sched = lan.addr["sched"]
    (etc["sched"] / "coordinator.toml").write_text(f"""
[endpoints]
client_endpoint = "tcp://{sched}:7700"
worker_endpoint = "tcp://{sched}:7701"

[journal]
state_dir = "{state_dir}"
fsync = true
retention_s = 604800.0

[security]
secret_key_file = "{etc['sched']}/keys/coordinator.key_secret"
worker_keys_dir = "{etc['sched']}/worker_keys"
client_keys_dir = "{etc['sched']}/client_keys"

[http]
endpoint = "127.0.0.1:7702"
{LIVENESS}""")
    for host in ("node1", "node2"):
        tasks = tmp_path / host / "tasks"  # the task code, put on each worker host
        tasks.mkdir()
        (tasks / "opstasks.py").write_text(TASK_MODULE)
        (etc[host] / "worker.toml").write_text(f"""
[connection]
coordinator = "tcp://{sched}:7701"
server_public_key_file = "{etc[host]}/keys/coordinator.key"
secret_key_file = "{etc[host]}/keys/{host}.key_secret"

[worker]
worker_id = "{host}"
slots = 2
drain_timeout_s = 30.0

[execution]
allowed_modules = ["actorsched.tasks", "opstasks"]
""")
    # The client host: nothing but the three environment variables.
    monkeypatch.setenv("ACTORSCHED_COORDINATOR", f"tcp://{sched}:7700")
    monkeypatch.setenv("ACTORSCHED_SERVER_KEY", str(etc["client"] / "coordinator.key"))
    monkeypatch.setenv("ACTORSCHED_CLIENT_KEY", str(etc["client"] / "alice.key_secret"))

    procs = Processes(tmp_path)
    clients: list[Client] = []
    timings: dict[str, float | int] = {}
    try:
        coordinator_argv = lan.on("sched", *COORDINATOR, "--config", str(etc["sched"] / "coordinator.toml"))
        procs.start("coordinator", coordinator_argv, cwd=tmp_path / "sched")
        procs.wait_for_log("coordinator", "coordinator ready", 30)
        for host in ("node1", "node2"):
            procs.start(host, lan.on(host, *WORKER, "--config", str(etc[host] / "worker.toml")), cwd=tmp_path / host,
                        env={"PYTHONPATH": str(tmp_path / host / "tasks"), "OPS_HOST": host})
        client = Client()  # endpoint and keys from the environment
        clients.append(client)
        wait_until(lambda: workers_by_id(client) == {"node1": "ALIVE", "node2": "ALIVE"}, 30,
                   "both worker hosts to register")
        listing = cli("workers")
        assert "node1" in listing and "node2" in listing, listing

        # The status page stays on the coordinator host's loopback.
        with pytest.raises(OSError):
            socket.create_connection((sched, 7702), timeout=2).close()
        metrics = subprocess.run(lan.on("sched", sys.executable, "-c", "import urllib.request; print(urllib.request."
                                        "urlopen('http://127.0.0.1:7702/metrics', timeout=5).read().decode())"),
                                 capture_output=True, text=True, timeout=30)
        assert metrics.returncode == 0, metrics.stderr
        assert 'actorsched_worker_slots{' in metrics.stdout and 'worker="node1"' in metrics.stdout

        # 1. Tasks spread across both hosts, and the operator's own task code runs there.
        squares = client.submit_many({"name": "opstasks:square", "args": [i]} for i in range(20))
        assert client.gather(squares, timeout=30) == [i * i for i in range(20)]
        spread = [client.submit("opstasks:where", 3.0) for _ in range(4)]
        wait_until(lambda: all(h.info().state == "RUNNING" for h in spread), 20, "4 long tasks to run")
        placed = {h.task_id: h.info().worker_id for h in spread}
        assert sorted(placed.values()) == ["node1", "node1", "node2", "node2"], placed

        # 2. node1's host is cut off: removed after worker_timeout_s, its tasks rerun on node2.
        cut_at = time.monotonic()
        ip("link", "set", lan.link["node1"], "down")
        wait_until(lambda: workers_by_id(client) == {"node2": "ALIVE"}, 15, "the coordinator to remove node1")
        timings["cut -> removed"] = removed_after = time.monotonic() - cut_at
        assert removed_after >= 2.0, f"node1 removed {removed_after:.1f} s after the cut: not by its silence"
        assert client.gather(spread, timeout=30) == ["node2"] * 4
        for handle in spread:
            info = handle.info()
            if placed[handle.task_id] == "node1":
                assert info.attempt == 2 and info.history[0].outcome != "succeeded", info.history
            assert [a.outcome for a in info.history].count("succeeded") == 1, info.history

        # ... and it rejoins by itself when the link returns, and gets work again.
        healed_at = time.monotonic()
        ip("link", "set", lan.link["node1"], "up")
        wait_until(lambda: workers_by_id(client) == {"node1": "ALIVE", "node2": "ALIVE"}, 30,
                   "node1 to rejoin after the link returned")
        timings["link up -> rejoined"] = time.monotonic() - healed_at
        again = [client.submit("opstasks:where", 1.0) for _ in range(4)]
        assert sorted(client.gather(again, timeout=30)) == ["node1", "node1", "node2", "node2"]
        for handle in spread:  # node1's late results of the cut-off attempts were not committed
            assert handle.info().value == "node2"

        # 3. kill -9 of the coordinator under load, restarted from its state folder.
        submitter = Submitter()
        clients.append(submitter.client)
        submitter.start()

        def loaded() -> bool:
            acked = submitter.acked_now()
            if not submitter.is_alive():
                raise AssertionError(f"the submitter stopped before the kill: {submitter.error!r}")
            return len(acked) >= 90 and any(i.state == "RUNNING" for i in client.query_many(acked))

        wait_until(loaded, 30, "90 acknowledged tasks, some running", interval_s=0.05)
        epoch = client.stats()["queue"]["epoch"]
        killed_at = time.monotonic()
        procs.kill9("coordinator")
        submitter.client.close()  # its request in flight fails now rather than at its timeout
        submitter.join(30)
        assert not submitter.is_alive() and isinstance(submitter.error, ActorschedError), repr(submitter.error)
        acked, in_flight = submitter.acked_now(), list(submitter.in_flight)
        client.close()

        procs.start("coordinator", coordinator_argv, cwd=tmp_path / "sched")  # same command, same state folder
        procs.wait_for_log("coordinator", f"7701 epoch={epoch + 1}", 30)  # its "coordinator ready" line
        client = Client(timeout_s=20)
        clients.append(client)
        wait_until(lambda: workers_by_id(client) == {"node1": "ALIVE", "node2": "ALIVE"}, 30,
                   "both workers to register with the restarted coordinator")
        timings["kill -9 -> restarted, both workers back"] = time.monotonic() - killed_at
        if in_flight:  # never acknowledged: journaled whole or not at all; resubmitting the same ids is safe
            states = {i.state == "NOT_FOUND" for i in client.query_many(spec["task_id"] for spec in in_flight)}
            assert len(states) == 1, f"an unacknowledged batch was half journaled: {in_flight}"
            client.submit_many(in_flight)
            acked.update(expected(spec) for spec in in_flight)
        infos: list[Any] = []

        def all_final() -> bool:
            infos[:] = client.query_many(acked)
            return all(i.state in ("SUCCEEDED", "FAILED", "CANCELLED", "NOT_FOUND") for i in infos)

        wait_until(all_final, 40, f"{len(acked)} acknowledged tasks to finish", interval_s=0.1)
        timings["acknowledged tasks checked"] = len(acked)
        timings["unacknowledged batch resubmitted"] = len(in_flight)
        bad = [(i.task_id, i.state, i.error) for i in infos if i.state != "SUCCEEDED"]
        assert not bad, f"acknowledged task(s) lost or failed across kill -9: {bad[:5]}"
        wrong = [(i.task_id, i.value) for i in infos
                 if i.value != acked[i.task_id] and not (acked[i.task_id] is None and i.value in ("node1", "node2"))]
        assert not wrong, f"wrong committed value(s): {wrong[:5]}"
        twice = [(i.task_id, i.history) for i in infos if [a.outcome for a in i.history].count("succeeded") != 1]
        assert not twice, f"task(s) without exactly one committed success: {twice[:3]}"

        # 4. An online backup of the journal while the coordinator runs holds every finished task.
        backup = tmp_path / "journal-backup.sqlite3"
        journal = state_dir / "journal.sqlite3"
        if shutil.which("sqlite3"):
            subprocess.run(["sqlite3", str(journal), f".backup {backup}"], check=True, capture_output=True, timeout=60)
        else:  # the same online-backup API, through Python's module
            with sqlite3.connect(journal) as source, sqlite3.connect(backup) as target:
                source.backup(target)
        with sqlite3.connect(backup) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = dict(db.execute("SELECT task_id, state FROM tasks"))
        assert all(rows.get(task_id) == "SUCCEEDED" for task_id in acked)
        assert procs.procs["coordinator"].poll() is None, "the backup disturbed the coordinator"
    finally:
        for each in clients:
            each.close()
        procs.stop_all()
        figures = ", ".join(f"{what}: {value:.1f}" if isinstance(value, float) else f"{what}: {value}"
                            for what, value in timings.items())
        print(f"walkthrough took {time.monotonic() - started:.1f} s ({figures}); logs in {tmp_path}")
