"""CURVE: with keys, only allow-listed workers and clients get in; without, no exposed binds."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from actorsched import security
from actorsched.client import Client
from actorsched.errors import ConnectionFailed
from actorsched.localcluster import BIN, ROOT, LocalCluster


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for folder, name in (("server", "coordinator"), ("workers", "worker"), ("clients", "c"), ("rogue", "r")):
        security.generate(tmp_path / folder, name)
    (tmp_path / "coordinator.toml").write_text(
        f'[security]\nsecret_key_file = "{tmp_path}/server/coordinator.key_secret"\n'
        f'worker_keys_dir = "{tmp_path}/workers"\nclient_keys_dir = "{tmp_path}/clients"\n')
    return tmp_path


def test_allow_listed_workers_and_clients_run_tasks_and_others_are_refused(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    server_key, worker_key = str(keys / "server" / "coordinator.key"), str(keys / "workers" / "worker.key_secret")
    cluster = make_cluster(workers=1, coordinator_args=["--config", str(keys / "coordinator.toml")],
                           worker_args=["--server-key", server_key, "--key", worker_key])
    with Client(cluster.client_endpoint, server_key_file=server_key,
                key_file=str(keys / "clients" / "c.key_secret")) as client:
        cluster.wait_for_workers(client, 1)
        assert client.submit("actorsched.tasks:echo", 7).result(timeout=30) == 7
        # A worker with a key outside worker_keys_dir never gets in.
        cluster.add_worker("--server-key", server_key, "--key", str(keys / "rogue" / "r.key_secret"))
        cluster.add_worker("--server-key", server_key, "--key", str(keys / "clients" / "c.key_secret"))
        assert client.submit("actorsched.tasks:echo", 8).result(timeout=30) == 8
        assert [w.worker_id for w in client.workers()] == ["worker-1"]
    for key_file in (None, str(keys / "rogue" / "r.key_secret"), str(keys / "workers" / "worker.key_secret")):
        with pytest.raises(ConnectionFailed), Client(cluster.client_endpoint, timeout_s=1.0,
                                                     server_key_file=server_key if key_file else None,
                                                     key_file=key_file) as intruder:
            intruder.stats()


def test_a_worker_may_register_only_under_an_id_its_key_allows(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    server_key = str(keys / "server" / "coordinator.key")
    worker_key = str(keys / "workers" / "worker.key_secret")
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")],
                           worker_args=["--server-key", server_key, "--key", worker_key])
    with Client(cluster.client_endpoint, server_key_file=server_key,
                key_file=str(keys / "clients" / "c.key_secret")) as client:
        # The key "worker" may be "worker" or "worker-<suffix>" (a fleet sharing a key), not "gpu-7".
        impostor = cluster.add_worker("--worker-id", "gpu-7")
        assert impostor.wait(30) == 2  # Refused: the worker exits 2
        cluster.add_worker()  # worker-2: its key allows it
        cluster.wait_for_workers(client, 1)
        assert [w.worker_id for w in client.workers()] == ["worker-2"]
        assert client.stats()["transport"]["identity_refused"] == 1
    log_text = (Path(cluster.log_dir) / "worker-1.log").read_text()
    assert "'gpu-7' does not belong to this worker's key 'worker'" in log_text and "--worker-id worker" in log_text


def test_a_non_loopback_bind_without_keys_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BIN / "coordinator"), "--bind", "tcp://0.0.0.0:0", "--worker-bind", "tcp://127.0.0.1:0",
         "--state-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not loopback" in result.stderr and "CURVE" in result.stderr and "keygen" in result.stderr


def test_keygen_writes_a_key_pair(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "actorsched.cli", "keygen", str(tmp_path), "me"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    public, secret = security.load_keypair(str(tmp_path / "me.key_secret"), "test")
    assert security.load_public(str(tmp_path / "me.key"), "test") == public and len(secret) == 40  # z85 text
    assert (tmp_path / "me.key_secret").stat().st_mode & 0o077 == 0
