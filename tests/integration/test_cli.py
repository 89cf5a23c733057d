"""The ``actorsched`` command against a real cluster: output, --json, exit codes, a dead coordinator.

Most tests call ``cli.main(argv)`` in-process and read the output with ``capsys``; a few run
``python -m actorsched.cli`` as a real subprocess, which is what a user types.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from actorsched import cli
from actorsched.client import Client
from actorsched.config import COORDINATOR_ENV
from actorsched.localcluster import ROOT, LocalCluster

pytestmark = pytest.mark.timeout(90)

TASK_TIMEOUT_S = 30.0  # bound on every wait: generous for a noisy shared CI machine


@pytest.fixture
def endpoint(shared_cluster: LocalCluster, shared_client: Client) -> Iterator[str]:
    """The shared cluster's client endpoint, once its workers registered (and checked after the test)."""
    yield shared_cluster.client_endpoint


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m actorsched.cli ARGV`` as a real process, bounded by a timeout."""
    return subprocess.run([sys.executable, "-m", "actorsched.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def submit(capsys: pytest.CaptureFixture[str], endpoint: str, *argv: str) -> str:
    code, out, err = run_cli(capsys, "submit", "--coordinator", endpoint, *argv)
    assert code == 0, err
    return out.strip()


# ------------------------------------------------------------------ as a real process


def test_submit_then_result_as_real_processes_prints_the_id_then_the_value(endpoint: str) -> None:
    env = {**os.environ, COORDINATOR_ENV: endpoint}  # submit finds the coordinator through the environment
    submitted = run_cli_process("submit", "actorsched.tasks:echo", "5", env=env)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    assert task_id and len(task_id.split()) == 1

    result = run_cli_process("result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5\n"
    assert result.stderr == ""


def test_a_coordinator_that_is_not_running_exits_2_with_a_one_line_reason_in_a_real_process(
        dead_endpoint: str) -> None:
    started = time.monotonic()
    finished = run_cli_process("status", "some-id", "--coordinator", dead_endpoint)
    took = time.monotonic() - started
    assert finished.returncode == 2
    assert finished.stdout == ""
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"actorsched status: no connection to coordinator at {dead_endpoint} within 2 s")
    assert "running" in lines[0] and "get-stats" not in lines[0]
    assert "Traceback" not in finished.stderr
    assert took < 8.0, took  # ~2 s and the interpreter's start, not the 10 s an answer may take


def test_a_client_pointed_at_the_worker_endpoint_is_told_the_client_endpoint(shared_cluster: LocalCluster,
                                                                             endpoint: str) -> None:
    finished = run_cli_process("workers", "--coordinator", shared_cluster.worker_endpoint)
    assert finished.returncode == 2
    assert finished.stderr.startswith("actorsched workers: coordinator at " + shared_cluster.worker_endpoint)
    assert f"clients connect to its client endpoint {endpoint}" in finished.stderr


def test_a_listing_piped_into_a_reader_that_stopped_exits_141_without_a_traceback(endpoint: str) -> None:
    """``actorsched tasks | head``, head gone before the listing is written: the read end is closed first,
    so the command's writes fail with EPIPE; it used to print a BrokenPipeError traceback."""
    submit_id = run_cli_process("submit", "actorsched.tasks:echo", "1", "--coordinator", endpoint)
    assert submit_id.returncode == 0, submit_id.stderr  # at least one row to print
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run([sys.executable, "-m", "actorsched.cli", "tasks", "--coordinator", endpoint],
                                  cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (finished.returncode, finished.stderr) == (141, "")


# ------------------------------------------------------------------ submit, result, status


def test_submit_prints_an_id_and_result_prints_the_value(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:echo", "5")
    code, out, err = run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))
    assert (code, out, err) == (0, "5\n", "")


def test_submit_passes_json_arguments_keywords_and_a_chosen_id(capsys: pytest.CaptureFixture[str],
                                                               endpoint: str) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:echo", "[1, 2]", '"plain text"', "--kw", 'opts={"a": null}',
                     "--id", "cli-chosen-id", "--priority", "-3")
    assert task_id == "cli-chosen-id"
    code, out, _ = run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))
    assert code == 0
    assert json.loads(out) == [[[1, 2], "plain text"], {"opts": {"a": None}}]
    code, out, _ = run_cli(capsys, "status", task_id, "--coordinator", endpoint)
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["state"] == "SUCCEEDED" and rows["priority"] == "-3" and rows["attempts"] == "1"
    assert rows["worker"] in {"worker-1", "worker-2"}


def test_json_outputs_of_submit_result_and_status_parse_as_json(capsys: pytest.CaptureFixture[str],
                                                                 endpoint: str) -> None:
    code, out, _ = run_cli(capsys, "submit", "--json", "--coordinator", endpoint, "actorsched.tasks:add", "2", "3")
    assert code == 0
    task_id = json.loads(out)["task_id"]

    code, out, _ = run_cli(capsys, "result", task_id, "--json", "--coordinator", endpoint,
                           "--timeout", str(TASK_TIMEOUT_S))
    assert code == 0
    info = json.loads(out)
    assert (info["task_id"], info["state"], info["value"], info["attempt"]) == (task_id, "SUCCEEDED", 5, 1)

    code, out, _ = run_cli(capsys, "status", task_id, "--json", "--coordinator", endpoint)
    assert code == 0
    assert json.loads(out)["state"] == "SUCCEEDED"


def test_status_of_an_unknown_id_exits_1(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    code, out, err = run_cli(capsys, "status", "cli-unknown-id", "--coordinator", endpoint)
    assert code == 1
    assert out == "cli-unknown-id NOT_FOUND\n"
    assert "cli-unknown-id" in err and "not known" in err


def test_an_argument_that_is_not_json_is_refused_showing_how_to_quote_it(capsys: pytest.CaptureFixture[str],
                                                                        endpoint: str) -> None:
    code, out, err = run_cli(capsys, "submit", "--coordinator", endpoint, "actorsched.tasks:echo", '{"a": 1')
    assert code == 2 and out == ""
    assert err.startswith("actorsched submit: argument 1 '{\"a\": 1' is not valid JSON")
    assert """'"{\\"a\\": 1"'""" in err


def test_status_of_a_failed_task_exits_1(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:fail", "--max-attempts", "3", "--retry-on", "KeyError",
                     "--timeout-s", "20")  # a RuntimeError is not retried
    assert run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))[0] == 1
    code, out, _ = run_cli(capsys, "status", task_id, "--coordinator", endpoint)
    assert code == 1 and "state     FAILED" in out and "attempts  1" in out


def test_result_of_a_failed_task_exits_1_with_the_error_on_stderr(capsys: pytest.CaptureFixture[str],
                                                                   endpoint: str) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:fail", '"cli boom"', "--max-attempts", "1")
    code, out, err = run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))
    assert code == 1
    assert out == ""
    assert task_id in err and "FAILED" in err and "RuntimeError: cli boom" in err
    assert len(err.strip().splitlines()) == 1


def test_result_that_times_out_exits_2_and_the_task_keeps_running(capsys: pytest.CaptureFixture[str],
                                                                   endpoint: str) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:sleep", "1.5")
    code, _, err = run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", "0.2")
    assert code == 2
    assert "not finished" in err
    code, out, _ = run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))
    assert (code, out) == (0, "1.5\n")


def test_submit_of_a_bad_task_name_exits_2_without_a_traceback(capsys: pytest.CaptureFixture[str],
                                                                endpoint: str, shared_client: Client) -> None:
    submitted = shared_client.stats()["queue"]["submitted"]
    code, out, err = run_cli(capsys, "submit", "--coordinator", endpoint, "no-colon-here")
    assert code == 2 and out == ""
    assert "package.module:function" in err and "Traceback" not in err
    assert shared_client.stats()["queue"]["submitted"] == submitted


# ------------------------------------------------------------------ wait, cancel


def test_wait_for_several_ids_exits_0_when_all_succeed(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    first = submit(capsys, endpoint, "actorsched.tasks:echo", "1")
    second = submit(capsys, endpoint, "actorsched.tasks:echo", '"two"')
    code, out, _ = run_cli(capsys, "wait", first, second, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))
    assert code == 0
    assert out.splitlines() == [f"{first} SUCCEEDED 1", f'{second} SUCCEEDED "two"']


def test_wait_exits_1_when_one_task_failed(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    good = submit(capsys, endpoint, "actorsched.tasks:echo", "1")
    bad = submit(capsys, endpoint, "actorsched.tasks:fail", "--max-attempts", "1")
    code, out, err = run_cli(capsys, "wait", good, bad, "--json", "--coordinator", endpoint,
                             "--timeout", str(TASK_TIMEOUT_S))
    assert code == 1
    assert [info["state"] for info in json.loads(out)] == ["SUCCEEDED", "FAILED"]
    assert "1 failed" in err


def test_cancel_of_an_unknown_id_exits_1(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    code, out, err = run_cli(capsys, "cancel", "cli-never-submitted", "--coordinator", endpoint)
    assert code == 1
    assert out == ""
    assert "nothing cancelled" in err and "not known" in err


def test_cancel_of_a_finished_task_exits_1_and_says_it_is_finished(capsys: pytest.CaptureFixture[str],
                                                                    endpoint: str) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:noop")
    assert run_cli(capsys, "result", task_id, "--coordinator", endpoint, "--timeout", str(TASK_TIMEOUT_S))[0] == 0
    code, _, err = run_cli(capsys, "cancel", task_id, "--json", "--coordinator", endpoint)
    assert code == 1
    assert "already SUCCEEDED" in err


def test_cancel_of_a_running_task_exits_0_and_prints_what_was_cancelled(capsys: pytest.CaptureFixture[str],
                                                                         endpoint: str, shared_client: Client) -> None:
    task_id = submit(capsys, endpoint, "actorsched.tasks:sleep", "60")
    code, out, _ = run_cli(capsys, "cancel", task_id, "--coordinator", endpoint)
    assert (code, out) == (0, f"cancelled {task_id}\n")
    assert shared_client.query(task_id).state == "CANCELLED"


# ------------------------------------------------------------------ workers, stats


def test_workers_lists_both_workers(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    code, out, _ = run_cli(capsys, "workers", "--coordinator", endpoint)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["id", "host", "pid", "slots", "running"]
    assert sorted(row.split()[0] for row in rows) == ["worker-1", "worker-2"]

    code, out, _ = run_cli(capsys, "workers", "--json", "--coordinator", endpoint)
    assert code == 0
    workers = json.loads(out)
    assert sorted(w["worker_id"] for w in workers) == ["worker-1", "worker-2"]
    assert all(w["slots"] == 2 and w["state"] == "ALIVE" for w in workers)


def test_stats_shows_the_workers_and_task_counters(capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    code, out, _ = run_cli(capsys, "stats", "--coordinator", endpoint)
    assert code == 0
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["workers.workers"] == "2" and lines["workers.slots"] == "4"
    assert "queue.states.SUCCEEDED" in lines

    code, out, _ = run_cli(capsys, "stats", "--json", "--coordinator", endpoint)
    assert code == 0
    stats = json.loads(out)
    assert stats["workers"]["workers"] == 2 and "transport" in stats


# ------------------------------------------------------------------ no coordinator


def test_a_malformed_coordinator_endpoint_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "workers", "--coordinator", "not-an-endpoint", "--connect-timeout", "0.3")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "not-an-endpoint" in err


@pytest.mark.parametrize("argv", [
    ["submit", "actorsched.tasks:echo", "5"],
    ["status", "some-id"],
    ["result", "some-id"],
    ["wait", "some-id", "other-id"],
    ["cancel", "some-id"],
    ["workers"],
    ["stats", "--json"],
], ids=lambda argv: argv[0])
def test_every_command_exits_2_with_one_line_when_no_coordinator_answers(capsys: pytest.CaptureFixture[str],
                                                                          dead_endpoint: str,
                                                                          argv: list[str]) -> None:
    code, out, err = run_cli(capsys, *argv, "--coordinator", dead_endpoint, "--connect-timeout", "0.3")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert dead_endpoint in err and "Traceback" not in err
