"""Standby coordinators on a real PostgreSQL: kills, pauses, a database restart and a cut-off leader.

Two coordinators share one database (``[journal] backend = "postgresql"``); workers and
clients are given both and follow the leader by themselves (tests/hacluster.py).  Leases
are short here (1.5 s) so that each takeover costs a test little; bench/failover_ha.py
measures takeovers at the default lease.  Every process is stopped by PID, even when a
test fails.
"""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hacluster import CoordinatorProcess, HaCluster, committed_rows, committed_successes
from netns import ip
from pgserver import PgServer

from actorsched.errors import ActorschedError
from actorsched.localcluster import wait_until

pytestmark = pytest.mark.chaos

LEASE_S = 1.5
SLEEP = "actorsched.tasks:sleep"
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class Load(threading.Thread):
    """Submits small batches through one client until stopped; remembers what was acknowledged."""

    def __init__(self, cluster: HaCluster, prefix: str, seed: int = 7) -> None:
        super().__init__(name=f"load-{prefix}", daemon=True)
        self.client = cluster.client(timeout_s=20)
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.acked: dict[str, float] = {}
        self.ack_times: list[float] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        batch = 0
        while not self.stopping.is_set() and batch < 5000:
            specs = [{"task_id": f"{self.prefix}-{batch:04d}-{i}", "name": SLEEP,
                      "args": [round(self.rng.uniform(0.001, 0.01), 4)]} for i in range(self.rng.randint(3, 12))]
            batch += 1
            try:
                self.client.submit_many(specs)
            except ActorschedError as exc:  # a takeover under way: this batch is not acknowledged
                self.failures.append(str(exc))
                continue
            with self.lock:
                self.acked.update({s["task_id"]: s["args"][0] for s in specs})
                self.ack_times.append(time.monotonic())
            self.stopping.wait(0.01)  # pace: a batch every ~10 ms, so the run stays bounded in size

    def acked_after(self, since: float) -> int:
        with self.lock:
            return sum(1 for t in self.ack_times if t > since)

    def stop(self) -> dict[str, float]:
        self.stopping.set()
        self.join(60)
        self.client.close()
        return dict(self.acked)


def check_every_acknowledged_task_ran_once(cluster: HaCluster, dsn: str, acked: dict[str, float]) -> None:
    ids = list(acked)
    with cluster.client() as client:
        def settled() -> list[Any] | None:
            infos = [i for start in range(0, len(ids), 2000) for i in client.query_many(ids[start:start + 2000])]
            return infos if all(i.state in FINAL for i in infos) else None
        infos = wait_until(settled, 120, "every acknowledged task to finish", 0.2)
    states = collections.Counter(i.state for i in infos)
    assert states == {"SUCCEEDED": len(ids)}, f"acknowledged tasks by state: {dict(states)}"
    assert all(i.value == acked[i.task_id] for i in infos)
    rows = committed_rows(dsn)
    missing = [t for t in ids if t not in rows]
    assert not missing, f"{len(missing)} acknowledged task(s) missing from the database: {missing[:5]}"
    twice = [t for t in ids if committed_successes(rows[t][1]) > 1]
    assert not twice, f"tasks with more than one committed success: {twice[:5]}"


@pytest.fixture
def ha(pg_dsn: str, tmp_path: Path) -> Iterator[HaCluster]:
    cluster = HaCluster(pg_dsn, coordinators=2, lease_s=LEASE_S, log_dir=str(tmp_path))
    try:
        cluster.start()
        for name in ("w1", "w2"):
            cluster.add_worker(name, 2)
        with cluster.client() as client:
            wait_until(lambda: len(client.workers()) == 2, 60, "both workers to register with the leader")
        yield cluster
    finally:
        cluster.stop()


def test_kill_9_of_the_leader_under_load_loses_nothing_and_the_standby_leads(ha: HaCluster, pg_dsn: str) -> None:
    load = Load(ha, "kill")
    load.start()
    takeovers = []
    try:
        for _ in range(3):
            started = time.monotonic()
            wait_until(lambda since=started: load.acked_after(since) >= 3, 60, "the load to be acknowledged")
            leader = ha.leader()
            killed_at = time.monotonic()
            leader.kill()
            successor, at = ha.wait_for_leader(killed_at, 30)
            assert successor is not leader
            takeovers.append(at - killed_at)
            wait_until(lambda since=killed_at: load.acked_after(since) >= 3, 60,
                       "the client to carry on with the new leader")
            leader.start()  # back, as a standby
            wait_until(lambda c=leader, since=killed_at: c.standing_by_since(since), 30,
                       "the killed coordinator to stand by")
        # the workers followed: both are registered with the leader and run new work
        with ha.client() as client:
            wait_until(lambda: {w.worker_id for w in client.workers()} == {"w1", "w2"}, 60,
                       "both workers to register with the last leader")
            after = client.submit_many({"name": "actorsched.tasks:pid"} for _ in range(20))
            assert len(set(client.gather(after, timeout=60))) >= 1
    finally:
        acked = load.stop()
    assert all(t < LEASE_S + 5 for t in takeovers), takeovers
    check_every_acknowledged_task_ran_once(ha, pg_dsn, acked)


def test_a_paused_leader_is_fenced_commits_nothing_after_the_takeover_and_steps_down(
        ha: HaCluster, pg_dsn: str) -> None:
    from actorsched.client import Client

    old = ha.leader()
    with ha.client() as client:
        assert client.submit("actorsched.tasks:add", 1, 2).result(timeout=30) == 3
    assert old.proc is not None
    old.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        # A submit sent to the paused leader alone waits in its socket until it wakes.
        late = Client(old.client_endpoint, timeout_s=3 * LEASE_S + 5)
        result: dict[str, Any] = {}

        def submit_late() -> None:
            try:
                result["acked"] = late.submit_many([{"task_id": "late-1", "name": "actorsched.tasks:noop"}])
            except ActorschedError as exc:
                result["error"] = exc

        sender = threading.Thread(target=submit_late, daemon=True)
        sender.start()
        successor, _ = ha.wait_for_leader(paused_at, 30)
        assert successor is not old
        with ha.client() as client:
            assert client.submit("actorsched.tasks:add", 2, 3).result(timeout=30) == 5
    finally:
        old.signal(signal.SIGCONT)
    assert old.proc.wait(30) == 3, "a fenced leader exits with 3 (stepped down)"
    sender.join(30)
    late.close()
    assert "acked" not in result, "the old leader acknowledged a task after it lost the lease"
    log = old.log_text()
    assert "leadership lost" in log or "no longer leads" in log, log[-2000:]
    assert "late-1" not in committed_rows(pg_dsn), "the old leader committed after the takeover"


def test_a_postgresql_restart_under_load_loses_no_acknowledged_task(tmp_path: Path) -> None:
    reason = PgServer.available()
    if reason:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    with PgServer(durable=True) as pg:
        dsn = pg.create_database("restart")
        cluster = HaCluster(dsn, coordinators=2, lease_s=LEASE_S, log_dir=str(tmp_path))
        try:
            cluster.start()
            cluster.add_worker("w1", 2)
            with cluster.client() as client:
                wait_until(lambda: len(client.workers()) == 1, 60, "the worker to register")
            load = Load(cluster, "pgrestart")
            load.start()
            try:
                started = time.monotonic()
                wait_until(lambda: load.acked_after(started) >= 5, 60, "the load to be acknowledged")
                pg.restart()
                restarted = time.monotonic()
                # A leader that could not reach the database for its lease stepped down (exit 3):
                # a supervisor would start it again; here the test does.
                def leading_again() -> bool:
                    for coordinator in cluster.coordinators:
                        if not coordinator.alive():
                            coordinator.start()
                    return load.acked_after(restarted) >= 5
                wait_until(leading_again, 90, "the cluster to take submits again after the restart", 0.1)
            finally:
                acked = load.stop()
            check_every_acknowledged_task_ran_once(cluster, dsn, acked)
        finally:
            cluster.stop()


def test_a_leader_cut_off_from_the_database_stops_serving_within_its_lease(
        namespace: tuple[str, str, str, str], tmp_path: Path) -> None:
    ns, host_veth, host_addr, _ = namespace
    reason = PgServer.available()
    if reason:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    with PgServer(listen=[host_addr]) as pg:
        dsn = pg.create_database("cut")
        cut_config = tmp_path / "cut.toml"
        cut_config.write_text(f'[journal]\nbackend = "postgresql"\ndsn = "{dsn.replace("127.0.0.1", host_addr)}"\n'
                              f'lease_s = {LEASE_S}\n')
        cluster = HaCluster(dsn, coordinators=1, lease_s=LEASE_S, log_dir=str(tmp_path))
        env = dict(cluster.env)
        # The leader runs in the namespace: it reaches the database over the veth pair only.
        leader = CoordinatorProcess(9, cut_config, tmp_path, env)
        leader.client_endpoint = f"tcp://127.0.0.1:{leader.client_port}"
        try:
            leader.start(prefix=("ip", "netns", "exec", ns))
            wait_until(lambda: leader.ready_since(0.0), 30, "the coordinator in the namespace to lead")
            cluster.start(expect_leader=False)  # the standby, on this side
            standby = cluster.coordinators[0]
            assert standby.ready_since(0.0) is None
            ip("link", "set", host_veth, "down")  # the leader loses the database
            cut_at = time.monotonic()
            code = leader.proc.wait(LEASE_S + 10)
            stopped_after = time.monotonic() - cut_at
            assert code == 3, leader.log_text()[-2000:]
            assert stopped_after < LEASE_S + 2, f"stopped {stopped_after:.2f} s after the cut (lease {LEASE_S} s)"
            cluster.wait_for_leader(cut_at, 30)
            cluster.add_worker("w1", 1)
            with cluster.client() as client:
                assert client.submit("actorsched.tasks:add", 4, 5).result(timeout=30) == 9
        finally:
            leader.kill()
            cluster.stop()


def test_a_standby_answers_who_leads_and_clients_and_workers_listed_standby_first_go_there(
        pg_dsn: str, tmp_path: Path) -> None:
    import zmq

    from actorsched import protocol
    from actorsched.client import Client

    cluster = HaCluster(pg_dsn, coordinators=2, lease_s=LEASE_S, log_dir=str(tmp_path))
    try:
        cluster.start()
        leader = cluster.leader()
        standby = next(c for c in cluster.coordinators if c is not leader)
        # The standby itself: a request gets NotLeader, naming the leader's client endpoint once the standby
        # has read the lease (it reads it every lease_s / 12; before that it names none).
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        codec = protocol.Codec(protocol.TO_CLIENT_MESSAGES)
        answers: list[Any] = []

        def names_the_leader() -> bool:
            dealer.send_multipart(protocol.encode(protocol.GetStats(len(answers) + 1)))
            assert dealer.poll(10_000), "the standby did not answer"
            answers.append(codec.decode(dealer.recv_multipart()))
            return bool(answers[-1].leader)
        try:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(standby.client_endpoint)
            wait_until(names_the_leader, 10, "the standby to name the leader", 0.05)
        finally:
            dealer.close()
        assert all(isinstance(a, protocol.NotLeader) and a.request_id == i + 1 for i, a in enumerate(answers))
        assert answers[-1].leader == leader.client_endpoint and answers[-1].epoch >= 1
        # Listed standby first, a client and a worker end up with the leader.
        cluster.add_worker("w1", 1, endpoints=f"{standby.worker_endpoint},{leader.worker_endpoint}")
        with Client(f"{standby.client_endpoint},{leader.client_endpoint}", timeout_s=10) as client:
            assert client.submit("actorsched.tasks:add", 20, 22).result(timeout=30) == 42
            assert client.endpoint == leader.client_endpoint
            assert [w.worker_id for w in client.workers()] == ["w1"]
        # One client shared by threads, listed standby first: each call reaches the leader, with one move.
        with Client(f"{standby.client_endpoint},{leader.client_endpoint}", timeout_s=10) as shared:
            errors: list[BaseException] = []

            def ask() -> None:
                try:
                    for _ in range(20):
                        assert "queue" in shared.stats()
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
            threads = [threading.Thread(target=ask) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not errors and not any(t.is_alive() for t in threads), errors
            assert shared.endpoint == leader.client_endpoint and shared._moves == 1
        # The CLI takes the same list.
        out = subprocess.run([sys.executable, "-m", "actorsched", "stats", "--json", "--coordinator",
                              f"{standby.client_endpoint},{leader.client_endpoint}"],
                             capture_output=True, text=True, timeout=60, env=cluster.env)
        assert out.returncode == 0, out.stderr
    finally:
        cluster.stop()


def test_the_leaders_host_cut_off_from_everyone_a_standby_leads_and_clients_and_workers_follow(
        namespace: tuple[str, str, str, str], tmp_path: Path) -> None:
    """The leader's host is gone for every peer at once (its only link down): database, clients and workers.

    It binds its namespace's address, so CURVE keys are on; both coordinators share one key pair.
    """
    from actorsched import security
    from actorsched.client import Client

    ns, host_veth, host_addr, ns_addr = namespace
    reason = PgServer.available()
    if reason:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    for folder, name in (("server", "coordinator"), ("workers", "w1"), ("clients", "c")):
        security.generate(tmp_path / folder, name)
    server_key = str(tmp_path / "server" / "coordinator.key")
    keys = (f'[security]\nsecret_key_file = "{tmp_path}/server/coordinator.key_secret"\n'
            f'worker_keys_dir = "{tmp_path}/workers"\nclient_keys_dir = "{tmp_path}/clients"\n')
    with PgServer(listen=[host_addr]) as pg:
        dsn = pg.create_database("host")
        far_config = tmp_path / "far.toml"
        far_config.write_text(f'[journal]\nbackend = "postgresql"\ndsn = "{dsn.replace("127.0.0.1", host_addr)}"\n'
                              f'lease_s = {LEASE_S}\n{keys}')
        cluster = HaCluster(dsn, coordinators=1, lease_s=LEASE_S, log_dir=str(tmp_path), extra_config=keys)
        near = cluster.coordinators[0]
        far = CoordinatorProcess(9, far_config, tmp_path, dict(cluster.env))
        far.client_endpoint = f"tcp://{ns_addr}:{far.client_port}"
        far.worker_endpoint = f"tcp://{ns_addr}:{far.worker_port}"
        try:
            far.start(prefix=("ip", "netns", "exec", ns))
            wait_until(lambda: far.ready_since(0.0), 30, "the coordinator in the namespace to lead")
            cluster.start(expect_leader=False)
            cluster.add_worker("w1", 2, "--server-key", server_key, "--key",
                               str(tmp_path / "workers" / "w1.key_secret"),
                               endpoints=f"{far.worker_endpoint},{near.worker_endpoint}")
            with Client(f"{far.client_endpoint},{near.client_endpoint}", timeout_s=20, server_key_file=server_key,
                        key_file=str(tmp_path / "clients" / "c.key_secret")) as client:
                wait_until(lambda: [w.worker_id for w in client.workers()] == ["w1"], 30,
                           "the worker to register with the far leader")
                assert client.submit("actorsched.tasks:add", 1, 1).result(timeout=30) == 2
                assert client.endpoint == far.client_endpoint

                ip("link", "set", host_veth, "down")  # the far host is gone, for everyone
                cut_at = time.monotonic()
                _, took_over_at = cluster.wait_for_leader(cut_at, 30)
                assert took_over_at - cut_at < LEASE_S + 5
                # the same client and the same worker carry on with the new leader by themselves
                assert client.submit("actorsched.tasks:add", 2, 2).result(timeout=60) == 4
                answered_at = time.monotonic()
                assert client.endpoint == near.client_endpoint
                assert [w.worker_id for w in client.workers()] == ["w1"]
                assert answered_at - cut_at < LEASE_S + 10
            # cut off from its database too, the far leader stepped down within its lease
            assert far.proc.wait(30) == 3
        finally:
            far.kill()
            cluster.stop()
