"""The ``actorsched`` command warns when tasks wait and no worker is connected to run them.

A real coordinator started without workers, the CLI as real processes: ``stats`` warns on
stderr (its stdout, ``--json`` included, unchanged); ``wait`` and ``result`` warn once while
they wait, and again after workers came and left; once a worker ran the task, nothing warns.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from actorsched import cli
from actorsched.client import Client
from actorsched.localcluster import ROOT, LocalCluster, wait_until

pytestmark = pytest.mark.timeout(120)

TASK_TIMEOUT_S = 30.0  # bound on every wait: generous for a noisy shared CI machine
UNPLACEABLE_TAG = "cli-no-worker-test-tag"  # no worker has it unless a test starts one with it


def run_cli_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m actorsched.cli ARGV`` as a real process, bounded by a timeout."""
    return subprocess.run([sys.executable, "-m", "actorsched.cli", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": warning: " in line]


@pytest.fixture
def bare(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    """A coordinator with no worker (workers are added by the tests, and stopped with it)."""
    return make_cluster(workers=0, coordinator_args=["--worker-timeout", "2"])


@pytest.fixture
def client(bare: LocalCluster, connect: Callable[..., Client]) -> Client:
    client = connect(bare)
    client.wait_connected(TASK_TIMEOUT_S)
    return client


class StderrLines:
    """The lines a running process writes on a pipe, read with a bound on each wait."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.fd = proc.stderr.fileno()
        self.buffer = b""
        self.lines: list[str] = []
        self.ended = False

    def next_matching(self, needle: str, timeout_s: float) -> str:
        """The next line holding ``needle`` (lines before it are kept in ``lines``); AssertionError past the bound."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.lines)
        with selectors.DefaultSelector() as selector:
            selector.register(self.fd, selectors.EVENT_READ)
            while True:
                for line in self.lines[seen:]:
                    seen += 1
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    raise AssertionError(f"no line with {needle!r} within {timeout_s} s; stderr so far: "
                                         f"{self.lines!r}")
                if selector.select(left):
                    self._read()

    def _read(self) -> None:
        chunk = os.read(self.fd, 65536)
        self.ended = not chunk
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines += [line.decode(errors="replace") for line in complete]


@pytest.fixture
def start_cli() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``start_cli(*argv)`` -> the CLI as a running process; killed at teardown if still running."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "actorsched.cli", *argv], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_stats_wait_and_result_warn_while_no_worker_is_connected_and_stop_once_a_worker_ran_the_task(
        bare: LocalCluster, client: Client) -> None:
    endpoint = bare.client_endpoint
    nothing_queued = run_cli_process("stats", "--coordinator", endpoint)
    assert (nothing_queued.returncode, nothing_queued.stderr) == (0, "")  # no worker, but nothing waits for one

    submitted = run_cli_process("submit", "actorsched.tasks:echo", "5", "--coordinator", endpoint)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()

    stats = run_cli_process("stats", "--coordinator", endpoint)
    assert stats.returncode == 0, stats.stderr
    lines = dict(line.split(": ", 1) for line in stats.stdout.splitlines())  # stdout: key: value lines only
    assert lines["workers.workers"] == "0" and lines["queue.states.QUEUED"] == "1"
    assert "warning" not in stats.stdout
    assert warnings_in(stats.stderr) == stats.stderr.splitlines(), stats.stderr
    (warning,) = warnings_in(stats.stderr)
    assert warning.startswith(f"actorsched stats: warning: 1 task(s) waiting (QUEUED 1) and no worker is "
                              f"connected to the coordinator at {endpoint}; ")
    assert "actorsched-worker --connect tcp://127.0.0.1:PORT" in warning

    as_json = run_cli_process("stats", "--json", "--coordinator", endpoint)
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)  # stdout holds the JSON alone
    assert parsed["workers"]["workers"] == 0 and parsed["queue"]["states"]["QUEUED"] == 1
    assert len(warnings_in(as_json.stderr)) == 1, as_json.stderr

    # Longer than one check interval: the first check warns, the next one (no change since) stays quiet.
    started = time.monotonic()
    waited = run_cli_process("wait", task_id, "--timeout", str(cli.WORKER_CHECK_S + 1), "--coordinator", endpoint)
    assert time.monotonic() - started < cli.WORKER_CHECK_S + 20  # the wait ends at its --timeout
    assert waited.returncode == 2
    assert waited.stdout == f"{task_id} QUEUED (not finished)\n"
    assert warnings_in(waited.stderr) == [
        f"actorsched wait: warning: task {task_id!r} is QUEUED and no worker is connected to the coordinator at "
        f"{endpoint}; still waiting, but nothing runs until one connects: {cli._start_worker_hint(endpoint)}"]
    assert "not finished after" in waited.stderr  # it waited to its timeout all the same

    waited_json = run_cli_process("wait", task_id, "--json", "--timeout", "1", "--coordinator", endpoint)
    assert waited_json.returncode == 2
    assert [info["state"] for info in json.loads(waited_json.stdout)] == ["QUEUED"]
    assert len(warnings_in(waited_json.stderr)) == 1, waited_json.stderr

    result = run_cli_process("result", task_id, "--timeout", "1", "--coordinator", endpoint)
    assert (result.returncode, result.stdout) == (2, "")
    (warning,) = warnings_in(result.stderr)
    assert warning.startswith(f"actorsched result: warning: task {task_id!r} is QUEUED and no worker is connected")
    assert "not finished after 1.0 s" in result.stderr

    bare.add_worker()
    bare.wait_for_workers(client, 1, timeout_s=TASK_TIMEOUT_S)
    result = run_cli_process("result", task_id, "--timeout", str(TASK_TIMEOUT_S), "--coordinator", endpoint)
    assert (result.returncode, result.stdout, result.stderr) == (0, "5\n", "")

    for argv in (["stats"], ["stats", "--json"]):
        stats = run_cli_process(*argv, "--coordinator", endpoint)
        assert (stats.returncode, stats.stderr) == (0, ""), argv
    assert json.loads(stats.stdout)["queue"]["states"]["SUCCEEDED"] == 1


def test_wait_warns_again_only_after_workers_came_and_left(bare: LocalCluster, client: Client,
                                                           start_cli: Callable[..., subprocess.Popen[bytes]]) -> None:
    # A task no untagged worker may take: it stays QUEUED while such a worker comes and goes.
    task_id = client.submit("actorsched.tasks:echo", 1, tags=[UNPLACEABLE_TAG]).task_id
    waiting = start_cli("wait", task_id, "--timeout", "90", "--coordinator", bare.client_endpoint)
    stderr = StderrLines(waiting)
    first = stderr.next_matching(": warning: ", TASK_TIMEOUT_S)
    assert first.startswith(f"actorsched wait: warning: task {task_id!r} is QUEUED and no worker is connected")

    worker = bare.add_worker()  # no tag: connected, yet the task stays QUEUED
    bare.wait_for_workers(client, 1, timeout_s=TASK_TIMEOUT_S)
    worker.terminate()  # holds nothing: drains at once and says goodbye
    assert worker.wait(TASK_TIMEOUT_S) == 0
    wait_until(lambda: not client.workers(), TASK_TIMEOUT_S, "the coordinator to forget the worker")
    assert client.query(task_id).state == "QUEUED"

    second = stderr.next_matching(": warning: ", cli.WORKER_CHECK_S + TASK_TIMEOUT_S)
    assert second == first

    bare.add_worker("--tag", UNPLACEABLE_TAG)  # one that may run it: the wait ends
    out, rest = waiting.communicate(timeout=60)  # the rest of stderr, after what StderrLines read
    stderr.lines += (stderr.buffer + rest).decode(errors="replace").splitlines()
    assert waiting.returncode == 0, stderr.lines
    assert out.decode() == f"{task_id} SUCCEEDED 1\n"
    assert len(warnings_in("\n".join(stderr.lines))) == 2, stderr.lines


def test_the_worker_hint_names_the_default_worker_port_beside_the_default_client_port() -> None:
    assert "actorsched-worker --connect tcp://10.0.0.5:7701`" in cli._start_worker_hint("tcp://10.0.0.5:7700")
    assert "actorsched-worker --connect tcp://[::1]:PORT`" in cli._start_worker_hint("tcp://[::1]:9000")
