"""The coordinator refuses bad configuration at start and survives garbage on its sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq

from actorsched import protocol
from actorsched.client import Client
from actorsched.localcluster import BIN, LocalCluster, wait_until

pytestmark = pytest.mark.timeout(90)

TASK_TIMEOUT_S = 30.0  # bound on every wait: generous for a noisy shared CI machine
WriteFile = Callable[[str, str], Path]


def run_bin(program: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``bin/coordinator`` or ``bin/worker`` to completion, bounded by a timeout."""
    return subprocess.run([sys.executable, str(BIN / program), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("text", "fragments"), [
    ('[endpoints]\nclient_endpoint = "tcp://127.0.0.1:0"\nbogus_key = 1\n', ["bogus_key", "[endpoints]"]),
    ("[no_such_section]\nx = 1\n", ["no_such_section"]),
    ("[endpoints\nclient_endpoint = ", ["not valid TOML"]),
], ids=["unknown-key", "unknown-section", "invalid-toml"])
def test_the_coordinator_exits_2_naming_the_file_and_the_problem_of_a_bad_config(
        tmp_path: Path, write_file: WriteFile, text: str, fragments: list[str]) -> None:
    config = write_file("coordinator.toml", text)
    finished = run_bin("coordinator", "--config", str(config), "--no-journal", cwd=tmp_path)
    assert finished.returncode == 2
    assert finished.stdout == ""  # never "coordinator ready"
    assert str(config) in finished.stderr
    for fragment in fragments:
        assert fragment in finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_coordinator_exits_2_on_a_config_value_out_of_range(tmp_path: Path, write_file: WriteFile) -> None:
    config = write_file("coordinator.toml", "[liveness]\nheartbeat_interval_s = -1.0\n")
    finished = run_bin("coordinator", "--config", str(config), "--no-journal", cwd=tmp_path)
    assert finished.returncode == 2
    assert "heartbeat_interval_s" in finished.stderr and str(config) in finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.parametrize("flag", ["--bind", "--worker-bind"])
def test_the_coordinator_refuses_to_bind_beyond_loopback(tmp_path: Path, flag: str) -> None:
    finished = run_bin("coordinator", flag, "tcp://0.0.0.0:7999", "--no-journal", cwd=tmp_path)
    assert finished.returncode == 2
    assert finished.stdout == ""
    assert "tcp://0.0.0.0:7999" in finished.stderr and "not loopback" in finished.stderr
    assert "CURVE" in finished.stderr  # says what would make it allowed
    assert "Traceback" not in finished.stderr


def test_the_coordinator_exits_2_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        finished = run_bin("coordinator", "--bind", endpoint, "--worker-bind", "tcp://127.0.0.1:0", "--no-journal",
                           cwd=tmp_path)
    assert finished.returncode == 2
    assert endpoint in finished.stderr and "already in use" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_worker_with_an_unknown_config_key_exits_2_naming_the_key(tmp_path: Path, write_file: WriteFile) -> None:
    config = write_file("worker.toml", "[worker]\nslotz = 3\n")
    finished = run_bin("worker", "--config", str(config), cwd=tmp_path)
    assert finished.returncode == 2
    assert "slotz" in finished.stderr and str(config) in finished.stderr
    assert "Traceback" not in finished.stderr


# ------------------------------------------------------------------ garbage on the sockets


def _receive(sock: zmq.Socket[bytes], timeout_s: float = TASK_TIMEOUT_S) -> list[bytes]:
    assert sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
    return sock.recv_multipart(zmq.NOBLOCK)


GARBAGE: list[list[bytes]] = [
    [b"just one frame of garbage"],
    [b"\x00\xff", b"four", b"frames", b"here"],
    [b""],
]


@pytest.mark.parametrize("side", ["client", "worker"])
def test_garbage_and_a_wrong_version_are_refused_counted_and_survived(
        shared_cluster: LocalCluster, shared_client: Client, raw_dealer: Callable[[str], zmq.Socket[bytes]],
        side: str) -> None:
    endpoint = shared_cluster.client_endpoint if side == "client" else shared_cluster.worker_endpoint
    counter = f"bad_{side}_frames"
    bad_before = shared_client.stats()["transport"].get(counter, 0)
    sock = raw_dealer(endpoint)

    sock.send_multipart([b"AS999", b"get-stats" if side == "client" else b"heartbeat", msgpack.packb([1])])
    refused = protocol.Codec(protocol.TO_CLIENT_MESSAGES).decode(_receive(sock))
    assert isinstance(refused, protocol.Refused)
    assert "AS999" in refused.reason and protocol.VERSION.decode() in refused.reason

    for frames in GARBAGE:
        sock.send_multipart(frames)
    # Right version, nonsense inside: dropped (and counted) without a Refused.
    sock.send_multipart([protocol.VERSION, b"no-such-kind", msgpack.packb([1])])
    sock.send_multipart([protocol.VERSION, b"submit" if side == "client" else b"results", b"\xc1\xc1\xc1"])
    sent = 1 + len(GARBAGE) + 2

    def counted() -> bool:
        return shared_client.stats()["transport"].get(counter, 0) >= bad_before + sent

    wait_until(counted, TASK_TIMEOUT_S, f"the coordinator to count {sent} bad {side} frames")
    assert shared_client.stats()["transport"][counter] == bad_before + sent

    assert shared_cluster.coordinator is not None and shared_cluster.coordinator.poll() is None
    assert sorted(w.worker_id for w in shared_client.workers()) == ["worker-1", "worker-2"]
    handles = shared_client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(20)])
    assert shared_client.gather(handles, timeout=TASK_TIMEOUT_S) == list(range(20))


def test_a_client_message_sent_to_the_worker_endpoint_is_dropped_as_an_unknown_kind(
        shared_cluster: LocalCluster, shared_client: Client, raw_dealer: Callable[[str], zmq.Socket[bytes]]) -> None:
    bad_before = shared_client.stats()["transport"].get("bad_worker_frames", 0)
    sock = raw_dealer(shared_cluster.worker_endpoint)
    sock.send_multipart(protocol.encode(protocol.Submit(1, [protocol.TaskSpec("smuggled", "actorsched.tasks:noop")])))
    wait_until(lambda: shared_client.stats()["transport"].get("bad_worker_frames", 0) == bad_before + 1,
               TASK_TIMEOUT_S, "the coordinator to count the misdirected frame")
    assert shared_client.query("smuggled").state == "NOT_FOUND"
