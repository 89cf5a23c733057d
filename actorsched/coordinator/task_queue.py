"""TaskQueue actor: the pykka shell around :class:`~actorsched.core.queue.TaskQueueCore`.

It applies a batch of events to the core, tells the Dispatcher and the Registry what
the core decided at once, and hands every changed record to the journal writer
together with the messages for peers, which the writer sends only once the records are
durable (group commit): no client hears "accepted" before its task is in the journal,
and neither the TaskQueue nor placement ever waits for a disk.  It also runs retention
(compaction) on the clock's ticks.

Memory: once a final task's row is durable the core forgets it; a request that names
a task no longer in memory (a resubmit, a dependency, a watch, a query) reads it back
from the journal through this actor's own read-only connection.  Queries are answered
in pages: a reply stops growing at ``reply_budget_bytes`` and names the ids left.

Stored specs: a spec is journaled in the wire layout (an array of its fields), except
that an empty ``trace``, its last field (AS5), is left out (:func:`_pack_spec`): rows of
untraced tasks are what older builds wrote and read, and both layouts read back
(:func:`_unpack_spec`), so a journal survives an upgrade, and a downgrade too unless
tasks were traced.

Tracing (only when :data:`actorsched.tracing.ENABLED`): for every attempt placed, a
``queue wait`` span (ready to place -> placed) and a ``placement`` span (the worker and
the attempt), children of the task's ``submit`` span named by its ``trace``, made whole
with wall-clock times derived from the monotonic ones the core keeps: no span stays open
per task.  ``on_start`` sets tracing up; ``on_stop`` flushes it.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from actorsched import tracing
from actorsched.config import JournalConfig, TasksConfig
from actorsched.coordinator import events as ev
from actorsched.coordinator.journal import JournalBackend, JournalReading, JournalRow, JournalWriter, RowProblem
from actorsched.coordinator.supervision import SupervisedActor
from actorsched.core.commands import (
    AdmitWorker,
    CheckHeld,
    Command,
    ForgetWorker,
    FreeSlots,
    JudgeAttempts,
    MakeReady,
    ReadyTask,
    ReconcileRunning,
    SendToClient,
    SendToWorker,
    TakeBack,
    WithdrawTasks,
)
from actorsched.core.liveness import TimersDue
from actorsched.core.queue import (
    TaskQueueCore,
    TaskRecord,
    all_deps,
    light_info,
    literal_part,
    name_matches,
    task_info,
    text_matches,
)
from actorsched.core.states import FINAL_STATES, NOT_FOUND, TaskState
from actorsched.errors import ProtocolError
from actorsched.protocol import (
    MAX_LIST_LIMIT,
    AttemptRecord,
    ErrorInfo,
    PurgeReply,
    QueryReply,
    StatsReply,
    TaskInfo,
    TaskList,
    TaskListing,
    TaskSpec,
    packer,
    unpack_error,
    unpack_strict,
)
from actorsched.recordcodec import record_decoder, record_encoder

log = logging.getLogger(__name__)

LIST_SCAN_ROWS = 100_000
"""Most journal rows one listing examines (newest first): beyond, its answer says it was cut."""
LIST_SCAN_S = 0.5
"""Most seconds one listing reads the journal: the TaskQueue answers nothing else meanwhile."""
_SEQ = operator.itemgetter(0)


class TaskQueueActor(SupervisedActor, pykka.ThreadingActor):
    def __init__(self, config: TasksConfig, journal: JournalBackend | None, epoch: int,
                 journal_config: JournalConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 reply_budget_bytes: int = 8 * 1024 * 1024, list_scan_rows: int = LIST_SCAN_ROWS,
                 list_scan_s: float = LIST_SCAN_S) -> None:
        """``reply_budget_bytes``: a query reply stops growing past this (keep it under the
        clients' max_message_bytes); the rest of its ids are named for the next page.
        ``list_scan_rows``, ``list_scan_s``: bounds of one listing's journal scan."""
        super().__init__()
        self.reply_budget_bytes = reply_budget_bytes
        self.list_scan_rows = list_scan_rows
        self.list_scan_s = list_scan_s
        self.core = TaskQueueCore(config, epoch, random.Random(), wall_offset_s=time.time() - clock())
        self.core.debug_notes = log.isEnabledFor(logging.DEBUG)
        self.journal_config = journal_config or JournalConfig()
        self._next_compaction = clock() + self.journal_config.compaction_interval_s
        self.journal = journal
        self.clock = clock
        self.dispatcher: pykka.ActorRef[Any] | None = None
        self.registry: pykka.ActorRef[Any] | None = None
        self.transport: Any = None
        self._pack = packer()  # this actor's thread's own
        self.writer: JournalWriter | None = None
        self.reader: JournalReading | None = None
        self._finishing: deque[tuple[int, list[str]]] = deque()  # (writer item, final tasks in it)
        self._recalled: list[str] = []

    def connect(self, dispatcher: pykka.ActorRef[Any], transport: Any, registry: pykka.ActorRef[Any]) -> None:
        self.dispatcher = dispatcher
        self.transport = transport
        self.registry = registry

    def on_start(self) -> None:
        if tracing.ENABLED:
            tracing.setup("coordinator")
        journal = self.journal
        if journal is None:
            return
        started = time.monotonic()
        now, wall_now = self.clock(), time.time()
        records: list[TaskRecord] = []
        for row in journal.rows(unfinished_only=True):
            record = _record_from_row(row, now, wall_now)
            if isinstance(record, str):  # one task's data must not stop every start: it fails, with why
                log.error("quarantined task=%s at replay: %s", row.task_id, record)
                journal.quarantine(row.task_id, f"quarantined at replay: {record}", wall_now)
                self.core.counters["quarantined"] += 1
            else:
                records.append(record)
        self.reader = journal.reader()
        unfinished = {r.spec.task_id for r in records}
        needed = list(dict.fromkeys(d for r in records for d in all_deps(r.spec) if d not in unfinished))
        deps = self._read_back(needed, now, wall_now)
        self.writer = JournalWriter(journal, self._journal_failed)
        self._carry_out(self.core.restore(sorted(records + deps, key=lambda r: r.seq), now,
                                          journal.finished_counts(), journal.max_seq()))
        self.core.forget((d.spec.task_id for d in deps), keep_recent=False)
        log.info("journal replayed open=%d finished=%d seconds=%.3f", len(records),
                 sum(self.core.counts.values()) - self.core.open_count, time.monotonic() - started)

    def on_stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        if self.reader is not None:
            self.reader.close()
        if tracing.ENABLED:
            tracing.flush()

    def _read_back(self, task_ids: list[str], now: float, wall_now: float) -> list[TaskRecord]:
        """Final tasks no longer in memory, from the journal (those it has; unreadable ones are skipped)."""
        if not task_ids or self.reader is None:
            return []
        rows, _ = self.reader.fetch(task_ids)
        records = []
        for row in rows:
            record, problem = _rebuilt(row, now, wall_now)
            if problem:
                log.error("task=%s cannot be read back from the journal: %s", row.task_id, problem)
            if record.state in FINAL_STATES:
                records.append(record)
        return records

    def _recall(self, task_ids: Iterable[str]) -> None:
        """Bring back the named tasks that left memory, for this batch of events (forgotten after it)."""
        tasks = self.core.tasks
        missing = [t for t in dict.fromkeys(task_ids) if t not in tasks]
        if not missing:
            return
        records = self._read_back(missing, self.clock(), time.time())
        if records:
            self.core.recall(records)
            self._recalled += [r.spec.task_id for r in records]

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
        if message == "metrics":  # ask() from the status page
            commit = self.writer.commit_time.snapshot() if self.writer is not None else None
            return {**core.metrics(), "journal_commit": commit}
        if type(message) is not list:  # the other asks (the status page's)
            if type(message) is ev.ListTasks:
                return self._list(message.state, message.name, message.worker, message.id_prefix, message.limit)
            if type(message) is ev.TaskDetail:
                return self._detail(message.task_id)
            log.error("TaskQueue got an unknown ask %r", message)
            return None
        out: list[Command] = []
        if self.reader is not None:
            self._recall(_named_ids(message))
        for event in message:
            match event:
                case ev.TasksSubmitted(client, request_id, tasks, watch):
                    pack = self._pack
                    packed = [_pack_spec(spec, pack) for spec in tasks] if self.writer is not None else None
                    out += core.submit(client, request_id, tasks, now, watch, packed)
                case ev.OutcomesReported(worker, outcomes):
                    out += core.outcomes_reported(worker, outcomes, now)
                case ev.AttemptsStarted(worker, attempts):
                    core.tasks_started(worker, attempts)
                case ev.TasksPlaced(worker, worker_id, tasks):
                    out += core.tasks_assigned(worker, worker_id, tasks, now)
                    if tracing.ENABLED:
                        self._trace_placed(worker, worker_id, tasks)
                case ev.AttemptsReleased(worker, attempts):
                    out += core.attempts_released(worker, attempts, now)
                case TakeBack(worker, count):
                    out += core.take_back(worker, count)
                case AdmitWorker(worker, worker_id):
                    core.worker_admitted(worker, worker_id)
                case CheckHeld(worker, worker_id, holds, placed_before):
                    out += core.check_held(worker, worker_id, holds, placed_before, now)
                case TimersDue(tick_now):
                    out += core.tick(tick_now)
                    if tick_now >= self._next_compaction:
                        self._next_compaction = tick_now + self.journal_config.compaction_interval_s
                        out += self._purge(self.journal_config.retention_s, tick_now, None)
                case ev.PurgeRequested(client, request_id, older_than_s):
                    out += self._purge(older_than_s, now, (client, request_id))
                case ev.JournalPurged(counts, reply_to):
                    core.purged_from_journal(counts)
                    total = sum(counts.values())
                    if total:
                        log.info("purged finished tasks count=%d reason=%s", total,
                                 "requested" if reply_to else "retention")
                    if reply_to is not None:
                        out.append(SendToClient(reply_to[0], PurgeReply(reply_to[1], total)))
                case ForgetWorker(worker, worker_id, reason, worker_died, keep):
                    out += core.worker_gone(worker, worker_id, reason, now, worker_died, keep)
                case ReconcileRunning(worker, worker_id, attempts):
                    out += core.worker_reports_running(worker, worker_id, attempts, now)
                case ev.QueryRequested(client, request_id, task_ids):
                    out.append(self._query(client, request_id, task_ids))
                case ev.ListRequested(client, request_id, state, name, worker, id_prefix, limit):
                    listing = self._list(state, name, worker, id_prefix, limit)
                    out.append(SendToClient(client, TaskList(request_id, listing, listing.cut)))
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
        self._forget_durable()
        if core.notes:
            for level, line in core.notes:
                log.log(level, line)
            core.notes.clear()
        return None

    def _trace_placed(self, worker: bytes, worker_id: str, tasks: list[ReadyTask]) -> None:
        """``queue wait`` and ``placement`` spans of the traced attempts just placed on ``worker`` (and still
        there: one cancelled or requeued meanwhile is not)."""
        wall_ns, mono = time.time_ns(), self.clock()
        core_tasks = self.core.tasks
        for ready in tasks:
            if not ready.trace:
                continue
            task = core_tasks.get(ready.task_id)
            if task is None or task.state is not TaskState.ASSIGNED or task.attempt != ready.attempt \
                    or task.worker != worker:
                continue
            placed_ns = wall_ns - int((mono - task.assigned_at) * 1e9)
            tracing.placed(ready.trace, ready.task_id, ready.name, ready.attempt, worker_id, ready.priority,
                           wall_ns - int((mono - ready.ready_at) * 1e9), placed_ns)

    def _forget_durable(self) -> None:
        """Final tasks whose rows are durable leave memory (and so do tasks read back for this batch)."""
        core = self.core
        if self._recalled:
            core.forget(self._recalled, keep_recent=False)
            self._recalled = []
        writer = self.writer
        if writer is None:
            return
        finishing, done = self._finishing, writer.done
        while finishing and finishing[0][0] <= done:
            core.forget(finishing.popleft()[1])

    def _purge(self, older_than_s: float, now: float, reply_to: tuple[bytes, int] | None) -> list[Command]:
        """Forget final tasks that finished ``older_than_s`` ago or more (except those an unfinished
        task depends on); with a journal, delete them there, after every write before this one."""
        if self.writer is None:
            purged = self.core.purge(older_than_s, now)
            if purged:
                log.info("purged finished tasks count=%d reason=%s", len(purged),
                         "requested" if reply_to else "retention")
            return [SendToClient(reply_to[0], PurgeReply(reply_to[1], len(purged)))] if reply_to else []
        journal, keep, before = self.journal, self.core.kept_ids(), time.time() - older_than_s
        self.core.drop_finished(older_than_s, now)
        assert journal is not None
        me = self.actor_ref

        def purge() -> None:  # on the writer's thread, in order with the writes
            ev.tell(me, [ev.JournalPurged(journal.purge(before, keep), reply_to)])

        self.writer.submit([], purge)
        return []

    def _query(self, client: bytes, request_id: int, task_ids: list[str]) -> SendToClient:
        """What the client asked about, each task once, up to ``reply_budget_bytes``; the rest are named
        in the reply for the client's next page.  Tasks out of memory are read from the journal."""
        core, pack = self.core, self._pack
        budget, spent = self.reply_budget_bytes, 0
        infos: list[TaskInfo] = []
        rest: list[str] = []
        out_of_memory: list[str] = []
        for task_id in dict.fromkeys(task_ids):
            task = core.tasks.get(task_id)
            if task is None:
                out_of_memory.append(task_id)
            elif spent > budget:
                rest.append(task_id)
            else:
                spent += (_size(task.value, pack) + (len(task.error.traceback) if task.error else 0)
                          + len(task.output) + 64)
                infos.append(task_info(task_id, task, core.wall_offset_s))
        if out_of_memory and spent > budget:
            rest += out_of_memory
        elif out_of_memory:
            rows, unread = self.reader.fetch(out_of_memory, max(1, budget - spent)) if self.reader else ([], [])
            now, wall_now = self.clock(), time.time()
            found: dict[str, TaskInfo] = {}
            for row in rows:
                found[row.task_id] = task_info(row.task_id, _rebuilt(row, now, wall_now)[0], core.wall_offset_s)
            rest += unread
            skipped = set(unread)
            infos += [found.get(t) or task_info(t, None) for t in out_of_memory if t not in skipped]
        return SendToClient(client, QueryReply(request_id, infos, rest))

    def _list(self, state: str | None, name: str | None, worker: str | None, id_prefix: str | None,
              limit: int) -> TaskListing:
        """Light rows of the newest ``limit`` tasks matching every filter given, from memory and the
        journal (see the module docstring); ``cut`` if the journal scan stopped at its bound."""
        core = self.core
        offset = core.wall_offset_s
        limit = max(1, min(int(limit), MAX_LIST_LIMIT))
        matches, cut = core.matching(state, name, worker, id_prefix, limit, self.list_scan_rows)
        found: list[tuple[int, TaskInfo]] = [(seq, light_info(task_id, task, offset))
                                             for seq, task_id, task in matches]
        if self.reader is not None and (state is None or state in _FINAL_VALUES):  # (open tasks are all in memory)
            cut = self._list_journal(found, state, name, worker, id_prefix, limit) or cut
        found.sort(key=_SEQ, reverse=True)
        rows, spent = [], 0
        for _, info in found[:limit]:
            spent += 96 + len(info.task_id) + len(info.name) + len(info.worker_id) + (
                len(info.error.type) + len(info.error.message) if info.error is not None else 0)
            if spent > self.reply_budget_bytes:
                cut = True
                break
            rows.append(info)
        return TaskListing(rows, cut)

    def _list_journal(self, found: list[tuple[int, TaskInfo]], state: str | None, name: str | None,
                      worker: str | None, id_prefix: str | None, limit: int) -> bool:
        """Add the newest matches that only the journal holds to ``found``; True if the scan was cut."""
        assert self.reader is not None
        tasks = self.core.tasks
        deadline = time.monotonic() + self.list_scan_s
        added = examined = 0
        rows = self.reader.newest(state, literal_part(name) if name else "", literal_part(worker) if worker else "",
                                  id_prefix or "", self.list_scan_rows)
        try:
            for row in rows:
                if row is None:
                    return True
                examined += 1
                if examined & 255 == 0 and time.monotonic() > deadline:
                    log.info("listing stopped reading the journal after %.2f s and %d rows", self.list_scan_s,
                             examined)
                    return True
                if row.task_id in tasks:
                    continue  # memory is newer, and was searched
                if name is not None and not name_matches(row.name, name):
                    continue
                if worker is not None and not text_matches(row.worker_id, worker):
                    continue
                error = ErrorInfo(row.error[0], row.error[1]) if row.error else None
                found.append((row.seq, TaskInfo(row.task_id, row.state, row.name, row.priority, row.attempt,
                                                row.worker_id, None, error, [], "", row.updated_at)))
                added += 1
                if added >= limit:
                    return False
        finally:
            rows.close()
        return False

    def _detail(self, task_id: str) -> tuple[TaskSpec | None, TaskInfo]:
        """One task in full (spec, value, output, attempts), from memory or the journal."""
        core = self.core
        task = core.tasks.get(task_id)
        if task is not None:
            return task.spec, task_info(task_id, task, core.wall_offset_s)
        if self.reader is not None:
            rows, _ = self.reader.fetch([task_id])
            for row in rows:
                record, problem = _rebuilt(row, self.clock(), time.time())
                return None if problem else record.spec, task_info(task_id, record, core.wall_offset_s)
        return None, TaskInfo(task_id, NOT_FOUND)

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
        finished: list[str] = []
        rows = self._journal_rows(finished) if self.core.dirty else []
        if rows:
            writer.submit(rows, lambda: self._send(sends))
            if finished:
                self._finishing.append((writer.submitted, finished))
        elif sends:
            if writer.idle():  # nothing waits for the disk: these cannot overtake anything
                self._send(sends)
            else:
                writer.submit([], lambda: self._send(sends))

    def _send(self, sends: list[SendToClient | SendToWorker]) -> None:
        if sends and self.transport is not None:
            self.transport.tell(sends)

    def _journal_rows(self, finished: list[str]) -> list[JournalRow]:
        """Rows for every changed task; fills ``finished`` with the final ones among them."""
        dirty = self.core.dirty
        self.core.dirty = set()
        wall_now = time.time()
        rows = []
        tasks = self.core.tasks
        for task_id in dirty:
            task = tasks[task_id]
            if task.state in (TaskState.ASSIGNED, TaskState.RUNNING) and task.journaled:
                continue
            spec = None
            if not task.journaled:
                spec = task.packed if task.packed is not None else _pack_spec(task.spec, self._pack)
                task.packed = None
                task.journaled = True
            finished_at = None
            if task.state in FINAL_STATES:
                finished_at = task.finished_wall or wall_now
                finished.append(task_id)
            rows.append(JournalRow(
                task_id, task.seq, task.state.value, task.attempt, task.epoch, task.deaths, finished_at, spec,
                task.value,
                _error_list(task.error), [[h.attempt, h.worker_id, h.outcome, _error_list(h.error), h.started_at,
                                           h.ended_at] for h in task.history], task.output,
            ))
        return rows


def _error_list(error: ErrorInfo | None) -> list[str] | None:
    return None if error is None else [error.type, error.message, error.traceback]


def _record_from_row(row: JournalRow | RowProblem, now: float, wall_now: float) -> TaskRecord | str:
    """The task a journal row holds, or why it cannot be rebuilt (a row no code path may trust)."""
    if isinstance(row, RowProblem):
        return row.reason
    try:
        assert row.spec is not None
        spec = _unpack_spec(row.spec)
        record = TaskRecord(spec, row.seq, TaskState(row.state), attempt=row.attempt, epoch=row.epoch,
                            deaths=row.deaths, size=len(row.spec), journaled=True)
        record.value = row.value
        record.output = row.output
        record.error = _decode_error(row.error) if row.error else None  # strict: types checked, as on the wire
        record.history = [_decode_attempt(attempt) for attempt in row.history]
        if type(record.output) is not str:
            raise TypeError(f"output is {type(record.output).__name__}, not str")
    except Exception as exc:  # a row written by an older build, or damaged on disk
        return f"its stored spec or history cannot be read ({type(exc).__name__}: {exc})"
    if record.history:
        record.worker_id = record.history[-1].worker_id  # who ran the last attempt
    if row.finished_at is not None:  # wall clock in the journal, monotonic in memory
        record.finished_at = now - max(0.0, wall_now - row.finished_at)
        record.finished_wall = round(row.finished_at, 3)
    return record


_decode_error = record_decoder(ErrorInfo)
_decode_attempt = record_decoder(AttemptRecord)
_encode_spec = record_encoder(TaskSpec)
_decode_spec = record_decoder(TaskSpec)
_UNTRACED_FIELDS = len(dataclasses.fields(TaskSpec)) - 1  # a stored spec without its (last) trace field


def _pack_spec(spec: TaskSpec, pack: Callable[[Any], bytes]) -> bytes:
    """``spec`` as the journal stores it: the wire layout, without ``trace`` when it is "" (see the module doc)."""
    fields = _encode_spec(spec)
    if not spec.trace:
        del fields[-1]
    return pack(fields)


def _unpack_spec(blob: bytes) -> TaskSpec:
    """The strict inverse of :func:`_pack_spec` (a spec without ``trace`` reads with ""); raises ProtocolError."""
    try:
        value = unpack_strict(blob)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"stored TaskSpec {unpack_error(exc)}") from None
    if type(value) is list and len(value) == _UNTRACED_FIELDS:
        value.append("")
    return _decode_spec(value)  # type: ignore[no-any-return]


def _rebuilt(row: JournalRow | RowProblem, now: float, wall_now: float) -> tuple[TaskRecord, str]:
    """The task a row holds and "", or, when it cannot be rebuilt, its stand-in and why."""
    record = _record_from_row(row, now, wall_now)
    if isinstance(record, str):
        return _unreadable(row, record), record
    return record, ""


def _unreadable(row: JournalRow | RowProblem, reason: str) -> TaskRecord:
    """A final stand-in for a row that cannot be rebuilt: FAILED with why (what its row says, if it can)."""
    state, error = TaskState.FAILED, ErrorInfo("Quarantined", f"its stored data cannot be read: {reason}")
    if isinstance(row, JournalRow) and row.state in _FINAL_VALUES:
        state = TaskState(row.state)
        if row.error and len(row.error) == 3 and all(type(part) is str for part in row.error):
            error = ErrorInfo(*row.error)
    record = TaskRecord(TaskSpec(row.task_id, "unreadable:spec"), row.seq, state, journaled=True)
    record.error = error
    return record


_FINAL_VALUES = frozenset(state.value for state in FINAL_STATES)


def _named_ids(events: list[Any]) -> Iterable[str]:
    """Task ids whose records the core reads for these events (a query reads the journal itself)."""
    for event in events:
        if type(event) is ev.TasksSubmitted:
            for spec in event.tasks:
                yield spec.task_id
                if spec.deps or spec.kwargs or spec.args:
                    yield from all_deps(spec)
        elif type(event) is ev.WatchRequested:
            yield from event.task_ids


def _size(value: Any, pack: Callable[[Any], bytes]) -> int:
    """Bytes ``value`` takes on the wire (exact for containers and strings, near enough for scalars)."""
    if value is None or type(value) in (int, float, bool):
        return 9
    if type(value) in (str, bytes):
        return len(value) + 5
    return len(pack(value))
