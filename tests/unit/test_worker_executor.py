"""The worker's child-process pool, with real child processes, and its task allowlist."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from multiprocessing import forkserver
from multiprocessing.connection import wait
from pathlib import Path

import msgpack
import psutil
import pytest
from test_worker_process import ROOT, FakeCoordinator, welcome

from actorsched.protocol import Assign, Assignment, AttemptRef, Draining, Goodbye, TaskOutcome
from actorsched.worker.executor import (
    _HEADER,
    Executor,
    Job,
    _read_message,
    _write_message,
    check_task_name,
    error_type_name,
)

TASKS = "actorsched.tasks"


@pytest.fixture
def executor() -> Iterator[Executor]:
    pool = Executor(2)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()


def job(task_id: str, function: str, *args: object, timeout_s: float = 0.0, attempt: int = 1) -> Job:
    return Job(task_id, 7, attempt, f"{TASKS}:{function}", list(args), {}, timeout_s)


def drive(pool: Executor, until: Callable[[list[TaskOutcome]], bool], timeout_s: float = 10.0,
          batches: list[list[str]] | None = None) -> list[TaskOutcome]:
    """Run the executor the way the event loop does until ``until(outcomes)`` holds.

    ``batches`` collects the task ids each dispatch handed out.
    """
    outcomes: list[TaskOutcome] = []
    deadline = time.monotonic() + timeout_s
    while not until(outcomes):
        now = time.monotonic()
        assert now < deadline, f"gave up after {timeout_s}s; outcomes so far: {outcomes}"
        started = pool.dispatch(now)
        if started and batches is not None:
            batches.append([job.task_id for job in started])
        wake = min(pool.next_deadline(), deadline) - now
        ready = wait(pool.fds(), timeout=max(0.0, min(wake, 0.2)))
        now = time.monotonic()
        outcomes.extend(pool.collect(now, [r if isinstance(r, int) else r.fileno() for r in ready]))
        outcomes.extend(pool.expire(now))
    return outcomes


def count(n: int) -> Callable[[list[TaskOutcome]], bool]:
    return lambda outcomes: len(outcomes) >= n


def by_id(outcomes: list[TaskOutcome]) -> dict[str, TaskOutcome]:
    return {o.task_id: o for o in outcomes}


def test_echo_returns_its_value_with_the_fencing_token(executor: Executor) -> None:
    executor.submit(Job("t1", 7, 3, f"{TASKS}:echo", [{"a": [1, 2.5, "x", b"\x00"]}], {}))
    (outcome,) = drive(executor, count(1))
    assert outcome.ok and outcome.error is None
    assert (outcome.task_id, outcome.epoch, outcome.attempt) == ("t1", 7, 3)
    assert outcome.value == {"a": [1, 2.5, "x", b"\x00"]}
    assert outcome.duration_s >= 0
    assert executor.is_empty()


def test_kwargs_reach_the_task(executor: Executor) -> None:
    executor.submit(Job("t1", 1, 1, f"{TASKS}:echo", [1], {"k": "v"}))
    (outcome,) = drive(executor, count(1))
    assert outcome.value == [[1], {"k": "v"}]


def test_an_exception_gives_type_message_and_traceback(executor: Executor) -> None:
    executor.submit(job("t1", "fail", "boom"))
    (outcome,) = drive(executor, count(1))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.type == "RuntimeError"
    assert outcome.error.message == "boom"
    assert "raise RuntimeError(message)" in outcome.error.traceback


def test_a_missing_function_is_task_not_found(executor: Executor) -> None:
    executor.submit(job("t1", "no_such_function"))
    executor.submit(Job("t2", 1, 1, "no_such_package.mod:f", [], {}))
    outcomes = by_id(drive(executor, count(2)))
    for task_id, expected in (("t1", "has no function 'no_such_function'"), ("t2", "cannot import module")):
        error = outcomes[task_id].error
        assert error is not None and error.type == "TaskNotFound"
        assert expected in error.message


def test_a_timeout_kills_the_child_and_the_slot_is_reused(executor: Executor) -> None:
    executor.submit(job("slow", "sleep", 30, timeout_s=0.3))
    executor.submit(job("slow2", "sleep", 30, timeout_s=0.3))
    outcomes = drive(executor, count(2))
    for outcome in outcomes:
        assert outcome.error is not None and outcome.error.type == "TimedOut"
        assert "0.3s" in outcome.error.message
        assert 0.3 <= outcome.duration_s < 5
    assert executor.children_replaced == 2
    executor.submit(job("next", "echo", "again"))
    (outcome,) = drive(executor, count(1))
    assert outcome.ok and outcome.value == "again"


def test_a_crashing_task_gives_child_process_died_and_the_slot_is_replaced(executor: Executor) -> None:
    executor.submit(job("crash", "crash", 99))
    (outcome,) = drive(executor, count(1))
    assert outcome.error is not None and outcome.error.type == "ChildProcessDied"
    assert "exited with code 99" in outcome.error.message
    executor.submit(job("a", "pid"))
    executor.submit(job("b", "pid"))
    outcomes = drive(executor, count(2))
    assert all(o.ok for o in outcomes)


def test_a_child_killed_from_outside_gives_child_process_died(executor: Executor) -> None:
    executor.submit(job("victim", "sleep", 30))
    executor.submit(job("finder", "pid"))
    # the pid task runs on the other child; the victim's child is the remaining one
    (found,) = drive(executor, count(1))
    running = [s.process.pid for s in executor._slots if s.job is not None]  # noqa: SLF001 - test peeks
    assert found.ok and len(running) == 1
    assert running[0] is not None
    os.kill(running[0], signal.SIGKILL)
    (outcome,) = drive(executor, count(1))
    assert outcome.task_id == "victim"
    assert outcome.error is not None and outcome.error.type == "ChildProcessDied"
    assert "SIGKILL" in outcome.error.message


def test_cancel_of_a_running_task_kills_its_child(executor: Executor) -> None:
    executor.submit(job("long", "sleep", 30))
    executor.dispatch(time.monotonic())
    assert executor.held() == [AttemptRef("long", 7, 1)]
    assert executor.cancel(AttemptRef("long", 7, 2), time.monotonic()) is None  # another attempt: not held
    outcome = executor.cancel(AttemptRef("long", 7, 1), time.monotonic())
    assert outcome is not None and outcome.error is not None
    assert outcome.error.type == "Cancelled" and "while running" in outcome.error.message
    assert executor.is_empty() and executor.children_replaced == 1
    executor.submit(job("after", "echo", 1))
    (after,) = drive(executor, count(1))
    assert after.ok


def test_cancel_of_a_queued_task_drops_it(executor: Executor) -> None:
    for name in ("a", "b", "queued"):
        executor.submit(job(name, "sleep", 0.01))
    outcome = executor.cancel(AttemptRef("queued", 7, 1), time.monotonic())
    assert outcome is not None and outcome.error is not None and outcome.error.type == "Cancelled"
    assert "before it started" in outcome.error.message
    outcomes = drive(executor, lambda _: executor.is_empty())
    assert sorted(o.task_id for o in outcomes) == ["a", "b"]
    assert executor.children_replaced == 0


def test_a_value_msgpack_cannot_carry_is_result_not_serializable(executor: Executor) -> None:
    executor.submit(Job("plain", 1, 1, f"{TASKS}:add", [], {}))  # control: a plain value
    executor.submit(Job("bad", 1, 1, "builtins:frozenset", [], {}))
    executor.submit(Job("intkeys", 1, 1, "builtins:dict", [[[1, "x"]]], {}))
    outcomes = by_id(drive(executor, count(3)))
    assert outcomes["plain"].ok and outcomes["plain"].value == 0
    for task_id, type_name in (("bad", "frozenset"), ("intkeys", None)):
        error = outcomes[task_id].error
        assert error is not None and error.type == "ResultNotSerializable", outcomes[task_id]
        assert "plain data" in error.message
        if type_name:
            assert type_name in error.message


def test_a_task_raising_system_exit_is_reported_and_the_child_survives(executor: Executor) -> None:
    executor.submit(Job("exit", 1, 1, "sys:exit", [3], {}))
    (outcome,) = drive(executor, count(1))
    assert outcome.error is not None and outcome.error.type == "SystemExit"
    assert executor.children_replaced == 0


def test_a_value_larger_than_a_pipe_holds_goes_both_ways_intact(executor: Executor) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB: many reads and writes per message each way
    executor.submit(job("big", "echo", blob))
    (outcome,) = drive(executor, count(1))
    assert outcome.ok and outcome.value == blob
    assert executor.children_replaced == 0


def test_a_result_over_max_result_bytes_is_result_too_large_unread_and_the_child_replaced() -> None:
    pool = Executor(1, max_result_bytes=1000)
    pool.start()
    try:
        pool.submit(job("big", "echo", "x" * 2000))
        pool.submit(job("small", "echo", "x"))
        outcomes = by_id(drive(pool, count(2)))
        error = outcomes["big"].error
        assert error is not None and error.type == "ResultTooLarge" and "more than the 1000" in error.message
        assert outcomes["small"].ok and outcomes["small"].value == "x"
        assert pool.children_replaced == 1  # it was blocked writing what no one will read
        assert pool.is_empty() and pool.held_task_ids() == []
    finally:
        pool.stop()


def test_a_timed_task_whose_child_dies_leaves_no_deadline_or_held_task_behind(executor: Executor) -> None:
    executor.submit(job("crash", "crash", 3, timeout_s=30))
    (outcome,) = drive(executor, count(1))
    assert outcome.error is not None and outcome.error.type == "ChildProcessDied"
    assert executor.next_deadline() == math.inf and executor.is_empty()
    executor.submit(job("after", "echo", 1))  # the slot is replaced and runs the next task
    (after,) = drive(executor, count(1))
    assert after.ok and after.value == 1


def shout(task_id: str, text: str, times: int = 1, stream: str = "stdout") -> Job:
    return Job(task_id, 7, 1, f"{TASKS}:shout", [text], {"times": times, "stream": stream})


def test_what_a_task_prints_comes_back_with_its_outcome_stdout_stderr_and_file_descriptors(
        executor: Executor) -> None:
    jobs = [shout("py", "hello", 2, "both"), shout("fd", "from C", 1, "fd"), job("quiet", "echo", 1),
            Job("sub", 7, 1, f"{TASKS}:fail", ["after printing"], {})]
    for item in jobs:
        executor.submit(item)
    outcomes = by_id(drive(executor, count(4)))
    assert outcomes["py"].output == "hello\nhello\nhello\nhello\n" and outcomes["py"].value == 24
    assert outcomes["fd"].output == "from C\nfrom C\n"  # os.write(1) and os.write(2): what C code does
    assert outcomes["quiet"].output == "" and outcomes["quiet"].value == 1
    assert outcomes["sub"].output == "" and not outcomes["sub"].ok
    executor.submit(Job("child", 7, 1, f"{TASKS}:shout", ["x"], {"stream": "nowhere"}))
    (failed,) = drive(executor, count(1))
    assert failed.error is not None and failed.error.type == "ValueError" and failed.output == ""


def test_output_past_the_bound_keeps_its_last_64_kib_after_a_cut_marker_and_never_leaks_into_the_next_job(
        executor: Executor) -> None:
    line = "y" * 99  # 100 bytes a line: 1 MB through print and 1 MB through the descriptors
    executor.submit(shout("big-py", line, 10_000))
    executor.submit(shout("big-fd", line, 5_000, "fd"))
    outcomes = by_id(drive(executor, count(2), timeout_s=60))
    for task_id in ("big-py", "big-fd"):
        output = outcomes[task_id].output
        marker, _, kept = output.partition("\n")
        assert marker == f"…[{1_000_000 - 64 * 1024} bytes cut]", marker
        assert len(kept.encode()) == 64 * 1024 and kept.endswith(line + "\n")
    for index in range(4):  # the same children run the next jobs: nothing of the above is left in them
        executor.submit(job(f"after-{index}", "noop"))
    assert all(o.output == "" for o in drive(executor, count(4)))


def test_a_pool_without_capture_leaves_output_alone() -> None:
    pool = Executor(1, capture_output=False)
    pool.start()
    try:
        pool.submit(shout("free", "to the worker's log"))
        (outcome,) = drive(pool, count(1))
        assert outcome.ok and outcome.output == ""
    finally:
        pool.stop()


def test_a_pipe_closed_mid_message_is_end_of_file() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, _HEADER.pack(100) + b"only ten!!")
        os.close(write_fd)
        with pytest.raises(EOFError):
            _read_message(read_fd)
    finally:
        os.close(read_fd)


def test_bytes_beyond_one_message_are_refused() -> None:
    read_fd, write_fd = os.pipe()
    try:
        _write_message(write_fd, b"first")
        _write_message(write_fd, b"second")
        with pytest.raises(OSError, match="beyond one message"):
            _read_message(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_stop_leaves_no_child_behind() -> None:
    pool = Executor(2)
    pool.start()
    pool.submit(job("long", "sleep", 30))
    pool.dispatch(time.monotonic())
    processes = [slot.process for slot in pool._slots]  # noqa: SLF001 - test peeks
    pool.stop()
    assert all(not p.is_alive() for p in processes)
    assert pool.fds() == [] and pool.next_deadline() == math.inf


def test_a_task_returning_a_msgpack_extension_value_is_result_not_serializable(executor: Executor) -> None:
    # msgpack packs them, so the child's own pack passes; the wire refuses them, so the parent must.
    for task_id, value in (("ext", msgpack.ExtType(1, b"x")), ("time", msgpack.Timestamp(1)),
                           ("nested", {"a": [1, msgpack.ExtType(5, b"")]})):
        executor.submit(job(task_id, "echo", value))
    executor.submit(job("plain", "echo", [1, "x"]))
    outcomes = by_id(drive(executor, count(4)))
    assert outcomes["plain"].ok and outcomes["plain"].value == [1, "x"]
    for task_id in ("ext", "time", "nested"):
        error = outcomes[task_id].error
        assert error is not None and error.type == "ResultNotSerializable", outcomes[task_id]
        assert "extension type" in error.message and "plain data" in error.message
    assert executor.children_replaced == 0


# ----------------------------------------------------------------- stop signals

# Tasks for the signal tests, in a module of their own under the test's tmp_path.
SIGNAL_TASKS = textwrap.dedent('''
    import os
    import signal
    import subprocess
    import sys


    def read_fifo(path):
        """Returns what is written to the FIFO ``path``: the test's open() for writing returns once this runs."""
        with open(path) as fifo:
            return fifo.read()


    def sigterm_defaults():
        """Whether a subprocess and a fork of this task start with SIGTERM's default action."""
        probe = "import signal, sys; sys.exit(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL)"
        in_subprocess = subprocess.run([sys.executable, "-c", probe]).returncode == 0
        pid = os.fork()
        if pid == 0:
            os._exit(signal.getsignal(signal.SIGTERM) != signal.SIG_DFL)
        in_fork = os.waitpid(pid, 0)[1] == 0
        return [in_subprocess, in_fork]
''')


@pytest.fixture
def signal_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the module ``sigtasks`` (SIGNAL_TASKS) and a FIFO ``go``; children import from it."""
    (tmp_path / "sigtasks.py").write_text(SIGNAL_TASKS)
    os.mkfifo(tmp_path / "go")
    monkeypatch.syspath_prepend(str(tmp_path))  # a child gets the sys.path its parent has when it starts
    return tmp_path


def test_sigterm_to_the_children_and_their_fork_server_mid_task_does_not_stop_the_task(signal_tasks: Path) -> None:
    """What systemd's stop does with KillMode=control-group: the task runs on, and the pool keeps working."""
    fifo = str(signal_tasks / "go")
    pool = Executor(1)  # forkserver, like the worker
    pool.start()
    try:
        child = pool._slots[0].process  # noqa: SLF001 - test peeks
        server = psutil.Process(forkserver._forkserver._forkserver_pid)  # type: ignore[attr-defined]
        pool.submit(Job("held", 7, 1, "sigtasks:read_fifo", [fifo], {}))
        pool.dispatch(time.monotonic())
        with open(fifo, "w") as writer:  # returns once the task opened the FIFO: it is running
            os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
            server.send_signal(signal.SIGTERM)
            writer.write("finished")
        (outcome,) = drive(pool, count(1))
        assert outcome.ok and outcome.value == "finished", outcome
        pool.submit(job("after", "pid"))
        pool.submit(Job("defaults", 7, 1, "sigtasks:sigterm_defaults", [], {}))
        outcomes = by_id(drive(pool, count(2)))
        assert outcomes["after"].value == child.pid and pool.children_replaced == 0  # the same child
        assert outcomes["defaults"].value == [True, True]  # what a task starts still stops on SIGTERM
        assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE

        # The pool still ends a busy child that ignores SIGTERM: SIGKILL cannot be ignored.
        pool.submit(Job("stuck", 7, 1, "sigtasks:read_fifo", [fifo], {}))
        pool.dispatch(time.monotonic())
        with open(fifo, "w"):  # the task runs, and nothing will be written
            pool.stop()
        assert child.exitcode == -signal.SIGKILL
    finally:
        pool.stop()


def test_a_worker_whose_every_process_gets_sigterm_drains_then_kills_what_outlives_the_drain(
        signal_tasks: Path) -> None:
    """SIGTERM to the worker, its fork server and its children mid-task: the worker drains, the task it can
    finish is reported, the one still running at drain_timeout_s is killed, and every process ends."""
    fifos = [str(signal_tasks / "go"), str(signal_tasks / "never")]
    os.mkfifo(fifos[1])
    config = signal_tasks / "worker.toml"
    config.write_text('[worker]\ndrain_timeout_s = 2.0\n[execution]\nallowed_modules = ["sigtasks"]\n')
    log_path = signal_tasks / "worker.log"
    coordinator = FakeCoordinator()
    writers = []
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "bin/worker", "--connect", coordinator.endpoint, "--slots", "2", "--worker-id", "w1",
             "--config", str(config)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(signal_tasks)}, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        welcome(coordinator)
        coordinator.send(Assign([Assignment(task_id, "sigtasks:read_fifo", [fifo], {}, 5, 1, None)
                                 for task_id, fifo in (("finishes", fifos[0]), ("outlives", fifos[1]))]))
        writers = [open(fifo, "w") for fifo in fifos]  # each open returns once its task opened the FIFO
        tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        assert len(tree) >= 4  # the worker, its fork server and two children (and a resource tracker)
        for process in tree:
            process.send_signal(signal.SIGTERM)
        coordinator.expect(Draining)
        writers[0].write("done")
        writers[0].close()
        outcome = coordinator.outcomes(1)["finishes"]
        assert outcome.ok and outcome.value == "done", outcome
        coordinator.expect(Goodbye)  # after drain_timeout_s, "outlives" killed
        assert worker.wait(30) == 0
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert alive == []
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(30)
        for writer in writers:
            writer.close()
        coordinator.close()
        print(log_path.read_text())
    assert "drain_timeout_s=2.0 passed with 1 task(s) unfinished" in log_path.read_text()


def test_allowlist_accepts_listed_modules_and_patterns() -> None:
    assert check_task_name("actorsched.tasks:echo", ["actorsched.tasks"]) is None
    assert check_task_name("myproj.jobs.etl:run", ["actorsched.tasks", "myproj.*"]) is None


@pytest.mark.parametrize("name", ["os:system", "actorsched.tasksx:echo", "myproj:run"])
def test_allowlist_rejects_other_modules_saying_how_to_allow_them(name: str) -> None:
    error = check_task_name(name, ["actorsched.tasks", "myproj.*"])
    assert error is not None and error.type == "TaskNotAllowed"
    module = name.partition(":")[0]
    assert repr(name) in error.message and repr(module) in error.message
    assert "'actorsched.tasks', 'myproj.*'" in error.message
    assert "allowed_modules" in error.message and "worker config" in error.message


@pytest.mark.parametrize("name", ["actorsched.tasks.echo", "actorsched.tasks:", ":echo", "a b:c", "x:y:z", ""])
def test_allowlist_rejects_malformed_names(name: str) -> None:
    error = check_task_name(name, ["*"])
    assert error is not None and error.type == "TaskNotAllowed"
    assert "malformed" in error.message and "package.module:function" in error.message


def test_error_type_names_are_qualified_except_builtins() -> None:
    assert error_type_name(RuntimeError("x")) == "RuntimeError"
    assert error_type_name(TimeoutError()) == "TimeoutError"
    import json

    assert error_type_name(json.JSONDecodeError("m", "d", 0)) == "json.decoder.JSONDecodeError"
