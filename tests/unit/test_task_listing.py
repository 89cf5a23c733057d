"""Listing and inspecting tasks inside the coordinator: the journal's scan, the TaskQueue's asks, output in the journal.

The TaskQueue actor runs with a real SQLite journal (finished tasks leave its memory once
durable, so a listing must read them back); workers are stood in for by the events they
would cause.  What crosses processes (a worker's child capturing output, the CLI against
a real coordinator) is tested in ``tests/integration/test_listing.py`` and
``tests/integration/test_task_logs.py``.
"""

from __future__ import annotations

import io
import queue
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from actorsched.cli import Progress
from actorsched.config import TasksConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.journal import Journal, JournalRow
from actorsched.coordinator.task_queue import TaskQueueActor
from actorsched.core.commands import AdmitWorker, MakeReady, ReadyTask, SendToClient
from actorsched.core.queue import TaskQueueCore, literal_part, name_matches, text_matches
from actorsched.localcluster import wait_until
from actorsched.protocol import ErrorInfo, TaskInfo, TaskList, TaskListing, TaskOutcome, TaskSpec
from actorsched.worker.executor import cut_output

WAIT_S = 10.0
WORKER = b"w-1/1/1"


class Inbox:
    """Stands in for an actor or the transport: records what it is told."""

    def __init__(self) -> None:
        self.told: queue.Queue[list[Any]] = queue.Queue()

    def tell(self, message: list[Any]) -> None:
        self.told.put(message)


@dataclass
class Coordinator:
    actor: Any
    dispatcher: Inbox
    transport: Inbox
    journal: Journal

    def run(self, specs: list[TaskSpec], outcome: Any = None) -> None:
        """Submit ``specs``, place them on one worker and report each one's outcome, ``outcome(spec)``
        (default: success, value None); returns once every finished one left memory (durable)."""
        self.actor.tell([ev.TasksSubmitted(b"client", 1, specs)])
        ready: list[ReadyTask] = []
        while len(ready) < len(specs):
            for command in self.dispatcher.told.get(timeout=WAIT_S):
                if isinstance(command, MakeReady):
                    ready += command.tasks
        self.actor.tell([AdmitWorker(WORKER, "worker-a"), ev.TasksPlaced(WORKER, "worker-a", ready)])
        by_id = {spec.task_id: spec for spec in specs}
        outcomes = [(outcome or _succeeded)(by_id[task.task_id], task) for task in ready]
        self.actor.tell([ev.OutcomesReported(WORKER, [o for o in outcomes if o is not None])])
        left = sum(o is None for o in outcomes)
        wait_until(lambda: self._in_memory() == left, WAIT_S, "finished tasks to leave memory")

    def _in_memory(self) -> int:
        self.actor.tell([])  # a turn of the actor: it forgets what became durable since the last one
        return int(self.actor.ask("stats", timeout=WAIT_S)["in_memory"])

    def ask(self, message: Any) -> Any:
        return self.actor.ask(message, timeout=WAIT_S)


def _succeeded(spec: TaskSpec, task: ReadyTask) -> TaskOutcome:
    return TaskOutcome(spec.task_id, task.epoch, task.attempt, True, None, None, 0.01)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    yield from _coordinator(tmp_path)


def _coordinator(tmp_path: Path, **options: Any) -> Iterator[Coordinator]:
    journal = Journal(tmp_path, fsync=False)
    journal.open()
    dispatcher, transport, registry = Inbox(), Inbox(), Inbox()
    actor = TaskQueueActor.start(TasksConfig(max_attempts=1, finished_in_memory=0), journal, 1, **options)
    try:
        actor.proxy().connect(dispatcher, transport, registry).get(timeout=WAIT_S)
        yield Coordinator(actor, dispatcher, transport, journal)
    finally:
        actor.stop(timeout=WAIT_S)
        journal.close()


def _ids(listing: list[Any]) -> list[str]:
    return [info.task_id for info in listing]


# --------------------------------------------------------------------------- the asks


def test_list_tasks_answers_newest_first_from_memory_and_journal_without_values_or_outputs(
        coordinator: Coordinator) -> None:
    def outcome(spec: TaskSpec, task: ReadyTask) -> TaskOutcome | None:
        if spec.task_id == "open":
            return None  # still running: only in memory
        ok = spec.name.endswith(":echo")
        return TaskOutcome(spec.task_id, task.epoch, task.attempt, ok, "v" * 100 if ok else None,
                           None if ok else ErrorInfo("ValueError", "bad", "Traceback: long"), 0.01, "printed\n")

    names = ["actorsched.tasks:echo", "actorsched.tasks:fail", "actorsched.tasks:echo", "actorsched.tasks:sleep"]
    coordinator.run([TaskSpec(f"t-{i}", name) for i, name in enumerate(names)] + [TaskSpec("open", names[0])],
                    outcome)
    listing = coordinator.ask(ev.ListTasks())
    assert isinstance(listing, list) and isinstance(listing, TaskListing) and not listing.cut
    assert _ids(listing) == ["open", "t-3", "t-2", "t-1", "t-0"]
    assert [i.state for i in listing] == ["ASSIGNED", "FAILED", "SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert all(i.value is None and i.output == "" and i.history == [] for i in listing)
    assert all(i.worker_id == "worker-a" and i.updated_at > time.time() - 60 for i in listing)
    failed = coordinator.ask(ev.ListTasks(state="FAILED"))
    assert _ids(failed) == ["t-3", "t-1"]
    assert failed[0].error == ErrorInfo("ValueError", "bad")  # no traceback in a listing row
    assert _ids(coordinator.ask(ev.ListTasks(name="echo"))) == ["open", "t-2", "t-0"]
    assert _ids(coordinator.ask(ev.ListTasks(name="*:s*", state="FAILED"))) == ["t-3"]
    assert _ids(coordinator.ask(ev.ListTasks(name="actorsched.tasks:fail"))) == ["t-1"]
    assert _ids(coordinator.ask(ev.ListTasks(worker="worker-a", limit=2))) == ["open", "t-3"]
    assert _ids(coordinator.ask(ev.ListTasks(worker="worker-*", id_prefix="t-", limit=1))) == ["t-3"]
    assert _ids(coordinator.ask(ev.ListTasks(worker="worker-b"))) == []
    assert _ids(coordinator.ask(ev.ListTasks(state="RUNNING"))) == []
    assert _ids(coordinator.ask(ev.ListTasks(state="NO-SUCH-STATE"))) == []


def test_task_detail_answers_the_spec_and_full_info_from_the_journal_or_not_found(coordinator: Coordinator) -> None:
    def outcome(spec: TaskSpec, task: ReadyTask) -> TaskOutcome:
        return TaskOutcome(spec.task_id, task.epoch, task.attempt, False, None,
                           ErrorInfo("KeyError", "'x'", "Traceback (most recent call last): ..."), 0.5,
                           "about to fail\n")

    spec = TaskSpec("d-1", "actorsched.tasks:echo", [1, {"a": [2]}], {"k": "v"}, priority=4, tags=["t"])
    coordinator.run([spec], outcome)
    stored_spec, info = coordinator.ask(ev.TaskDetail("d-1"))
    assert stored_spec == spec
    assert (info.state, info.output, info.priority, info.attempt) == ("FAILED", "about to fail\n", 4, 1)
    assert info.error.traceback.startswith("Traceback") and len(info.history) == 1
    assert info.history[0].worker_id == "worker-a" and info.history[0].outcome == "failed"
    assert coordinator.ask(ev.TaskDetail("never")) == (None, TaskInfo("never", "NOT_FOUND"))


def test_a_client_list_request_is_answered_with_a_task_list(coordinator: Coordinator) -> None:
    coordinator.run([TaskSpec(f"c-{i}", "actorsched.tasks:noop") for i in range(3)])
    coordinator.actor.tell([ev.ListRequested(b"client", 42, "SUCCEEDED", None, None, None, 2)])
    deadline = time.monotonic() + WAIT_S
    while True:
        sends = [s for s in coordinator.transport.told.get(timeout=max(0.01, deadline - time.monotonic()))
                 if isinstance(s, SendToClient) and isinstance(s.message, TaskList)]
        if sends:
            break
    (send,) = sends
    assert send.client == b"client" and send.message.request_id == 42 and not send.message.cut
    assert _ids(send.message.tasks) == ["c-2", "c-1"]


def test_a_listing_that_reaches_its_scan_bound_says_it_was_cut(tmp_path: Path) -> None:
    for coordinator in _coordinator(tmp_path, list_scan_rows=5):
        coordinator.run([TaskSpec(f"s-{i:02d}", "actorsched.tasks:noop" if i else "actorsched.tasks:echo")
                         for i in range(12)])
        listing = coordinator.ask(ev.ListTasks(name="echo"))  # the only echo is older than the 5 newest rows
        assert _ids(listing) == [] and listing.cut
        listing = coordinator.ask(ev.ListTasks(limit=3))  # enough rows among the newest: not cut
        assert _ids(listing) == ["s-11", "s-10", "s-09"] and not listing.cut


# --------------------------------------------------------------------------- the journal


def _row(task_id: str, seq: int, output: str = "", value: Any = None) -> JournalRow:
    spec = msgpack.packb([task_id, "m:f", [], {}, 0, [], None, None, [], []])
    history = [[1, "w", "succeeded", None, 1.0, 2.0]]
    return JournalRow(task_id, seq, "SUCCEEDED", 1, 1, 0, 3.0, spec, value, None, history, output)


def test_output_is_stored_with_the_result_and_older_three_part_results_still_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync=False)
    journal.open()
    try:
        journal.write([_row("quiet", 1, value=5), _row("talker", 2, output="hello\n", value=6)])
        db = sqlite3.connect(journal.path)
        blobs = dict(db.execute("SELECT task_id, result FROM tasks"))
        assert len(msgpack.unpackb(blobs["quiet"])) == 3  # what an older coordinator reads too
        assert msgpack.unpackb(blobs["talker"]) == [6, None, [[1, "w", "succeeded", None, 1.0, 2.0]], "hello\n"]
        db.execute("UPDATE tasks SET result=? WHERE task_id='talker'", (msgpack.packb([7, None, []]),))  # old build
        db.execute("UPDATE tasks SET result=? WHERE task_id='quiet'", (msgpack.packb([1, None, [], 5]),))  # damaged
        db.commit()
        db.close()
        rows = {row.task_id: row for row in journal.rows()}
        assert (rows["talker"].value, rows["talker"].output) == (7, "")
        assert "cannot be read" in rows["quiet"].reason  # type: ignore[union-attr]
    finally:
        journal.close()


def test_the_journal_scan_reads_newest_first_filters_in_sqlite_and_stops_at_its_bound(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync=False)
    journal.open()
    try:
        # One group commit, rows handed over out of order: they are stored in submit order.
        journal.write([_row(f"r-{seq:02d}", seq) for seq in (3, 1, 2, 5, 4)])
        journal.write([_row(f"r-{seq:02d}", seq) for seq in (9, 6, 8, 7)])
        reader = journal.reader()
        try:
            assert [r.task_id for r in reader.newest() if r] == [f"r-{s:02d}" for s in range(9, 0, -1)]
            assert [r.task_id for r in reader.newest(id_prefix="r-0") if r][:2] == ["r-09", "r-08"]
            assert [r for r in reader.newest(state="FAILED")] == []
            assert [r for r in reader.newest(spec_contains="no such name")] == []
            listed = list(reader.newest(max_rows=4))
            assert [r.task_id for r in listed if r] == ["r-09", "r-08", "r-07", "r-06"] and listed[-1] is None
            first = next(r for r in reader.newest(result_contains="w") if r)
            assert (first.name, first.worker_id, first.updated_at, first.error) == ("m:f", "w", 3.0, None)
        finally:
            reader.close()
    finally:
        journal.close()


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("echo", "actorsched.tasks:echo", True),
    ("actorsched.tasks:echo", "actorsched.tasks:echo", True),
    ("tasks:echo", "actorsched.tasks:echo", False),
    ("ech", "actorsched.tasks:echo", False),
    ("*:ec*", "actorsched.tasks:echo", True),
    ("*.tasks:*", "other.mod:f", False),
])
def test_name_filters_match_the_name_its_function_or_a_pattern(pattern: str, name: str, matches: bool) -> None:
    assert name_matches(name, pattern) is matches
    if matches:
        assert literal_part(pattern) in name  # the SQL prefilter never drops a match


def test_worker_filters_match_the_id_or_a_pattern() -> None:
    assert text_matches("gpu-1", "gpu-1") and text_matches("gpu-1", "gpu-*") and not text_matches("gpu-1", "gpu")
    assert literal_part("gpu-*") == "gpu-" and literal_part("*a*bcd?") == "bcd"


# --------------------------------------------------------------------------- output bounds and progress


def test_cut_output_keeps_the_last_bytes_after_a_marker_naming_how_many_were_cut() -> None:
    assert cut_output(b"short\n", 6, 10) == "short\n"
    text = cut_output(b"0123456789abcdef", 16, 10)
    assert text == "…[6 bytes cut]\n6789abcdef"
    snowman = "☃".encode()  # 3 bytes: a cut through it drops its pieces, not a replacement character
    assert cut_output(b"x" * 9 + snowman + b"end", 15, 5) == "…[12 bytes cut]\nend"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_writes_a_short_full_line_every_few_seconds_and_one_at_the_end() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(3000, stream, live=False, clock=clock, every_s=5.0)
    for _ in range(3000):
        clock.now += 0.01  # 30 s in all, 100 tasks/s
        progress.update(failed=progress.done % 1000 == 0)
    progress.close()
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and "\r" not in stream.getvalue()
    lines = lines[:-1]
    assert len(lines) == 6 and all(len(line) < 100 for line in lines)  # not one 3,000-piece line
    assert lines[0] == "500/3000 done, 1 failed, 100 tasks/s, ETA 0:25, 0:05 elapsed"
    assert lines[1].startswith("1000/3000 done, 1 failed, 100 tasks/s, ETA 0:20")
    assert lines[-1] == "3000/3000 done, 3 failed, 100 tasks/s, 0:30 elapsed"


def test_progress_on_a_terminal_redraws_one_line_in_place_at_most_ten_times_a_second() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(200, stream, live=True, clock=clock)
    for _ in range(200):
        clock.now += 0.005  # 1 s in all
        progress.update()
    progress.note("a worker was killed")
    progress.close()
    text = stream.getvalue()
    assert text.count("\n") == 2 and text.endswith("\n")
    draws = text.count("\r[")
    assert 10 <= draws <= 13, draws  # ~10 redraws in one second, plus the note's and the last
    assert "\r\x1b[Ka worker was killed\n" in text
    last = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert last.startswith("[" + "#" * 10) and "100% 200/200 done, 0 failed, 200 tasks/s" in last


def test_memory_is_searched_newest_first_and_no_further_than_its_bound() -> None:
    core = TaskQueueCore(TasksConfig(), 1)
    core.submit(b"c", 1, [TaskSpec(f"m-{i}", "actorsched.tasks:echo" if i % 2 else "actorsched.tasks:noop")
                          for i in range(10)], 0.0)
    found, cut = core.matching(None, None, None, None, 3, 100)
    assert [task_id for _, task_id, _ in found] == ["m-9", "m-8", "m-7"] and not cut
    found, cut = core.matching("QUEUED", "echo", None, "m-", 2, 100)
    assert [task_id for _, task_id, _ in found] == ["m-9", "m-7"] and not cut
    found, cut = core.matching("FAILED", None, None, None, 3, 4)
    assert found == [] and cut  # four records looked at, none matched: the answer says it stopped
    assert core.matching("NOT-A-STATE", None, None, None, 3, 100) == ([], False)
