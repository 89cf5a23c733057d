"""The TaskQueue actor with a real SQLite journal: what waits for the disk and what does not.

Placement must not wait for a commit (a task runs while its submit is being made
durable), while every message to a peer must: a client hears "accepted" only once its
task is in the journal.  The journal here is real; only its writes are held at a gate.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actorsched.config import TasksConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.journal import Journal, JournalRow, JournalWriter
from actorsched.coordinator.task_queue import TaskQueueActor
from actorsched.core.commands import MakeReady, SendToClient
from actorsched.protocol import QueryReply, SubmitReply, TaskSpec

WAIT_S = 10.0


class Inbox:
    """Stands in for an actor or the transport: records what it is told."""

    def __init__(self) -> None:
        self.told: queue.Queue[list[Any]] = queue.Queue()

    def tell(self, message: list[Any]) -> None:
        self.told.put(message)


class GatedJournal(Journal):
    """A real journal whose writes wait until the test opens the gate."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write_batches(self, batches: list[tuple[list[JournalRow], list[str]]]) -> None:
        self.writing.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        super().write_batches(batches)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[GatedJournal]:
    journal = GatedJournal(tmp_path)
    journal.open()
    yield journal
    journal.gate.set()
    journal.close()


def test_a_task_is_placed_before_its_submit_is_durable_but_acknowledged_only_after(journal: GatedJournal) -> None:
    dispatcher, transport, registry = Inbox(), Inbox(), Inbox()
    actor = TaskQueueActor.start(TasksConfig(), journal, 1)
    try:
        actor.proxy().connect(dispatcher, transport, registry).get(timeout=WAIT_S)
        actor.tell([ev.TasksSubmitted(b"client", 7, [TaskSpec("t-1", "actorsched.tasks:noop")])])
        (ready,) = dispatcher.told.get(timeout=WAIT_S)
        assert isinstance(ready, MakeReady) and [t.task_id for t in ready.tasks] == ["t-1"]
        assert journal.writing.wait(WAIT_S)
        assert transport.told.empty(), "a client was answered before its submit was durable"
        journal.gate.set()
        (reply,) = transport.told.get(timeout=WAIT_S)
        assert reply == SendToClient(b"client", SubmitReply(7, ["t-1"]))
        assert [row.task_id for row in journal.rows()] == ["t-1"]
    finally:
        journal.gate.set()
        actor.stop(timeout=WAIT_S)


def test_the_writer_is_idle_only_when_every_follow_up_has_run(journal: GatedJournal) -> None:
    writer = JournalWriter(journal, on_failure=lambda exc: None)
    ran = threading.Event()
    try:
        assert writer.idle()
        writer.submit([], ran.set)
        assert not writer.idle()
        journal.gate.set()
        assert ran.wait(WAIT_S)
        writer.stop()
        assert writer.idle()
    finally:
        journal.gate.set()
        writer.stop()


def test_a_reply_with_nothing_to_commit_waits_behind_a_pending_commit(journal: GatedJournal) -> None:
    dispatcher, transport, registry = Inbox(), Inbox(), Inbox()
    actor = TaskQueueActor.start(TasksConfig(), journal, 1)
    try:
        actor.proxy().connect(dispatcher, transport, registry).get(timeout=WAIT_S)
        actor.tell([ev.TasksSubmitted(b"client", 7, [TaskSpec("t-1", "actorsched.tasks:noop")])])
        assert journal.writing.wait(WAIT_S)
        actor.tell([ev.QueryRequested(b"client", 8, ["t-1"])])
        actor.proxy().core.get(timeout=WAIT_S)  # the query has been handled (the actor answers in order)
        assert transport.told.empty(), "the query's answer overtook the commit of the task it reports"
        journal.gate.set()
        answers = [transport.told.get(timeout=WAIT_S)[0].message for _ in range(2)]
        assert [type(m) for m in answers] == [SubmitReply, QueryReply]
        assert answers[1].tasks[0].state == "QUEUED"
    finally:
        journal.gate.set()
        actor.stop(timeout=WAIT_S)


class FailingJournal(Journal):
    def write_batches(self, batches: list[tuple[list[JournalRow], list[str]]]) -> None:
        raise OSError(28, "No space left on device")


def test_after_a_failed_journal_write_nothing_is_acknowledged_any_more(tmp_path: Path) -> None:
    journal = FailingJournal(tmp_path)
    journal.open()
    failures: queue.Queue[BaseException] = queue.Queue()
    transport = Inbox()
    actor = TaskQueueActor.start(TasksConfig(), journal, 1)
    try:
        actor.proxy().connect(Inbox(), transport, Inbox()).get(timeout=WAIT_S)
        actor.proxy().writer.get(timeout=WAIT_S).on_failure = failures.put
        actor.tell([ev.TasksSubmitted(b"client", 7, [TaskSpec("t-1", "actorsched.tasks:noop")])])
        assert isinstance(failures.get(timeout=WAIT_S), OSError)
        actor.tell([ev.QueryRequested(b"client", 8, ["t-1"])])
        actor.proxy().core.get(timeout=WAIT_S)
        assert transport.told.empty(), "something was acknowledged after the journal failed"
    finally:
        actor.stop(timeout=WAIT_S)
        journal.close()
