"""Captured output across real processes: a worker's child captures it, the coordinator keeps it, ``logs`` prints it.

Tasks run in real worker child processes; the output travels in the attempt's outcome to
the coordinator, into its journal with the result, and back through ``query`` and the
``actorsched logs`` command (run in-process and as a real process).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from actorsched import cli
from actorsched.client import Client
from actorsched.localcluster import ROOT, LocalCluster
from actorsched.protocol import MAX_OUTPUT_BYTES

pytestmark = pytest.mark.timeout(120)

TASK_TIMEOUT_S = 30.0


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_logs_prints_what_a_task_wrote_to_stdout_and_stderr_as_a_real_process(
        shared_cluster: LocalCluster, shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:shout", "to stdout", 2, "stdout")
    both = shared_client.submit("actorsched.tasks:shout", "to both", 1, "both")
    raw = shared_client.submit("actorsched.tasks:shout", "through fd 1 and 2", 1, "fd")
    assert shared_client.gather([handle, both, raw], timeout=TASK_TIMEOUT_S) == [20, 16, 38]

    logs = subprocess.run([sys.executable, "-m", "actorsched.cli", "logs", both.task_id,
                           "--coordinator", shared_cluster.client_endpoint],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "to both\nto both\n", "")
    assert shared_client.query(handle.task_id).output == "to stdout\nto stdout\n"
    assert shared_client.query(raw.task_id).output == "through fd 1 and 2\nthrough fd 1 and 2\n"

    quiet = shared_client.submit("actorsched.tasks:echo", 1)
    assert quiet.result(timeout=TASK_TIMEOUT_S) == 1
    assert shared_client.query(quiet.task_id).output == ""


def test_a_task_printing_a_megabyte_keeps_the_last_64_kib_after_the_cut_marker(
        capsys: pytest.CaptureFixture[str], shared_cluster: LocalCluster, shared_client: Client) -> None:
    line = "z" * 99
    handle = shared_client.submit("actorsched.tasks:shout", line, 10_000, "stderr")
    assert handle.result(timeout=TASK_TIMEOUT_S) == 1_000_000
    code, out, err = run_cli(capsys, "logs", handle.task_id, "--coordinator", shared_cluster.client_endpoint)
    assert code == 0 and err == ""
    marker, _, kept = out.partition("\n")
    assert marker == f"…[{1_000_000 - MAX_OUTPUT_BYTES} bytes cut]"
    assert len(kept.encode()) == MAX_OUTPUT_BYTES and kept.endswith(line + "\n")

    code, out, _ = run_cli(capsys, "status", handle.task_id, "--coordinator", shared_cluster.client_endpoint)
    assert code == 0 and f"actorsched logs {handle.task_id}" in out


def test_logs_of_a_failed_task_shows_what_it_printed_and_an_unknown_id_exits_1(
        capsys: pytest.CaptureFixture[str], shared_cluster: LocalCluster, shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:fail_after_printing", "almost there", max_attempts=1)
    info = next(iter(shared_client.as_completed([handle], timeout=TASK_TIMEOUT_S))).info()
    assert info.state == "FAILED" and info.error is not None and info.error.type == "RuntimeError"
    code, out, _ = run_cli(capsys, "logs", handle.task_id, "--coordinator", shared_cluster.client_endpoint)
    assert (code, out) == (0, "almost there\n")

    code, out, err = run_cli(capsys, "logs", "never-submitted-logs", "--coordinator", shared_cluster.client_endpoint)
    assert code == 1 and out == ""
    assert "actorsched logs: task 'never-submitted-logs' is not known" in err


def test_output_survives_a_coordinator_restart(make_cluster: Callable[..., LocalCluster],
                                               ready: Callable[..., Client]) -> None:
    cluster = make_cluster(workers=1, slots=1)
    client = ready(cluster)
    handle = client.submit("actorsched.tasks:shout", "kept in the journal", 3, "both")
    assert handle.result(timeout=TASK_TIMEOUT_S) == 120
    client.close()
    cluster.kill_coordinator()
    cluster.start_coordinator()
    with cluster.client() as again:
        info = again.query(handle.task_id)
        assert info.state == "SUCCEEDED" and info.output == "kept in the journal\n" * 6
        assert again.stats()["queue"]["in_memory"] == 0  # it was read from the journal
