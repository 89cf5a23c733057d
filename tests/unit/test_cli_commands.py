"""Unit tests of the ``actorsched`` command line against a scripted fake coordinator."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from test_client_fake import FakeCoordinator, fake  # noqa: F401  (fixture)

from actorsched import cli, protocol, security
from actorsched.client import CLIENT_KEY_ENV, SERVER_KEY_ENV
from actorsched.protocol import ErrorInfo, Message

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


def run(fake: FakeCoordinator, *argv: str) -> int:  # noqa: F811
    return cli.main([argv[0], "--coordinator", fake.endpoint, "--connect-timeout", "2", *argv[1:]])


def silent(_fake: FakeCoordinator, _message: Message) -> list[Message] | None:
    return None


def test_submit_parses_json_args_and_keywords_and_prints_the_id(fake: FakeCoordinator,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = run(fake, "submit", "actorsched.tasks:echo", "1", "[2, 3]", '"hello"', '"4"', "-5",
               "--priority", "-3", "--id", "s1", "--kw", "n=7", "--kw", 'label="x y"', "--timeout-s", "2.5",
               "--max-attempts", "2", "--dep", "d1", "--dep", "d2", "--retry-on", "OSError",
               "--retry-on", "mod.Flaky", "--tag", "gpu", "--tag", "big")
    assert code == 0
    assert capsys.readouterr().out == "s1\n"
    (spec,) = fake.next_of(protocol.Submit).tasks
    assert spec == protocol.TaskSpec("s1", "actorsched.tasks:echo", [1, [2, 3], "hello", "4", -5],
                                     {"n": 7, "label": "x y"}, -3, ["d1", "d2"], 2.5, 2, ["OSError", "mod.Flaky"],
                                     ["gpu", "big"])


@pytest.mark.parametrize(("argv", "bad", "hint"), [
    (["a.b:c", '{"a": 1'], """'{"a": 1'""", """'"{\\"a\\": 1"'"""),
    (["a.b:c", "hello"], "'hello'", """'"hello"'"""),
    (["a.b:c", "--kw", "who=plain text"], "'plain text'", """'"plain text"'"""),
])
def test_an_argument_that_is_not_json_exits_2_showing_how_to_quote_a_string(
        fake: FakeCoordinator, capsys: pytest.CaptureFixture[str],  # noqa: F811
        argv: list[str], bad: str, hint: str) -> None:
    assert run(fake, "submit", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("actorsched submit: ") and err.count("\n") == 1
    assert f"{bad} is not valid JSON" in err and err.rstrip().endswith(hint), err
    assert fake.received.empty()


def test_submit_json_prints_the_task_id_as_an_object(fake: FakeCoordinator,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "submit", "actorsched.tasks:noop", "--json") == 0
    task_id = json.loads(capsys.readouterr().out)["task_id"]
    assert len(task_id) == 32


@pytest.mark.parametrize(("argv", "fragment"), [
    (["submit", "not-a-function"], "package.module:function"),
    (["submit", "a.b:c", "--kw", "novalue"], "KEY=VALUE"),
    (["submit", "a.b:c", "--priority", "2000000"], "priority"),
])
def test_invalid_submits_exit_2_with_one_line_and_send_nothing(fake: FakeCoordinator,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str],
                                                               argv: list[str], fragment: str) -> None:
    assert run(fake, *argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert fake.received.empty()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["status"]) == 2
    assert cli.main(["result", "x", "--timeout", "-1"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "submit" in capsys.readouterr().out


def test_bad_coordinator_endpoint_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stats", "--coordinator", "localhost"]) == 2
    assert "tcp://HOST:PORT" in capsys.readouterr().err


def test_unreachable_coordinator_exits_2_with_a_hint(fake: FakeCoordinator,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake.handler = silent
    assert cli.main(["stats", "--coordinator", fake.endpoint, "--timeout", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "no answer from coordinator" in err and "ACTORSCHED_COORDINATOR" in err and "Traceback" not in err


def test_status_prints_the_task_and_exits_1_when_failed_or_not_found(fake: FakeCoordinator,  # noqa: F811
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake.finish("st", "FAILED", error=ErrorInfo("RuntimeError", "boom"), output="oops\n")
    fake.finish("ok", value=3)
    assert run(fake, "status", "st") == 1  # as the README says: 1 for a failed task
    out = capsys.readouterr().out
    assert "state     FAILED" in out and "error     RuntimeError: boom" in out and "worker    w1" in out
    assert "output    5 bytes (actorsched logs st)" in out
    assert run(fake, "status", "st", "--json") == 1
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "RuntimeError"
    assert run(fake, "status", "ok") == 0
    assert run(fake, "status", "ghost") == 1
    assert "not known" in capsys.readouterr().err


def test_result_prints_the_value_as_json(fake: FakeCoordinator, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    fake.finish("r", value={"a": [1, 2]})
    assert run(fake, "result", "r", "--timeout", "5") == 0
    assert json.loads(capsys.readouterr().out) == {"a": [1, 2]}


def test_result_of_a_failed_task_exits_1_with_the_error_on_stderr(fake: FakeCoordinator,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake.finish("rf", "FAILED", error=ErrorInfo("ZeroDivisionError", "division by zero"))
    assert run(fake, "result", "rf") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "ZeroDivisionError: division by zero" in captured.err
    assert run(fake, "result", "nobody") == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_result_timeout_exits_2(fake: FakeCoordinator, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    run(fake, "submit", "a.b:c", "--id", "slow")
    assert run(fake, "result", "slow", "--timeout", "0.2") == 2
    assert "not finished after 0.2 s" in capsys.readouterr().err


def test_cancel_lists_cancelled_tasks_and_exits_1_when_nothing_was(fake: FakeCoordinator,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run(fake, "submit", "a.b:c", "--id", "victim")
    capsys.readouterr()
    assert run(fake, "cancel", "victim") == 0
    assert capsys.readouterr().out == "cancelled victim\n"
    assert run(fake, "cancel", "victim", "--no-cascade") == 1
    assert "already CANCELLED" in capsys.readouterr().err
    assert fake.next_of(protocol.Cancel).cascade is True
    assert fake.next_of(protocol.Cancel).cascade is False


def test_wait_prints_one_line_per_task_and_exits_1_if_any_failed(fake: FakeCoordinator,  # noqa: F811
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake.finish("w1", value=1)
    fake.finish("w2", "FAILED", error=ErrorInfo("ValueError", "bad"))
    fake.finish("w3", "CANCELLED")
    assert run(fake, "wait", "w1", "w2", "w3", "--timeout", "5") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["w1 SUCCEEDED 1", "w2 FAILED ValueError: bad", "w3 CANCELLED cancelled"]
    assert "3/3 done, 2 failed" in captured.err


def test_wait_reports_unknown_ids_as_not_found_not_as_failures(fake: FakeCoordinator,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake.finish("k1", value=1)
    assert run(fake, "wait", "k1", "ghost-1", "ghost-2", "--timeout", "5") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["k1 SUCCEEDED 1", "ghost-1 NOT_FOUND no such task",
                                         "ghost-2 NOT_FOUND no such task"]
    assert "3/3 done, 0 failed, 2 not found" in captured.err
    assert "2 id(s) not known to the coordinator" in captured.err and "'ghost-1', 'ghost-2'" in captured.err


def test_wait_for_successes_exits_0_and_json_lists_infos(fake: FakeCoordinator,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake.finish("ok1", value="a")
    fake.finish("ok2", value="b")
    assert run(fake, "wait", "ok1", "ok2", "--json") == 0
    assert [i["value"] for i in json.loads(capsys.readouterr().out)] == ["a", "b"]


def test_wait_timeout_exits_2_and_shows_what_is_left(fake: FakeCoordinator,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run(fake, "submit", "a.b:c", "--id", "left")
    fake.finish("done", value=0)
    assert run(fake, "wait", "done", "left", "--timeout", "0.3") == 2
    captured = capsys.readouterr()
    assert "left QUEUED (not finished)" in captured.out and "done SUCCEEDED 0" in captured.out
    assert "1/2 done" in captured.err and "1 of 2 task(s) not finished" in captured.err


def test_workers_prints_a_table(fake: FakeCoordinator, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert run(fake, "workers") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "host", "pid", "slots", "running", "load", "state", "breaker", "heartbeat_age"]
    assert row.split() == ["w1", "host-a", "4242", "4", "1", "0.25", "ALIVE", "closed", "0.4s"]
    assert run(fake, "workers", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["worker_id"] == "w1"


def test_stats_prints_flattened_key_value_lines(fake: FakeCoordinator,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "stats") == 0
    assert capsys.readouterr().out.splitlines() == ["tasks_queued: 3", "workers.alive: 1"]
    assert run(fake, "stats", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"tasks_queued": 3, "workers": {"alive": 1}}


def test_submit_rejected_by_the_coordinator_exits_2(fake: FakeCoordinator,  # noqa: F811
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake.handler = lambda f, m: [protocol.ErrorReply(m.request_id, "queue-full", "full")]  # type: ignore[attr-defined]
    assert run(fake, "submit", "a.b:c") == 2
    assert "queue-full" in capsys.readouterr().err


def test_tasks_prints_a_table_newest_first_and_json_rows(fake: FakeCoordinator,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    fake.finish("older", value=1, updated_at=now - 125)
    fake.finish("newer", "FAILED", error=ErrorInfo("ValueError", "bad"), updated_at=now - 3)
    with mock.patch("actorsched.cli.time.time", return_value=now):  # the ages do not drift on a loaded machine
        assert run(fake, "tasks") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "state", "name", "attempt", "worker", "age"]
    assert [row.split() for row in rows] == [["newer", "FAILED", "actorsched.tasks:echo", "1", "w1", "3.0s"],
                                             ["older", "SUCCEEDED", "actorsched.tasks:echo", "1", "w1", "2.1m"]]
    assert run(fake, "tasks", "--state", "failed", "--json", "--limit", "5") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["task_id"], row["state"], row["error"]["type"]) == ("newer", "FAILED", "ValueError")
    first = fake.next_of(protocol.ListTasks)
    second = fake.next_of(protocol.ListTasks)
    assert (first.state, first.limit) == (None, 100)
    assert (second.state, second.name, second.limit) == ("FAILED", None, 5)


def test_tasks_says_when_the_coordinator_cut_its_search(fake: FakeCoordinator,  # noqa: F811
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(3):
        fake.finish(f"t{n}", value=n)
    assert run(fake, "tasks", "--limit", "2", "--id", "t") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    assert "stopped searching" in captured.err and "--state" in captured.err


@pytest.mark.parametrize("argv", [["tasks", "--state", "DONE"], ["tasks", "--limit", "0"],
                                  ["tasks", "--limit", "10001"]])
def test_tasks_refuses_a_bad_state_or_limit_as_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                             argv: list[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_logs_prints_the_captured_output_and_exits_1_for_an_unknown_id(fake: FakeCoordinator,  # noqa: F811
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake.finish("talker", value=None, output="line one\nline two")
    fake.finish("quiet", value=None)
    assert run(fake, "logs", "talker") == 0
    assert capsys.readouterr().out == "line one\nline two\n"
    assert run(fake, "logs", "quiet") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "wrote nothing" in captured.err
    assert run(fake, "logs", "talker", "--json") == 0
    assert json.loads(capsys.readouterr().out)["output"] == "line one\nline two"
    assert run(fake, "logs", "nobody") == 1
    err = capsys.readouterr().err
    assert err.startswith("actorsched logs: ") and "'nobody' is not known" in err


def test_a_command_names_itself_and_the_address_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        endpoint = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        started = time.monotonic()
        assert cli.main(["workers", "--coordinator", endpoint]) == 2
        took = time.monotonic() - started
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err.startswith("actorsched workers: no connection to coordinator at " + endpoint), err
    assert "is it running" in err and err.count("\n") == 1 and "stats" not in err
    assert took < 5.0  # ~2 s, not the 10 s an answer may take


def test_nothing_answering_is_not_blamed_on_curve_keys_unless_the_client_has_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that requires keys says so in the handshake (the client reports that refusal); when
    nothing answers at all on loopback, a client without keys must not be sent looking for keys.  Beyond
    loopback, where a coordinator admits only CURVE peers, a client without keys is told it needs them."""
    monkeypatch.delenv(SERVER_KEY_ENV, raising=False)
    monkeypatch.delenv(CLIENT_KEY_ENV, raising=False)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, never listening: nothing answers
    holder.bind(("127.0.0.1", 0))
    with holder:
        dead = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        assert cli.main(["workers", "--coordinator", dead, "--connect-timeout", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"actorsched workers: no connection to coordinator at {dead}"), err
    assert "CURVE" not in err and "key" not in err and err.count("\n") == 1, err
    assert "Start it with actorsched-coordinator (bin/coordinator in a checkout)" in err

    beyond_loopback = "tcp://192.0.2.1:7700"  # TEST-NET-1: nothing answers there
    assert cli.main(["workers", "--coordinator", beyond_loopback, "--connect-timeout", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "admits only CURVE clients: pass --server-key and --key" in err, err

    security.generate(tmp_path, "coordinator")
    security.generate(tmp_path, "alice")
    assert cli.main(["workers", "--coordinator", beyond_loopback, "--connect-timeout", "0.3",
                     "--server-key", str(tmp_path / "coordinator.key"),
                     "--key", str(tmp_path / "alice.key_secret")]) == 2
    err = capsys.readouterr().err
    assert "Or it refused this client's CURVE keys" in err and "alice.key_secret" in err, err


def test_keygen_says_where_each_half_goes_for_the_coordinators_pair_and_for_others(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The coordinator's public key goes to workers and clients; anyone else's into the coordinator's allowlist."""
    assert cli.main(["keygen", str(tmp_path), "coordinator"]) == 0
    out = capsys.readouterr().out
    assert "public key (copy it to every worker and client: their --server-key" in out
    assert f"): {tmp_path / 'coordinator.key'}\n" in out and "secret_key_file" in out
    assert "allowlist" not in out and "worker_keys_dir" not in out

    assert cli.main(["keygen", str(tmp_path), "node1"]) == 0
    out = capsys.readouterr().out
    assert "public key (copy it into the coordinator's [security] worker_keys_dir for a worker, or " \
           f"client_keys_dir for a client): {tmp_path / 'node1.key'}\n" in out
    assert f"{tmp_path / 'node1.key_secret'}\n" in out and "named 'coordinator'" in out


class _ClosedPipe(io.StringIO):
    """A stdout whose reader went away (``| head``): every write and flush is EPIPE."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_into_a_closed_pipe_exits_141_quietly_in_process(
        fake: FakeCoordinator, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake.handler = lambda f, m: [protocol.WorkersReply(m.request_id, [])]  # type: ignore[attr-defined]
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert run(fake, "workers") == cli.EXIT_BROKEN_PIPE == 141
    assert cli.main(["keygen", str(tmp_path), "w"]) == 141
    assert capsys.readouterr().err == ""


def test_output_into_a_closed_pipe_exits_141_without_a_traceback_in_a_real_process(tmp_path: Path) -> None:
    """What ``actorsched ... | head`` meets once head has read what it wanted: the pipe's read end is closed
    before the command writes, so its writes fail with EPIPE (it printed a BrokenPipeError traceback)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run([sys.executable, "-m", "actorsched.cli", "keygen", str(tmp_path), "w"],
                                  cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (finished.returncode, finished.stderr) == (141, "")
    assert (tmp_path / "w.key_secret").is_file()  # the command did its work; only its output was cut
