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
from actorsched.protocol import SubmitReply, TaskSpec

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
