"""CURVE: with keys, only allow-listed workers and clients get in; without, no exposed binds."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actorsched import security
from actorsched.client import Client
from actorsched.errors import ConnectionFailed
from actorsched.localcluster import BIN, ROOT, LocalCluster, wait_until


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


# ---------------------------------------------------------------- refusals are not outages


@pytest.mark.parametrize(("key_file", "fragments"), [
    ("rogue/r.key_secret", ["refused this client's CURVE key", "key not accepted", "rogue/r.key ",
                            "client_keys_dir"]),
    ("workers/worker.key_secret", ["refused this client's CURVE key", "workers/worker.key ", "client_keys_dir"]),
    (None, ["requires CURVE keys and this client has none", "--server-key", "client_keys_dir"]),
])
def test_a_client_whose_key_is_refused_is_told_so_and_how_to_fix_it(
        keys: Path, make_cluster: Callable[..., LocalCluster], key_file: str | None, fragments: list[str]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    server_key = str(keys / "server" / "coordinator.key") if key_file else None
    timeout_s = 10.0
    started = time.monotonic()
    with Client(cluster.client_endpoint, timeout_s=timeout_s, server_key_file=server_key,
                key_file=str(keys / key_file) if key_file else None) as client:
        with pytest.raises(ConnectionFailed) as refused:
            client.stats()
        assert time.monotonic() - started < timeout_s  # an answer, not a timeout
        message = str(refused.value)
        assert all(fragment in message for fragment in fragments), message
        assert "is it running" not in message
        with pytest.raises(ConnectionFailed, match="refused this client"):  # and the next call at once
            client.submit("actorsched.tasks:echo", 1)


def test_a_client_with_the_wrong_coordinator_key_is_told_which_file_to_check(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    wrong_server_key = str(keys / "rogue" / "r.key")
    with Client(cluster.client_endpoint, timeout_s=1.5, server_key_file=wrong_server_key,
                key_file=str(keys / "clients" / "c.key_secret")) as client:
        with pytest.raises(ConnectionFailed) as refused:
            client.stats()
    message = str(refused.value)
    assert "hung up on the CURVE handshake" in message and f"{wrong_server_key} is not its public key" in message
    assert "is it running" not in message


def test_the_cli_shows_a_refusal_with_exit_code_2(keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    result = subprocess.run(
        [sys.executable, "-m", "actorsched.cli", "stats", "--coordinator", cluster.client_endpoint,
         "--server-key", str(keys / "server" / "coordinator.key"), "--key", str(keys / "rogue" / "r.key_secret")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "refused this client's CURVE key" in result.stderr and "client_keys_dir" in result.stderr
    assert "Traceback" not in result.stderr and "is it running" not in result.stderr
    assert result.stderr.count("refused this client") == 1


RETRIES = 4
"""Handshakes a refused worker retries before the test counts its refusal lines."""


def _refused_worker(cluster: LocalCluster, *args: str, retry_line: str = "opening a new connection to coordinator",
                    ) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
    """A worker with ``args`` that is refused; returns it and its log text once it retried RETRIES times."""
    process = cluster.add_worker("--log-level", "DEBUG", *args)
    name = f"worker-{len(cluster.worker_procs)}"

    def retries() -> int:
        return cluster.log_text(name).count(retry_line)

    wait_until(lambda: retries() >= RETRIES, 60,
               f"the refused worker to retry {RETRIES} times ({retry_line!r} in its log)")
    assert process.poll() is None, "a refused worker keeps trying, it does not exit"
    return process, lambda: cluster.log_text(name)


def test_a_worker_whose_key_is_refused_says_so_once_and_gets_in_once_the_key_is_added(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    server_key, rogue_key = str(keys / "server" / "coordinator.key"), str(keys / "rogue" / "r.key_secret")
    _, log_text = _refused_worker(cluster, "--server-key", server_key, "--key", rogue_key, "--worker-id", "r-1")
    lines = [line for line in log_text().splitlines() if "refused this worker's CURVE key" in line]
    assert len(lines) == 1, lines  # once per distinct refusal, not once per retry
    assert " ERROR " in lines[0] and f"{keys}/rogue/r.key " in lines[0] and "worker_keys_dir" in lines[0]

    # The operator adds the key and reloads the coordinator: the worker gets in on its own.
    shutil.copy(keys / "rogue" / "r.key", keys / "workers" / "r.key")
    cluster.kill_coordinator(signal.SIGTERM)
    cluster.start_coordinator()
    with Client(cluster.client_endpoint, server_key_file=server_key,
                key_file=str(keys / "clients" / "c.key_secret")) as client:
        wait_until(lambda: [w.worker_id for w in client.workers()] == ["r-1"], 60, "the worker to get in")


def test_a_worker_without_keys_is_told_the_coordinator_requires_them(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    _, log_text = _refused_worker(cluster)
    lines = [line for line in log_text().splitlines() if "requires CURVE keys and this worker has none" in line]
    assert len(lines) == 1, lines
    assert " ERROR " in lines[0] and "--server-key" in lines[0] and "worker_keys_dir" in lines[0]


def test_a_worker_with_the_wrong_coordinator_key_is_told_which_file_to_check(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    wrong_server_key = str(keys / "rogue" / "r.key")
    _, log_text = _refused_worker(cluster, "--server-key", wrong_server_key, "--key",
                                  str(keys / "workers" / "worker.key_secret"), "--worker-id", "worker-x",
                                  retry_line="handshake with coordinator=")  # ZeroMQ retries these itself
    lines = [line for line in log_text().splitlines() if "hung up during the CURVE handshake" in line]
    assert len(lines) == 1, lines
    assert " ERROR " in lines[0] and f"{wrong_server_key} is not its public key" in lines[0]
