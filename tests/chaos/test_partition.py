"""A network partition between hosts: a worker in its own network namespace is cut off.

The worker runs in a namespace made by this test, reaching the coordinator over a
veth pair with addresses that exist only on that pair.  The coordinator's worker
endpoint listens on the pair's address, so CURVE keys are on (as they must be for any
non-loopback bind).  The link goes down past the worker timeout and comes back.
Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import ip

from actorsched import security
from actorsched.client import Client
from actorsched.localcluster import BIN, ROOT, LocalCluster, wait_until

pytestmark = pytest.mark.chaos

def test_a_partitioned_worker_is_removed_its_tasks_rerun_and_it_rejoins_when_the_link_returns(
        namespace: tuple[str, str, str, str], tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    ns, host_veth, host_addr, _ = namespace
    for folder, name in (("server", "coordinator"), ("workers", "worker"), ("workers", "remote"), ("clients", "c")):
        security.generate(tmp_path / folder, name)
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[security]\nsecret_key_file = "{tmp_path}/server/coordinator.key_secret"\n'
                      f'worker_keys_dir = "{tmp_path}/workers"\nclient_keys_dir = "{tmp_path}/clients"\n')
    server_key = str(tmp_path / "server" / "coordinator.key")
    worker_key, remote_key = (str(tmp_path / "workers" / f"{name}.key_secret") for name in ("worker", "remote"))
    cluster = make_cluster(workers=0, worker_endpoint=f"tcp://{host_addr}:0",
                           coordinator_args=["--config", str(config), "--worker-timeout", "2"],
                           worker_args=["--server-key", server_key, "--key", worker_key])
    log = open(tmp_path / "remote-worker.log", "wb")
    remote = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(BIN / "worker"), "--connect", cluster.worker_endpoint,
         "--slots", "2", "--worker-id", "remote", "--server-key", server_key, "--key", remote_key],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        with Client(cluster.client_endpoint, server_key_file=server_key,
                    key_file=str(tmp_path / "clients" / "c.key_secret")) as client:
            cluster.wait_for_workers(client, 1)
            held = [client.submit("actorsched.tasks:sleep", 3.0) for _ in range(2)]
            wait_until(lambda: all(h.info().state == "RUNNING" for h in held), 60, "the remote worker to run 2 tasks")
            assert {h.info().worker_id for h in held} == {"remote"}
            cluster.add_worker(slots=2)  # a local worker, on this side of the partition

            ip("link", "set", host_veth, "down")  # the partition
            wait_until(lambda: [w.worker_id for w in client.workers()] == ["worker-1"], 60,
                       "the coordinator to remove the unreachable worker")
            assert client.gather(held, timeout=60) == [3.0, 3.0]
            assert all(h.info().worker_id == "worker-1" and h.info().attempt == 2 for h in held)

            ip("link", "set", host_veth, "up")  # healed: the remote worker is asked to register again
            wait_until(lambda: {w.worker_id for w in client.workers()} == {"worker-1", "remote"}, 90,
                       "the remote worker to rejoin")
            after = client.submit_many({"name": "actorsched.tasks:pid"} for _ in range(20))
            assert len(client.gather(after, timeout=60)) == 20
            # Nothing the remote worker reported late was committed over the rerun.
            assert all(h.info().worker_id == "worker-1" for h in held)
    finally:
        if remote.poll() is None:
            remote.send_signal(signal.SIGKILL)
        remote.wait(30)
