"""TaskQueue actor: the pykka shell around :class:`~actorsched.core.queue.TaskQueueCore`.

It applies a batch of events to the core, tells the Dispatcher and the Registry what
the core decided at once, and hands every changed record to the journal writer
together with the messages for peers, which the writer sends only once the records are
durable (group commit): no client hears "accepted" before its task is in the journal,
and neither the TaskQueue nor placement ever waits for a disk.  It also runs retention
(compaction) on the clock's ticks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pykka

from actorsched.config import JournalConfig, TasksConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.journal import Journal, JournalRow, JournalWriter
from actorsched.coordinator.supervision import SupervisedActor
from actorsched.core.commands import (
    AdmitWorker,
    CheckHeld,
    Command,
    ForgetWorker,
    FreeSlots,
    JudgeAttempts,
    MakeReady,
    ReconcileRunning,
    SendToClient,
    SendToWorker,
    TakeBack,
    WithdrawTasks,
)
from actorsched.core.liveness import TimersDue
from actorsched.core.queue import TaskQueueCore, TaskRecord
from actorsched.core.states import FINAL_STATES, TaskState
from actorsched.protocol import (
    AttemptRecord,
    ErrorInfo,
    PurgeReply,
    StatsReply,
    TaskSpec,
    pack_record,
    packer,
    unpack_record,
)

log = logging.getLogger(__name__)


class TaskQueueActor(SupervisedActor, pykka.ThreadingActor):
    def __init__(self, config: TasksConfig, journal: Journal | None, epoch: int,
                 journal_config: JournalConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.core = TaskQueueCore(config, epoch, wall_offset_s=time.time() - clock())
        self.journal_config = journal_config or JournalConfig()
        self._next_compaction = clock() + self.journal_config.compaction_interval_s
        self.journal = journal
        self.clock = clock
        self.dispatcher: pykka.ActorRef[Any] | None = None
        self.registry: pykka.ActorRef[Any] | None = None
        self.transport: Any = None
        self._journaled: set[str] = set()
        self._pack = packer()  # this actor's thread's own
        self.writer: JournalWriter | None = None

    def connect(self, dispatcher: pykka.ActorRef[Any], transport: Any, registry: pykka.ActorRef[Any]) -> None:
        self.dispatcher = dispatcher
        self.transport = transport
        self.registry = registry

    def on_start(self) -> None:
        if self.journal is None:
            return
        self.writer = JournalWriter(self.journal, self._journal_failed)
        started = time.monotonic()
        now, wall_now = self.clock(), time.time()
        records = [_record_from_row(row, now, wall_now) for row in self.journal.rows()]
        self._journaled.update(r.spec.task_id for r in records)
        self._carry_out(self.core.restore(records, now))
        log.info("journal replayed tasks=%d open=%d seconds=%.3f", len(records), self.core.open_count,
                 time.monotonic() - started)

    def on_stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()

    def _journal_failed(self, exc: BaseException) -> None:
        # Without a journal nothing may be acknowledged any more: stop the whole
        # coordinator loudly rather than run on and lose acknowledged work.
        if self.supervisor is not None:
            self.supervisor.fatal("the journal cannot be written", exc)

    def on_receive(self, message: Any) -> Any:
        now = self.clock()
        core = self.core
        if message == "stats":  # ask() from the status page and tests
            return core.stats()
        if message == "held":  # ask() from the registry, for the status page's worker list
            return core.held_counts()
        out: list[Command] = []
        for event in message:
            match event:
                case ev.TasksSubmitted(client, request_id, tasks, watch):
                    out += core.submit(client, request_id, tasks, now, watch)
                case ev.OutcomesReported(worker, outcomes):
                    out += core.outcomes_reported(worker, outcomes, now)
                case ev.AttemptsStarted(worker, attempts):
                    core.tasks_started(worker, attempts)
                case ev.TasksPlaced(worker, worker_id, tasks):
                    out += core.tasks_assigned(worker, worker_id, tasks, now)
                case ev.AttemptsReleased(worker, attempts):
                    out += core.attempts_released(worker, attempts, now)
                case TakeBack(worker, count):
                    out += core.take_back(worker, count)
                case AdmitWorker(worker, _):
                    core.worker_admitted(worker)
                case CheckHeld(worker, worker_id, holds, placed_before):
                    out += core.check_held(worker, worker_id, holds, placed_before, now)
                case TimersDue(tick_now):
                    out += core.tick(tick_now)
                    if tick_now >= self._next_compaction:
                        self._next_compaction = tick_now + self.journal_config.compaction_interval_s
                        self._purge(core.purge(self.journal_config.retention_s, tick_now), "retention")
                case ev.PurgeRequested(client, request_id, older_than_s):
                    purged = core.purge(older_than_s, now)
                    self._purge(purged, "requested")
                    out.append(SendToClient(client, PurgeReply(request_id, len(purged))))
                case ForgetWorker(worker, worker_id, reason, worker_died, keep):
                    out += core.worker_gone(worker, worker_id, reason, now, worker_died, keep)
                case ReconcileRunning(worker, worker_id, attempts):
                    out += core.worker_reports_running(worker, worker_id, attempts, now)
                case ev.QueryRequested(client, request_id, task_ids):
                    out += core.query(client, request_id, task_ids)
                case ev.WatchRequested(client, request_id, task_ids):
                    out += core.watch(client, request_id, task_ids)
                case ev.WatchDropped(client, request_id):
                    core.unwatch(client, request_id)
                case ev.CancelRequested(client, request_id, task_ids, cascade):
                    out += core.cancel(client, request_id, task_ids, cascade, now)
                case ev.WorkersRequested(client, request_id):
                    ev.tell(self.registry, [ev.WorkersRequested(client, request_id, core.held_counts())])
                case ev.StatsRequested(client, request_id, stats):
                    out.append(SendToClient(client, StatsReply(request_id, {**stats, "queue": core.stats()})))
                case _:
                    log.error("TaskQueue got an unknown event %r", event)
        self._carry_out(out)
        return None

    def _purge(self, task_ids: list[str], why: str) -> None:
        if not task_ids:
            return
        log.info("purged finished tasks count=%d reason=%s", len(task_ids), why)
        self._journaled.difference_update(task_ids)
        if self.writer is not None:
            self.writer.submit([], lambda: None, deleted=task_ids)

    def _carry_out(self, out: list[Command]) -> None:
        """Tell the Dispatcher and the Registry at once; send to peers once the changes are durable.

        Placement does not wait for the disk: a task runs while its submit is being
        committed.  What the TaskQueue tells a peer (accepted, a result, a state, a
        cancel) waits for the commit of everything decided before it, so no client hears
        of a change a crash could undo.
        Should the coordinator die before the commit, the task had not been acknowledged
        and its attempt is unknown to the next epoch: its result is rejected as stale.
        """
        sends: list[SendToClient | SendToWorker] = []
        ready: list[Command] = []
        judged: list[JudgeAttempts] = []
        for command in out:
            if isinstance(command, (SendToClient, SendToWorker)):
                sends.append(command)
            elif isinstance(command, (MakeReady, WithdrawTasks, FreeSlots)):
                ready.append(command)
            elif isinstance(command, JudgeAttempts):
                judged.append(command)
            else:
                log.error("TaskQueue cannot carry out %r", command)
        if ready:
            ev.tell(self.dispatcher, ready)
        if judged:
            ev.tell(self.registry, judged)
        writer = self.writer
        if writer is None:
            self.core.dirty.clear()
            self._send(sends)
            return
        rows = self._journal_rows() if self.core.dirty else []
        if rows:
            writer.submit(rows, lambda: self._send(sends))
        elif sends:
            if writer.idle():  # nothing waits for the disk: these cannot overtake anything
                self._send(sends)
            else:
                writer.submit([], lambda: self._send(sends))

    def _send(self, sends: list[SendToClient | SendToWorker]) -> None:
        if sends and self.transport is not None:
            self.transport.tell(sends)

    def _journal_rows(self) -> list[JournalRow]:
        dirty = self.core.dirty
        self.core.dirty = set()
        wall_now = time.time()
        rows = []
        for task_id in dirty:
            task = self.core.tasks[task_id]
            if task.state in (TaskState.ASSIGNED, TaskState.RUNNING) and task_id in self._journaled:
                continue
            spec = None if task_id in self._journaled else pack_record(task.spec, self._pack)
            self._journaled.add(task_id)
            finished_at = wall_now if task.state in FINAL_STATES else None
            rows.append(JournalRow(
                task_id, task.seq, task.state.value, task.attempt, task.epoch, task.deaths, finished_at, spec,
                task.value,
                _error_list(task.error), [[h.attempt, h.worker_id, h.outcome, _error_list(h.error), h.started_at,
                                           h.ended_at] for h in task.history],
            ))
        return rows


def _error_list(error: ErrorInfo | None) -> list[str] | None:
    return None if error is None else [error.type, error.message, error.traceback]


def _record_from_row(row: JournalRow, now: float, wall_now: float) -> TaskRecord:
    assert row.spec is not None
    spec = unpack_record(TaskSpec, row.spec)
    record = TaskRecord(spec, row.seq, TaskState(row.state), attempt=row.attempt, epoch=row.epoch, deaths=row.deaths)
    record.value = row.value
    record.error = ErrorInfo(*row.error) if row.error else None
    record.history = [AttemptRecord(a, w, o, ErrorInfo(*e) if e else None, *times)
                      for a, w, o, e, *times in row.history]
    if record.history:
        record.worker_id = record.history[-1].worker_id  # who ran the last attempt
    if row.finished_at is not None:  # wall clock in the journal, monotonic in memory
        record.finished_at = now - max(0.0, wall_now - row.finished_at)
    return record

