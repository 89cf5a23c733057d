"""The task queue's pure core: every task record, its state, attempts and watchers.

Theory of operation
-------------------
The core owns each task's record and is the only place a state changes (through
:func:`check_transition`).  It does not place tasks: a task that becomes QUEUED is
handed to the Dispatcher as a :class:`ReadyTask` stamped with the attempt number and
coordinator epoch that fence it.  The Dispatcher reports placements back
(:meth:`TaskQueueCore.tasks_assigned`); workers report starts and outcomes.

It alone knows which worker incarnation holds which attempt (:attr:`TaskQueueCore.held`),
so it requeues what a lost worker held, takes back unstarted tasks, and tells the
Dispatcher ``FreeSlots`` whenever a task stops occupying a worker.  It also measures
each task name's run time (a moving average), which marks a ready task *short* (it may
wait in a worker's prefetch) or not.

Invariants:

* a task is in exactly one state; final states never change, so at most one result
  is committed per task;
* an outcome is committed only if its ``(epoch, attempt)`` and its worker are the
  task's current ones; anything else is counted as stale and dropped;
* attempts only grow;
* a submit batch is accepted whole or rejected whole.

Every method takes ``now`` (monotonic seconds) and returns commands; changed records
are collected in :attr:`TaskQueueCore.dirty` for the journal.

Memory: with a journal, a final task leaves memory once its final row is durable
(:meth:`TaskQueueCore.forget`), unless an unfinished task still depends on it (its
result may be an argument); the shell reads it back from the journal when a request
names it (:meth:`TaskQueueCore.recall`).  Memory then holds the unfinished tasks only,
and those are bounded by ``max_pending_tasks`` and ``max_pending_per_client``.
:attr:`TaskQueueCore.counts` counts every task the journal knows, in memory or not.

Output: each reported outcome's captured stdout and stderr (bounded by the worker)
replaces the task's :attr:`TaskRecord.output`, so a task holds its last attempt's only;
it is journaled with the result and leaves memory with it.  Listings read the records
through :meth:`TaskQueueCore.matching` and :func:`light_info` (no value, output, history
or traceback); :func:`name_matches` and :func:`text_matches` are the filters, shared
with the shell's journal scan.
"""

from __future__ import annotations

import fnmatch
import heapq
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from actorsched.core.commands import (
    Command,
    FreeSlots,
    JudgeAttempts,
    MakeReady,
    PeerKey,
    ReadyTask,
    SendToClient,
    SendToWorker,
    WithdrawTasks,
)
from actorsched.core.states import FINAL_STATES, NOT_FOUND, TaskState, check_transition
from actorsched.core.stats import Histogram, NameCounts, NamedHistograms
from actorsched.protocol import (
    AttemptRecord,
    AttemptRef,
    CancelReply,
    CancelTasks,
    ErrorInfo,
    ErrorReply,
    QueryReply,
    Release,
    SubmitReply,
    TaskInfo,
    TaskOutcome,
    TasksDone,
    TaskSpec,
)
from actorsched.recordcodec import record_builder
from actorsched.settings import TasksConfig

REF_KEY = "__actorsched_ref__"  # {REF_KEY: task_id} in arguments stands for that task's result
PRIORITY_MIN = -1_000_000
PRIORITY_MAX = 1_000_000

# Outcomes that say the task can never succeed as submitted: retrying is pointless.
NOT_RETRYABLE = frozenset({"TaskNotAllowed", "TaskNotFound", "ResultNotSerializable", "Cancelled"})
# Outcomes that say the process running the task died under it.
WORKER_DEATHS = frozenset({"ChildProcessDied"})

S = TaskState
_STATE_VALUES = frozenset(state.value for state in TaskState)
_FIRST = operator.itemgetter(0)
# Positional constructors that skip a frozen dataclass's per-field __setattr__ (built per task).
_task_info = record_builder(TaskInfo)
_ready_task = record_builder(ReadyTask)
_attempt_record = record_builder(AttemptRecord)
_CANCELLED_BY_CLIENT = ErrorInfo("Cancelled", "cancelled by a client")
# Attempts that point at their worker: a retry avoids it for a while (a lost assignment does not).
_AVOIDED_OUTCOMES = frozenset({"failed", "worker lost"})
_MAX_NAMES_TIMED = 10_000  # run-time averages kept; past that the table starts afresh
_DURATION_WEIGHT = 0.2  # weight of the newest run in a name's moving average
_JUDGE_BATCH = 4096  # successes for the breakers are sent in batches (failures at once)
DEBUG, INFO, WARNING = 10, 20, 30  # the logging module's levels, for notes (the core does not log)
_START_GRACE_S = 1.0  # a worker reports a start within milliseconds; an attempt unstarted longer did not run
_FAIR_WINDOW_S = 60.0  # a new task's place in line is at most this long before now
_STEP_S = (1e-6, 1e-3, 10.0)  # bounds and start of the measured time between placements


class Jitter(Protocol):
    """Where backoff jitter comes from (``random.Random`` in the coordinator)."""

    def uniform(self, a: float, b: float) -> float: ...


class _Midpoint:
    """Jitter without randomness: the middle of the range (for tests and tools that pass none)."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


@dataclass(slots=True)
class TaskRecord:
    spec: TaskSpec
    seq: int
    state: TaskState
    attempt: int = 0
    epoch: int = 0
    worker: PeerKey = b""
    worker_id: str = ""
    value: Any = None
    error: ErrorInfo | None = None
    deaths: int = 0
    retry_at: float = 0.0
    waiting_on: set[str] = field(default_factory=set)
    dependents: list[str] = field(default_factory=list)
    history: list[AttemptRecord] = field(default_factory=list)
    states: list[TaskState] = field(default_factory=list)  # recent history, for errors
    cancel_waiters: list[tuple[PeerKey, int]] = field(default_factory=list)
    cancel_requested: bool = False
    finished_at: float = 0.0  # monotonic; for retention
    finished_wall: float = 0.0  # wall clock, ms: what the journal stores and clients see as updated_at
    assigned_at: float = 0.0  # monotonic, of the current attempt
    has_refs: bool = False
    since: float = -1.0  # its place in line (monotonic seconds, see _take_place); -1 before it first queues
    client: PeerKey = b""  # who submitted it (b"" after a restart), for the per-client bound
    size: int = 0  # bytes of its packed spec, counted against max_pending_bytes while unfinished
    packed: bytes | None = None  # its packed spec until the shell writes it to the journal
    journaled: bool = False  # the shell wrote its spec: later rows are updates
    submitted_at: float = -1.0  # monotonic, for the submit-to-result latency (-1: before a restart)
    output: str = ""  # what its last reported attempt wrote to stdout and stderr (bounded by the worker)


@dataclass(slots=True)
class _PendingCancel:
    waiting: set[str]
    cancelled: list[str]


class TaskQueueCore:
    """Task records and their lifecycle.  Not thread-safe: one actor owns it."""

    def __init__(self, config: TasksConfig, epoch: int, rng: Jitter | None = None,
                 wall_offset_s: float = 0.0) -> None:
        """``wall_offset_s``: wall clock minus the monotonic ``now``, to stamp attempt history."""
        self.config = config
        self.epoch = epoch
        self.wall_offset_s = wall_offset_s
        self.rng: Jitter = rng or _Midpoint()  # the shell passes random.Random(): cores hold no randomness
        self.tasks: dict[str, TaskRecord] = {}
        self.dirty: set[str] = set()
        self.open_count = 0  # tasks not in a final state
        self.counts: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.counters: dict[str, int] = {
            "submitted": 0, "stale_outcomes": 0, "repeated_outcomes": 0, "retries": 0, "requeued_lost": 0,
            "rejected_batches": 0, "purged": 0, "lost_assignments": 0, "take_back_asked": 0, "taken_back": 0,
            "forgotten": 0, "recalled": 0, "quarantined": 0, "never_started": 0,
        }
        self._seq = 0
        self._retry_heap: list[tuple[float, str]] = []  # (due, task id); stale items skipped
        self._in_doubt: set[str] = set()  # restored QUEUED tasks held back for restart_grace_s
        self._watchers: dict[str, list[tuple[PeerKey, int]]] = {}
        self._watch_left: dict[tuple[PeerKey, int], int] = {}
        self._watch_tasks: dict[tuple[PeerKey, int], list[str]] = {}  # for unwatch
        self._pending_cancels: dict[tuple[PeerKey, int], _PendingCancel] = {}
        self._out: list[Command] = []
        self._ready: list[ReadyTask] = []
        self._done: dict[tuple[PeerKey, int], list[TaskInfo]] = {}
        self._judged: list[tuple[str, bool]] = []
        self._judged_failure = False
        self.held: dict[PeerKey, dict[str, None]] = {}  # live incarnation -> task ids it holds, in placement order
        self.done_by: dict[PeerKey, int] = {}  # live incarnation -> attempts it finished
        self._freed: dict[PeerKey, int] = {}
        self.durations: dict[str, float] = {}  # task name -> moving average of its run time, seconds
        self.short_task_s = config.short_task_s
        self.open_by_client: dict[PeerKey, int] = {}  # unfinished tasks per submitting client
        self.pending_bytes = 0  # packed spec bytes of the unfinished tasks
        self._kept: set[str] = set()  # durable final tasks kept in memory for an unfinished dependent
        self._recent: dict[str, None] = {}  # durable final tasks kept a while (finished_in_memory), oldest first
        self.worker_ids: dict[PeerKey, str] = {}  # live incarnation -> its worker id
        self._places: dict[PeerKey, dict[int, float]] = {}  # client -> priority -> next place in line
        self._head_place = 0.0  # the latest place in line of a task placed
        self._step = _STEP_S[1]  # moving average of the time between placements while tasks wait
        self._last_placed = -1.0
        self._next_start_check = 0.0
        self.notes: list[tuple[int, str]] = []  # (logging level, line) about single tasks, for the shell
        self.debug_notes = False  # the shell sets it when DEBUG is on: per-task start, finish, requeue
        # What /metrics shows: per attempt, ready -> placed; per outcome, the run time by name;
        # per task, submit -> final; final outcomes and retries by name.
        self.queue_wait = Histogram()
        self.run_time = NamedHistograms()
        self.latency = Histogram()
        self.outcomes = NameCounts()

    # ------------------------------------------------------------------ client events

    def submit(self, client: PeerKey, request_id: int, specs: list[TaskSpec], now: float,
               watch: bool = False, packed: list[bytes] | None = None) -> list[Command]:
        """Accept a batch atomically (or reject it whole); with ``watch``, also watch its tasks.

        ``packed``: each spec as the journal stores it (its size counts against
        ``max_pending_bytes`` while the task is unfinished).
        """
        deps: dict[str, tuple[str, ...]] = {}
        error = self._check_batch(specs, deps, client, packed)
        if error is not None:
            code, message = error
            self.counters["rejected_batches"] += 1
            return [SendToClient(client, ErrorReply(request_id, code, message))]
        new = {spec.task_id: spec for spec in specs if spec.task_id not in self.tasks}  # the rest: idempotent
        blobs = dict(zip((s.task_id for s in specs), packed)) if packed is not None else {}
        for spec in _dependency_order(new, deps) if deps else new.values():
            self._add(spec, deps.get(spec.task_id, ()), now, client, blobs.get(spec.task_id))
        task_ids = [s.task_id for s in specs]
        self._out.append(SendToClient(client, SubmitReply(request_id, task_ids)))
        if watch:
            return self.watch(client, request_id, task_ids)
        return self._flush()

    def cancel(self, client: PeerKey, request_id: int, task_ids: list[str], cascade: bool,
               now: float) -> list[Command]:
        """Cancel tasks; the reply lists every task cancelled, dependents included.

        A task with unfinished dependents is cancelled only with ``cascade`` (its
        dependents could never run); without it the task is left alone and not listed.
        A running task is cancelled only when its worker confirms the attempt stopped.
        """
        pending = _PendingCancel(set(), [])
        for task_id in dict.fromkeys(task_ids):
            task = self.tasks.get(task_id)
            if task is None or task.state in FINAL_STATES:
                continue
            dependents = self._live_dependents(task_id)
            if dependents and not cascade:
                continue
            if task.state in (S.ASSIGNED, S.RUNNING):
                # Only the worker can say the attempt stopped; wait for its outcome.
                pending.waiting.add(task_id)
                task.cancel_waiters.append((client, request_id))
                if not task.cancel_requested:
                    task.cancel_requested = True
                    self._out.append(SendToWorker(task.worker, CancelTasks(
                        [AttemptRef(task_id, task.epoch, task.attempt)])))
                # Its dependents have not started: they go at once, whatever the attempt does.
                for dependent_id in dependents:
                    if self.tasks[dependent_id].state not in FINAL_STATES:
                        self._finish(dependent_id, S.CANCELLED, ErrorInfo(
                            "DependencyFailed", f"dependency {task_id} was cancelled"), now)
                pending.cancelled += self._now_cancelled(dependents)
                continue
            self._finish(task_id, S.CANCELLED, _CANCELLED_BY_CLIENT, now)
            pending.cancelled += [task_id, *self._now_cancelled(dependents)]
        if pending.waiting:
            self._pending_cancels[(client, request_id)] = pending
        else:
            self._out.append(SendToClient(client, CancelReply(request_id, pending.cancelled)))
        return self._flush()

    def query(self, client: PeerKey, request_id: int, task_ids: list[str]) -> list[Command]:
        return [SendToClient(client, QueryReply(request_id, [self.info(t) for t in task_ids]))]

    def watch(self, client: PeerKey, request_id: int, task_ids: list[str]) -> list[Command]:
        key = (client, request_id)
        ready: list[TaskInfo] = []
        watched: list[str] = []
        for task_id in dict.fromkeys(task_ids):
            task = self.tasks.get(task_id)
            if task is None or task.state in FINAL_STATES:
                ready.append(self.info(task_id))
            else:
                self._watchers.setdefault(task_id, []).append(key)
                watched.append(task_id)
        if watched:
            self._watch_left[key] = len(watched)
            self._watch_tasks[key] = watched
        if ready:
            self._out.append(SendToClient(client, TasksDone(request_id, ready)))
        return self._flush()

    def unwatch(self, client: PeerKey, request_id: int) -> None:
        key = (client, request_id)
        if self._watch_left.pop(key, None) is None:
            return
        for task_id in self._watch_tasks.pop(key, ()):
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers[:] = [w for w in watchers if w != key]
                if not watchers:
                    del self._watchers[task_id]

    # ------------------------------------------------------------------ dispatcher / worker events

    def tasks_assigned(self, worker: PeerKey, worker_id: str, tasks: list[ReadyTask], now: float) -> list[Command]:
        """The Dispatcher placed these tasks on ``worker`` (the assign message is on its way)."""
        abandon: list[AttemptRef] = []
        held = self.held.get(worker)
        head = self._head_place
        observe_wait = self.queue_wait.observe
        for ready in tasks:
            if ready.since > head:
                head = ready.since
            observe_wait(now - ready.ready_at)
            task = self.tasks.get(ready.task_id)
            if task is None or task.state is not S.QUEUED or task.attempt != ready.attempt:
                # Cancelled (or requeued) while the placement was in flight.
                abandon.append(AttemptRef(ready.task_id, ready.epoch, ready.attempt))
                continue
            self._move(task, S.ASSIGNED)
            task.worker = worker
            task.worker_id = worker_id
            task.assigned_at = now
            if held is not None:
                held[ready.task_id] = None
            else:  # the worker left (or is not admitted yet): the task goes back, fenced by a new attempt
                abandon.append(AttemptRef(ready.task_id, ready.epoch, ready.attempt))
                self._lost(ready.task_id, task, f"worker {worker_id} left before the assignment reached it", now)
        self._head_place = head
        if self.counts[S.QUEUED] and self._last_placed >= 0 and tasks:  # busy: a sample of the pace
            sample = (now - self._last_placed) / len(tasks)
            self._step = min(_STEP_S[2], max(_STEP_S[0], self._step + 0.1 * (sample - self._step)))
        self._last_placed = now
        if abandon:
            self._free(worker, len(abandon))
            self._out.append(SendToWorker(worker, CancelTasks(abandon)))
        return self._flush()

    def worker_admitted(self, worker: PeerKey, worker_id: str = "") -> None:
        """A worker incarnation joined: placements on it are real from now on."""
        self.held.setdefault(worker, {})
        self.done_by.setdefault(worker, 0)
        if worker_id:
            self.worker_ids[worker] = worker_id

    def take_back(self, worker: PeerKey, count: int) -> list[Command]:
        """Ask ``worker`` for up to ``count`` of its newest unstarted tasks (it answers with what it gave up)."""
        held = self.held.get(worker)
        if not held or count <= 0:
            return []
        refs: list[AttemptRef] = []
        for task_id in reversed(held):
            task = self.tasks[task_id]
            if task.state is S.ASSIGNED and not task.cancel_requested:
                refs.append(AttemptRef(task_id, task.epoch, task.attempt))
                if len(refs) >= count:
                    break
        if refs:
            self.counters["take_back_asked"] += len(refs)
            self._out.append(SendToWorker(worker, Release(refs)))
        return self._flush()

    def attempts_released(self, worker: PeerKey, attempts: list[AttemptRef], now: float) -> list[Command]:
        """``worker`` gave these attempts back unstarted: they queue again in their old place, same attempt."""
        for ref in attempts:
            task = self.tasks.get(ref.task_id)
            if task is None or task.state is not S.ASSIGNED or not self._is_current(task, worker, ref):
                continue
            self._unhold(worker, ref.task_id)
            self.counters["taken_back"] += 1
            if task.cancel_requested:
                self._finish(ref.task_id, S.CANCELLED, _CANCELLED_BY_CLIENT, now)
                continue
            self._move(task, S.QUEUED)
            self._make_ready(ref.task_id, task, now)
        return self._flush()

    def check_held(self, worker: PeerKey, worker_id: str, holds: list[str], placed_before: float,
                   now: float) -> list[Command]:
        """The worker says it holds exactly ``holds``: what it was given before ``placed_before`` and
        does not hold never reached it (or its result was lost), and goes back to the queue."""
        held = self.held.get(worker)
        if not held:
            return []
        holding = set(holds)
        missing = [t for t in held if t not in holding and self.tasks[t].assigned_at < placed_before]
        for task_id in missing:
            self._unhold(worker, task_id)
            self.counters["lost_assignments"] += 1
            self._lost(task_id, self.tasks[task_id],
                       f"worker {worker_id} does not hold it: the assignment or its result was lost", now)
        return self._flush()

    def tasks_started(self, worker: PeerKey, attempts: list[AttemptRef]) -> None:
        for ref in attempts:
            task = self.tasks.get(ref.task_id)
            if task is not None and task.state is S.ASSIGNED and self._is_current(task, worker, ref):
                self._move(task, S.RUNNING)
                if self.debug_notes:
                    self._note(DEBUG, "task started", task)

    def outcomes_reported(self, worker: PeerKey, outcomes: list[TaskOutcome], now: float) -> list[Command]:
        durations = self.durations
        for outcome in outcomes:
            task = self.tasks.get(outcome.task_id)
            if task is not None and self._in_doubt_attempt(task, outcome):
                # The attempt we were waiting to hear of after a restart finished: its token
                # proves it is the journal's last attempt, whichever connection reports it.
                # (The journal does not know who ran it: the reporting worker did.)
                self._adopt(task, worker, self.worker_ids.get(worker, task.worker_id), now)
            if task is None or task.state not in (S.ASSIGNED, S.RUNNING) or not self._is_current(
                task, worker, outcome
            ):
                # The committed attempt reported again (a worker re-sends its recent Results after a
                # reconnection) is not stale news: counted apart, so that stale_outcomes keeps its meaning.
                repeated = task is not None and task.state in FINAL_STATES and (
                    task.attempt, task.epoch) == (outcome.attempt, outcome.epoch)
                self.counters["repeated_outcomes" if repeated else "stale_outcomes"] += 1
                continue
            if self._unhold(worker, outcome.task_id):  # (an adopted result was never held)
                self.done_by[worker] += 1
            name = task.spec.name
            average = durations.get(name)
            if average is None and len(durations) >= _MAX_NAMES_TIMED:
                durations.clear()
            durations[name] = outcome.duration_s if average is None else (
                average + _DURATION_WEIGHT * (outcome.duration_s - average))
            self.run_time.observe(name, outcome.duration_s)
            task.output = outcome.output
            if outcome.ok:
                task.value = outcome.value
                self._end_attempt(task, "succeeded", None, now, outcome.duration_s)
                self._judged.append((task.worker_id, True))
                self._judge_success(task)
                self._finish(outcome.task_id, S.SUCCEEDED, None, now)
                continue
            error = outcome.error or ErrorInfo("UnknownError", "the worker reported a failure without details")
            self._end_attempt(task, "failed", error, now, outcome.duration_s)
            self._after_failure(outcome.task_id, task, error, now)
        return self._flush()

    def worker_gone(self, worker: PeerKey, worker_id: str, reason: str, now: float, worker_died: bool = True,
                    keep: frozenset[str] = frozenset()) -> list[Command]:
        """A worker incarnation died or left: requeue or quarantine every task it held.

        ``keep``: tasks a new registration of the same worker reports running stay as
        they are, for its :meth:`worker_reports_running`.
        """
        held = self.held.pop(worker, None) or {}
        self.done_by.pop(worker, None)
        self._freed.pop(worker, None)
        self.worker_ids.pop(worker, None)
        return self.worker_lost(worker, worker_id, [t for t in held if t not in keep], reason, now, worker_died)

    def worker_lost(self, worker: PeerKey, worker_id: str, task_ids: Iterable[str], reason: str,
                    now: float, worker_died: bool = True) -> list[Command]:
        """A worker died or left holding these tasks (or, alive, never got them): requeue or quarantine each."""
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is None or task.state not in (S.ASSIGNED, S.RUNNING) or task.worker != worker:
                continue
            self._unhold(worker, task_id)
            self.counters["requeued_lost"] += 1
            if not worker_died:
                self._lost(task_id, task, f"worker {worker_id}: {reason}", now)
                continue
            if task.state is S.ASSIGNED and now - task.assigned_at > _START_GRACE_S:
                # Not reported started long after it was placed (waiting in the worker's prefetch,
                # held by a peer that never starts anything, or a start report the worker could not
                # send): nothing says the task killed its worker, so no death is counted.
                self._lost(task_id, task, f"worker {worker_id} was lost without reporting the task started "
                                          f"(no death counted): {reason}", now, outcome="worker lost")
                continue
            error = ErrorInfo("WorkerLost", f"worker {worker_id} was lost while holding the task: {reason}")
            self._end_attempt(task, "worker lost", error, now, now - task.assigned_at)
            self._after_failure(task_id, task, error, now, worker_death=True)
        return self._flush()

    def _lost(self, task_id: str, task: TaskRecord, reason: str, now: float,
              outcome: str = "assignment lost") -> None:
        """An attempt that never ran (or whose worker left in order): back in its place, no death counted.

        ``outcome`` "worker lost" (the worker vanished) also makes its retry avoid that worker.
        """
        error = ErrorInfo("WorkerLost" if outcome == "worker lost" else "AssignmentLost", reason)
        if self.debug_notes:
            self._note(DEBUG, "task requeued", task, error)
        self._end_attempt(task, outcome, error, now, now - task.assigned_at)
        if task.cancel_requested:
            self._finish(task_id, S.CANCELLED, _CANCELLED_BY_CLIENT, now)
        else:
            task.error = error
            self._queue(task_id, task, now, keep_place=True)

    def worker_reports_running(self, worker: PeerKey, worker_id: str, attempts: list[AttemptRef],
                               now: float) -> list[Command]:
        """A (re-)registering worker lists what it runs: keep what is current, abandon the rest."""
        abandon: list[AttemptRef] = []
        held = self.held.setdefault(worker, {})
        self.done_by.setdefault(worker, 0)
        self.worker_ids[worker] = worker_id
        for ref in attempts:
            task = self.tasks.get(ref.task_id)
            if task is not None and self._in_doubt_attempt(task, ref):
                self._adopt(task, worker, worker_id, now)  # after our restart: no need to run it again
                held[ref.task_id] = None
            elif task is not None and _same_attempt(task, ref) and task.state in (S.ASSIGNED, S.RUNNING) \
                    and task.worker_id == worker_id:
                old = self.held.get(task.worker)
                if old is not None and old is not held:
                    old.pop(ref.task_id, None)
                task.worker = worker  # the same worker on a new connection
                held[ref.task_id] = None
            else:
                abandon.append(ref)
                if task is not None and task.state in (S.ASSIGNED, S.RUNNING) and task.worker_id == worker_id \
                        and task.worker not in self.held:
                    # Its current attempt was placed on this worker's old, gone connection, which
                    # never reported it: it will not come back, so it queues again.
                    self._lost(ref.task_id, task, f"worker {worker_id} reconnected without it", now)
        if abandon:
            self._free(worker, len(abandon))  # the worker drops them: they no longer occupy it
            self._out.append(SendToWorker(worker, CancelTasks(abandon)))
        return self._flush()

    def tick(self, now: float) -> list[Command]:
        """Fire due retry timers; take back attempts never started; send the breakers' pending judgments."""
        taken = False
        if now >= self._next_start_check:
            self._next_start_check = now + min(5.0, self.config.start_timeout_s / 2)
            taken = self._take_back_unstarted(now)
        heap = self._retry_heap
        if not taken and (not heap or heap[0][0] > now):
            return self._flush(judge_now=True) if self._judged else []
        while heap and heap[0][0] <= now:
            due, task_id = heapq.heappop(heap)
            task = self.tasks.get(task_id)
            if task is None or task.retry_at != due:
                continue  # superseded or disarmed
            if task.state is S.RETRYING:
                self._queue(task_id, task, now)
            elif task.state is S.QUEUED and task_id in self._in_doubt:
                self._in_doubt.discard(task_id)  # no worker claimed it: place it again, same attempt
                task.epoch = self.epoch
                self._make_ready(task_id, task, now)
        return self._flush(judge_now=True)

    def _take_back_unstarted(self, now: float) -> bool:
        """Attempts assigned more than ``start_timeout_s`` ago and never started go back to the line.

        A worker starts a task at once when a slot is free, and holds short ones in its
        prefetch for well under a second, so an attempt unstarted this long is held by a
        stuck or hoarding peer: it queues again under a new attempt (the worker is told
        to drop the old one, whose late result would be stale).
        """
        cutoff = now - self.config.start_timeout_s
        tasks = self.tasks
        taken = False
        for worker, held in self.held.items():
            overdue = [t for t in held if tasks[t].state is S.ASSIGNED and tasks[t].assigned_at < cutoff]
            if not overdue:
                continue
            worker_id = self.worker_ids.get(worker, "?")
            refs = []
            for task_id in overdue:
                task = tasks[task_id]
                refs.append(AttemptRef(task_id, task.epoch, task.attempt))
                self._unhold(worker, task_id)
                self.counters["never_started"] += 1
                self._lost(task_id, task, f"worker {worker_id} did not start it within "
                                          f"start_timeout_s={self.config.start_timeout_s:g}", now)
            self._out.append(SendToWorker(worker, CancelTasks(refs)))
            taken = True
        return taken

    def restore(self, records: list[TaskRecord], now: float,
                finished_counts: dict[str, int] | None = None, last_seq: int = 0) -> list[Command]:
        """Rebuild from the journal at start, in submit order.

        With ``finished_counts`` (final tasks in the journal per state), ``records``
        are the unfinished tasks plus the final ones they depend on, which are not
        counted again; without it, every task.  Final tasks keep their results.  A task whose last attempt may still be
        running somewhere (QUEUED or later in the journal, which does not record
        assignments) stays QUEUED but is held back for ``restart_grace_s``: if its
        worker re-registers and reports it, :meth:`worker_reports_running` adopts the
        attempt; otherwise it is placed again under the same attempt number and this
        epoch, and a late result of the old attempt is stale (its epoch differs).
        """
        for record in records:
            if record.state in (S.ASSIGNED, S.RUNNING):
                record.state = S.QUEUED  # not a transition: the journal only knows "queued or later"
            if record.state is S.QUEUED:
                self._in_doubt.add(record.spec.task_id)
            record.states.append(record.state)
            self.tasks[record.spec.task_id] = record
            self._seq = max(self._seq, record.seq)
            if record.state not in FINAL_STATES:
                self.open_count += 1
                self.counts[record.state] += 1
                self.pending_bytes += record.size
            elif finished_counts is None:
                self.counts[record.state] += 1
        for state, count in (finished_counts or {}).items():
            self.counts[TaskState(state)] += count
        self._seq = max(self._seq, last_seq)
        for record in records:
            task_id = record.spec.task_id
            if record.state in FINAL_STATES:
                continue
            record.has_refs = bool(result_refs(record.spec))
            self._link_deps(task_id, record, all_deps(record.spec), now)
            if record.state is S.QUEUED:
                self._retry_later(task_id, record, now + self.config.restart_grace_s)
            elif record.state is S.RETRYING:
                self._retry_later(task_id, record, now)
        return self._flush()

    def purge(self, older_than_s: float, now: float) -> list[str]:
        """Forget final tasks that finished at least ``older_than_s`` ago; returns their ids.

        A task some unfinished task still depends on is kept (its result may be needed).
        """
        purged = self.drop_finished(older_than_s, now)
        for task_id, task in purged:
            self.counts[task.state] -= 1
            self.dirty.discard(task_id)
        self.counters["purged"] += len(purged)
        return [task_id for task_id, _ in purged]

    def forget(self, task_ids: Iterable[str], keep_recent: bool = True) -> None:
        """These tasks' final rows are durable: drop them from memory (the journal answers for them).

        One that an unfinished task still depends on stays until that one finishes.  The
        most recent ``finished_in_memory`` small ones (a scalar or short result, little
        output) stay too, oldest out first: a client usually asks for a result right
        after it is done, and reading it back from the journal costs ~15 us.  Tasks read
        back for one request (``keep_recent`` False) leave at once.
        """
        tasks, recent, keep = self.tasks, self._recent, self.config.finished_in_memory
        for task_id in task_ids:
            task = tasks.get(task_id)
            if task is None or task.state not in FINAL_STATES:
                continue
            if task.dependents and self._needed(task):
                self._kept.add(task_id)
                continue
            if keep and keep_recent and _small(task):
                recent[task_id] = None
                continue
            del tasks[task_id]
            self._kept.discard(task_id)
            self.counters["forgotten"] += 1
        while len(recent) > keep:
            task_id = next(iter(recent))
            del recent[task_id]
            task = tasks.get(task_id)
            if task is not None and task.state in FINAL_STATES and task_id not in self._kept:
                if task.dependents and self._needed(task):
                    self._kept.add(task_id)
                    continue
                del tasks[task_id]
                self.counters["forgotten"] += 1

    def drop_finished(self, older_than_s: float, now: float) -> list[tuple[str, TaskRecord]]:
        """Final tasks that finished ``older_than_s`` ago or more, and that no unfinished task needs,
        leave memory; returns them.  Uncounted: with a journal a purge of the same tasks is on its way
        there and :meth:`purged_from_journal` counts what it deleted; without one :meth:`purge` counts."""
        cutoff = now - older_than_s
        tasks = self.tasks
        dropped = [(task_id, task) for task_id, task in tasks.items()
                   if task.state in FINAL_STATES and task.finished_at <= cutoff and not self._needed(task)]
        for task_id, _ in dropped:
            del tasks[task_id]
            self._recent.pop(task_id, None)
            self._kept.discard(task_id)
        return dropped

    def purged_from_journal(self, counts: dict[str, int]) -> None:
        """The journal deleted this many final tasks per state (none of them in memory and needed)."""
        for state, count in counts.items():
            self.counts[TaskState(state)] -= count
            self.counters["purged"] += count

    def kept_ids(self) -> list[str]:
        """Final tasks an unfinished task still depends on: the journal must keep them too."""
        return [t for t, task in self.tasks.items() if task.state in FINAL_STATES and self._needed(task)]

    def recall(self, records: list[TaskRecord]) -> None:
        """Final tasks read back from the journal for a request that names them (already counted).

        The shell forgets them again once the request is handled (:meth:`forget`).
        """
        for record in records:
            task_id = record.spec.task_id
            if task_id in self.tasks or record.state not in FINAL_STATES:
                continue  # only forgotten final tasks are recalled: memory wins
            record.states.append(record.state)
            self.tasks[task_id] = record
            self.counters["recalled"] += 1

    def _needed(self, task: TaskRecord) -> bool:
        """An unfinished task in memory depends on ``task``."""
        tasks = self.tasks
        for dependent_id in task.dependents:
            dependent = tasks.get(dependent_id)
            if dependent is not None and dependent.state not in FINAL_STATES:
                return True
        return False

    def _release_kept(self, deps: Iterable[str]) -> None:
        """A dependent finished: a kept dependency no longer needed leaves memory."""
        for dep in deps:
            if dep in self._kept:
                task = self.tasks.get(dep)
                if task is None or not self._needed(task):
                    self._kept.discard(dep)
                    if task is not None:
                        del self.tasks[dep]
                        self.counters["forgotten"] += 1

    # ------------------------------------------------------------------ reads

    def info(self, task_id: str) -> TaskInfo:
        return task_info(task_id, self.tasks.get(task_id), self.wall_offset_s)

    def matching(self, state: str | None, name: str | None, worker: str | None, id_prefix: str | None,
                 limit: int, max_examined: int) -> tuple[list[tuple[int, str, TaskRecord]], bool]:
        """``(seq, task id, record)`` of the newest ``limit`` tasks in memory that match every filter given
        (see :func:`name_matches`), newest first, and whether the search stopped after ``max_examined``
        records first.  A ``state`` that is no state matches nothing.

        Memory holds tasks in submit order (they are added as submitted, restored in order,
        and tasks read back for a request are forgotten after it), so the search walks it
        backwards and stops at the ``limit``-th match; only finished tasks read back and kept
        for an unfinished dependent sit out of order, so that many more are looked for.
        """
        if state is not None and state not in _STATE_VALUES:
            return [], False
        found: list[tuple[int, str, TaskRecord]] = []
        wanted = limit + len(self._kept)
        examined = 0
        for task_id, task in reversed(self.tasks.items()):
            examined += 1
            if examined > max_examined:
                return found, True
            if state is not None and task.state.value != state:
                continue
            if id_prefix and not task_id.startswith(id_prefix):
                continue
            if name is not None and not name_matches(task.spec.name, name):
                continue
            if worker is not None and not text_matches(task.worker_id, worker):
                continue
            found.append((task.seq, task_id, task))
            if len(found) >= wanted:
                break
        if len(found) > limit:
            found.sort(key=_FIRST, reverse=True)
            del found[limit:]
        return found, False

    def metrics(self) -> dict[str, Any]:
        """Copies of the distributions and outcome counts (for /metrics and the dashboard)."""
        return {"queue_wait": self.queue_wait.snapshot(), "run_time": self.run_time.snapshot(),
                "latency": self.latency.snapshot(), "outcomes": self.outcomes.snapshot()}

    def stats(self) -> dict[str, Any]:
        return {"tasks": sum(self.counts.values()), "in_memory": len(self.tasks), "open": self.open_count,
                "pending_bytes": self.pending_bytes, "clients": len(self.open_by_client), "epoch": self.epoch,
                "states": {state.value: n for state, n in self.counts.items()}, **self.counters}

    # ------------------------------------------------------------------ internals

    def _check_batch(self, specs: list[TaskSpec], deps: dict[str, tuple[str, ...]],
                     client: PeerKey = b"", packed: list[bytes] | None = None) -> tuple[str, str] | None:
        """The first reason to refuse the batch, or None; fills ``deps`` for new tasks that have some."""
        if len(specs) == 0:
            return "bad-request", "a submit batch must hold at least one task"
        in_batch: dict[str, TaskSpec] = {}
        for spec in specs:
            problem = _spec_problem(spec)
            if problem:
                return "bad-request", f"task {spec.task_id!r}: {problem}"
            existing = self.tasks.get(spec.task_id)
            if existing is not None and existing.spec != spec:
                return "conflict", (f"task id {spec.task_id!r} already exists with different content; "
                                    f"submit under a new id, or resubmit exactly the same task")
            if spec.task_id in in_batch and in_batch[spec.task_id] != spec:
                return "conflict", f"task id {spec.task_id!r} appears twice in the batch with different content"
            in_batch[spec.task_id] = spec
        for spec in specs:
            if spec.task_id in self.tasks:
                continue
            spec_deps = all_deps(spec)
            if not spec_deps:
                continue
            deps[spec.task_id] = spec_deps
            for dep in spec_deps:
                if dep == spec.task_id:
                    return "bad-request", f"task {spec.task_id!r} depends on itself"
                if dep not in in_batch and dep not in self.tasks:
                    return "bad-request", f"task {spec.task_id!r} depends on unknown task {dep!r}"
        cycle = _find_cycle(deps) if deps else []
        if cycle:
            return "bad-request", f"dependency cycle: {' -> '.join(cycle)}"
        new = sum(1 for task_id in in_batch if task_id not in self.tasks)
        if self.open_count + new > self.config.max_pending_tasks:
            return "queue-full", (f"queue full: {self.open_count} tasks pending, batch adds {new}, "
                                  f"max_pending_tasks={self.config.max_pending_tasks}; retry later")
        if packed is not None:
            new_bytes = sum(len(blob) for spec, blob in zip(specs, packed) if spec.task_id not in self.tasks)
            if self.pending_bytes + new_bytes > self.config.max_pending_bytes:
                return "queue-full", (
                    f"queue full: unfinished tasks hold {self.pending_bytes} bytes of arguments, batch adds "
                    f"{new_bytes}, max_pending_bytes={self.config.max_pending_bytes}; retry later")
        mine = self.open_by_client.get(client, 0)
        if client and mine + new > self.config.max_pending_per_client:
            return "queue-full", (f"queue full for this client: it has {mine} unfinished tasks, batch adds {new}, "
                                  f"max_pending_per_client={self.config.max_pending_per_client}; wait for some "
                                  f"to finish, then retry")
        return None

    def _add(self, spec: TaskSpec, deps: tuple[str, ...], now: float, client: PeerKey = b"",
             packed: bytes | None = None) -> None:
        self._seq += 1
        task = TaskRecord(spec, self._seq, S.WAITING, epoch=self.epoch,
                          has_refs=bool(deps) and bool(result_refs(spec)), client=client,
                          size=len(packed) if packed is not None else 0, packed=packed, submitted_at=now)
        self.pending_bytes += task.size
        task.states.append(S.WAITING)
        if client:
            self.open_by_client[client] = self.open_by_client.get(client, 0) + 1
        self.tasks[spec.task_id] = task
        self.counts[S.WAITING] += 1
        self.open_count += 1
        self.counters["submitted"] += 1
        self.dirty.add(spec.task_id)
        self._link_deps(spec.task_id, task, deps, now)

    def _link_deps(self, task_id: str, task: TaskRecord, deps: tuple[str, ...], now: float) -> None:
        """Register ``task`` with its dependencies; a WAITING task then fails, waits or queues."""
        failed: str | None = None
        for dep in deps:
            dep_task = self.tasks.get(dep)
            if dep_task is None:
                continue  # purged (after a restart): a reference to its result fails when placed
            dep_task.dependents.append(task_id)  # also when done: purge keeps what is still needed
            if dep_task.state is S.SUCCEEDED:
                continue
            if dep_task.state in FINAL_STATES:
                failed = dep
            else:
                task.waiting_on.add(dep)
        if task.state is not S.WAITING:
            return
        if failed is not None:
            self._fail_from_dependency(task_id, task, failed, self.tasks[failed], now)
        elif not task.waiting_on:
            self._queue(task_id, task, now)

    def _queue(self, task_id: str, task: TaskRecord, now: float, keep_place: bool = False) -> None:
        """QUEUED for a new attempt, handed to the Dispatcher; ``keep_place``: in its old place in line."""
        if not keep_place or task.since < 0:
            self._take_place(task, now)
        self._move(task, S.QUEUED)
        task.attempt += 1
        task.epoch = self.epoch
        self.dirty.add(task_id)  # the attempt number (and deaths, history) must survive a restart
        self._make_ready(task_id, task, now)

    def _make_ready(self, task_id: str, task: TaskRecord, now: float) -> None:
        task.worker = b""
        if task.since < 0:
            self._take_place(task, now)
        spec = task.spec
        args, kwargs = spec.args, spec.kwargs
        if task.has_refs:  # arguments reference results: hand over the values
            gone = [ref for ref in result_refs(spec) if ref not in self.tasks]
            if gone:
                self._finish(task_id, S.FAILED, ErrorInfo(
                    "DependencyFailed", f"the result of {gone[0]} is no longer kept (purged); resubmit it"), now)
                return
            args, kwargs = self._resolve_refs(args), self._resolve_refs(kwargs)
        self._ready.append(_ready_task(
            task_id, spec.priority, task.seq, task.attempt, task.epoch, spec.name, args, kwargs,
            spec.timeout_s if spec.timeout_s is not None else (self.config.default_timeout_s or None),
            tuple(spec.tags), now,
            tuple({h.worker_id for h in task.history if h.outcome in _AVOIDED_OUTCOMES}) if task.history else (),
            task.since, self.durations.get(spec.name, self.short_task_s) < self.short_task_s, spec.trace,
        ))

    def _note(self, level: int, what: str, task: TaskRecord, error: ErrorInfo | None = None, more: str = "") -> None:
        """A log line about one task for the shell to write (the core itself does no I/O)."""
        line = f"{what} task={task.spec.task_id} name={task.spec.name} attempt={task.attempt} " \
               f"worker={task.worker_id or '-'}"
        if error is not None:
            line += f" error={error.type} reason={error.message[:300]!r}"
        self.notes.append((level, f"{line} {more}" if more else line))

    def _take_place(self, task: TaskRecord, now: float) -> None:
        """Give ``task`` its place in line: fair between clients within a priority (start-time fair queuing).

        A place is a time.  The line's head is the latest place of a task placed; a
        client's tasks of one priority take places one *step* apart from there, the
        step being the measured time between placements (so places track when tasks
        will start).  A client arriving behind another's flood therefore gets a place
        at the head of the line, not behind the flood, and between clients with tasks
        waiting placements alternate.  When nothing waits the head is now.  No place
        is earlier than ``_FAIR_WINDOW_S`` before now, so aging (a priority level per
        ``aging_s_per_priority`` of place) still lifts a task that waits long.
        """
        tags = self._places.get(task.client)
        if tags is None:
            tags = self._places[task.client] = {}
        priority = task.spec.priority
        if not self.counts[S.QUEUED] and now > self._head_place:
            self._head_place = now  # nothing waits: the line starts now
        place = max(self._head_place, now - _FAIR_WINDOW_S, tags.get(priority, 0.0))
        tags[priority] = place + self._step
        task.since = place

    def _after_failure(self, task_id: str, task: TaskRecord, error: ErrorInfo, now: float,
                       worker_death: bool = False) -> None:
        if task.cancel_requested:
            self._finish(task_id, S.CANCELLED, _CANCELLED_BY_CLIENT, now)
            return
        if worker_death or error.type in WORKER_DEATHS:
            task.deaths += 1
            if task.deaths >= self.config.max_worker_deaths:
                self._finish(task_id, S.FAILED, ErrorInfo(
                    "KilledWorker",
                    f"the task was running when its worker process died {task.deaths} times "
                    f"(max_worker_deaths={self.config.max_worker_deaths}); quarantined, last: {error.message}",
                    error.traceback), now)
                return
        max_attempts = task.spec.max_attempts or self.config.max_attempts
        retryable = error.type not in NOT_RETRYABLE and (
            worker_death or error.type in WORKER_DEATHS or error.type == "TimedOut"
            or not task.spec.retry_on or error.type in task.spec.retry_on
            or error.type.rpartition(".")[2] in task.spec.retry_on)
        if not retryable or task.attempt >= max_attempts:
            self._finish(task_id, S.FAILED, error, now)
            return
        self.counters["retries"] += 1
        self.outcomes.add(task.spec.name, "retried")
        if worker_death or error.type in WORKER_DEATHS:
            # A process death is not the task's error: no backoff, and it keeps its place in line.
            self._note(INFO, "task retry", task, error, "backoff_s=0 (a process death)")
            task.error = error
            self._queue(task_id, task, now, keep_place=True)
            return
        self._move(task, S.RETRYING)
        task.error = error
        backoff = self.backoff_s(task.attempt)
        self._note(INFO, "task retry", task, error, f"backoff_s={backoff:.3f}")
        self._retry_later(task_id, task, now + backoff)
        self.dirty.add(task_id)

    def _retry_later(self, task_id: str, task: TaskRecord, due: float) -> None:
        task.retry_at = due
        heapq.heappush(self._retry_heap, (due, task_id))

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(self.config.retry_backoff_cap_s, self.config.retry_backoff_base_s * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def _finish(self, task_id: str, state: TaskState, error: ErrorInfo | None, now: float) -> None:
        task = self.tasks[task_id]
        if task.state is S.QUEUED:
            self._out.append(WithdrawTasks([task_id]))  # the Dispatcher still holds it
        self._move(task, state)
        task.error = error
        task.finished_at = now
        task.finished_wall = round(now + self.wall_offset_s, 3)
        self.outcomes.add(task.spec.name, state.value.lower())
        if state is S.FAILED:
            self._note(WARNING, "task failed", task, error)
        elif state is S.CANCELLED:
            self._note(INFO, "task cancelled", task, error)
        elif self.debug_notes:
            self._note(DEBUG, "task succeeded", task)
        if task.submitted_at >= 0:
            self.latency.observe(now - task.submitted_at)
        self._in_doubt.discard(task_id)
        self.open_count -= 1
        self.pending_bytes -= task.size
        client = task.client
        if client:
            left = self.open_by_client[client] - 1
            if left:
                self.open_by_client[client] = left
            else:
                del self.open_by_client[client]
                self._places.pop(client, None)
        if self._kept and (task.spec.deps or task.has_refs):
            self._release_kept(all_deps(task.spec))
        self.dirty.add(task_id)
        watchers = self._watchers.pop(task_id, None)
        info = self.info(task_id) if watchers else None
        for key in watchers or ():
            if key in self._watch_left:
                self._done.setdefault(key, []).append(info)  # type: ignore[arg-type]
                self._watch_left[key] -= 1
                if self._watch_left[key] == 0:
                    del self._watch_left[key]
                    self._watch_tasks.pop(key, None)
        for key in task.cancel_waiters:
            pending = self._pending_cancels.get(key)
            if pending is None:
                continue
            pending.waiting.discard(task_id)
            if state is S.CANCELLED:
                pending.cancelled.append(task_id)
            if not pending.waiting:
                del self._pending_cancels[key]
                self._out.append(SendToClient(key[0], CancelReply(key[1], pending.cancelled)))
        task.cancel_waiters.clear()
        for dependent_id in task.dependents:
            dependent = self.tasks.get(dependent_id)
            if dependent is None or dependent.state is not S.WAITING:  # (a forgotten one is final)
                continue
            if state is S.SUCCEEDED:
                dependent.waiting_on.discard(task_id)
                if not dependent.waiting_on:
                    self._queue(dependent_id, dependent, now)
            else:
                self._fail_from_dependency(dependent_id, dependent, task_id, task, now)

    def _fail_from_dependency(self, task_id: str, task: TaskRecord, dep_id: str, dep: TaskRecord,
                              now: float) -> None:
        verb = "was cancelled" if dep.state is S.CANCELLED else "failed"
        state = S.CANCELLED if dep.state is S.CANCELLED else S.FAILED
        self._finish(task_id, state, ErrorInfo("DependencyFailed", f"dependency {dep_id} {verb}"), now)

    def _live_dependents(self, task_id: str) -> list[str]:
        """Every unfinished task that (transitively) depends on ``task_id``."""
        found: dict[str, None] = {}
        stack = list(self.tasks[task_id].dependents)
        while stack:
            dependent_id = stack.pop()
            dependent = self.tasks.get(dependent_id)
            if dependent_id in found or dependent is None or dependent.state in FINAL_STATES:
                continue
            found[dependent_id] = None
            stack.extend(dependent.dependents)
        return list(found)

    def _now_cancelled(self, task_ids: list[str]) -> list[str]:
        return [t for t in task_ids if self.tasks[t].state is S.CANCELLED]

    def _resolve_refs(self, value: Any) -> Any:
        if type(value) is dict:
            if len(value) == 1 and type(value.get(REF_KEY)) is str:  # the same test as result_refs
                return self.tasks[value[REF_KEY]].value
            return {k: self._resolve_refs(v) for k, v in value.items()}
        if type(value) is list:
            return [self._resolve_refs(v) for v in value]
        return value

    def _judge_success(self, task: TaskRecord) -> None:
        """For the circuit breakers: the task works, so its earlier failures elsewhere blame those workers.

        (The success itself is counted by :meth:`outcomes_reported`.)
        """
        if len(task.history) > 1:
            blamed = [(h.worker_id, False) for h in task.history[:-1]
                      if h.outcome == "failed" and h.worker_id != task.worker_id]
            if blamed:
                self._judged += blamed
                self._judged_failure = True

    def _end_attempt(self, task: TaskRecord, outcome: str, error: ErrorInfo | None, now: float,
                     duration_s: float) -> None:
        ended_at = now + self.wall_offset_s
        task.history.append(_attempt_record(task.attempt, task.worker_id, outcome, error,
                                          round(ended_at - max(duration_s, 0.0), 6), round(ended_at, 6)))

    def _move(self, task: TaskRecord, target: TaskState) -> None:
        check_transition(task.spec.task_id, task.state, target, task.states)
        self.counts[task.state] -= 1
        self.counts[target] += 1
        task.state = target
        task.states.append(target)
        if len(task.states) > 16:
            del task.states[:-8]

    @staticmethod
    def _is_current(task: TaskRecord, worker: PeerKey, ref: AttemptRef | TaskOutcome) -> bool:
        return _same_attempt(task, ref) and worker == task.worker

    def _in_doubt_attempt(self, task: TaskRecord, ref: AttemptRef | TaskOutcome) -> bool:
        """``ref`` is the journal's last attempt of a task held back after a restart."""
        return task.state is S.QUEUED and ref.task_id in self._in_doubt and _same_attempt(task, ref)

    def _adopt(self, task: TaskRecord, worker: PeerKey, worker_id: str, now: float) -> None:
        self._in_doubt.discard(task.spec.task_id)
        self._move(task, S.ASSIGNED)
        task.retry_at = -1.0  # disarms its grace timer
        task.worker, task.worker_id, task.assigned_at = worker, worker_id, now

    def _free(self, worker: PeerKey, count: int) -> None:
        self._freed[worker] = self._freed.get(worker, 0) + count

    def _unhold(self, worker: PeerKey, task_id: str) -> bool:
        """``task_id`` no longer occupies ``worker``: out of its held tasks, its slot freed (if it held it)."""
        held = self.held.get(worker)
        if held is None or held.pop(task_id, 0) is not None:
            return False
        self._free(worker, 1)
        return True

    def held_counts(self) -> dict[PeerKey, tuple[int, int]]:
        """Each live incarnation's (tasks held, attempts finished), for worker listings."""
        return {worker: (len(held), self.done_by.get(worker, 0)) for worker, held in self.held.items()}

    def _flush(self, judge_now: bool = False) -> list[Command]:
        """The commands decided since the last flush; breaker judgments wait for a failure, a full
        batch or ``judge_now`` (the clock's tick)."""
        out = self._out
        self._out = []
        if self._ready:
            out.append(MakeReady(self._ready))
            self._ready = []
        if self._freed:
            out.extend(FreeSlots(worker, count) for worker, count in self._freed.items())
            self._freed = {}
        if self._judged and (judge_now or self._judged_failure or len(self._judged) >= _JUDGE_BATCH):
            out.append(JudgeAttempts(self._judged))
            self._judged = []
            self._judged_failure = False
        if self._done:
            for (client, request_id), infos in self._done.items():
                out.append(SendToClient(client, TasksDone(request_id, infos)))
            self._done = {}
        return out


def task_info(task_id: str, task: TaskRecord | None, wall_offset_s: float | None = None) -> TaskInfo:
    """What a client is told of a task (in memory, or read back from the journal).

    ``wall_offset_s``: wall clock minus the monotonic clock of the record's times, for
    ``updated_at`` (0, unknown, without it).
    """
    if task is None:
        return TaskInfo(task_id, NOT_FOUND)
    return _task_info(
        task_id, task.state.value, task.spec.name, task.spec.priority, task.attempt, task.worker_id,
        task.value, task.error, list(task.history), task.output, updated_at(task, wall_offset_s),
    )


def light_info(task_id: str, task: TaskRecord, wall_offset_s: float | None = None) -> TaskInfo:
    """A listing's row of a task: no value, output or history, an error without its traceback."""
    error = task.error
    if error is not None and error.traceback:
        error = ErrorInfo(error.type, error.message)
    return _task_info(task_id, task.state.value, task.spec.name, task.spec.priority, task.attempt, task.worker_id,
                      None, error, [], "", updated_at(task, wall_offset_s))


def updated_at(task: TaskRecord, wall_offset_s: float | None) -> float:
    """Wall-clock seconds of the task's last change that its record shows (0: unknown)."""
    if wall_offset_s is None:
        return 0.0
    state = task.state
    if state in FINAL_STATES:
        if task.finished_wall:
            return task.finished_wall  # the same in memory and read back from the journal
        moment = task.finished_at
    elif state is S.ASSIGNED or state is S.RUNNING:
        moment = task.assigned_at
    elif task.history:
        return task.history[-1].ended_at
    else:
        moment = task.submitted_at
    return round(moment + wall_offset_s, 3) if moment > 0 else 0.0


_WILDCARDS = frozenset("*?[")


def text_matches(text: str, pattern: str) -> bool:
    """``text`` is ``pattern``, or matches it as a shell pattern (``gpu-*``) when it has wildcards."""
    if text == pattern:
        return True
    return not _WILDCARDS.isdisjoint(pattern) and fnmatch.fnmatchcase(text, pattern)


def name_matches(name: str, pattern: str) -> bool:
    """A task name filter: the whole name, its function part (``echo`` for ``pkg.mod:echo``), or a
    shell pattern matching the whole name (``*:echo*``)."""
    return text_matches(name, pattern) or (":" not in pattern and name.rpartition(":")[2] == pattern)


def literal_part(pattern: str) -> str:
    """The longest run of ``pattern`` without wildcards: text every match contains (for a prefilter)."""
    parts = [""]
    for char in pattern:
        if char in _WILDCARDS:
            parts.append("")
        else:
            parts[-1] += char
    return max(parts, key=len)


_SMALL = 1024  # bytes of a result or output small enough for a finished task to stay among the recent


def _small(task: TaskRecord) -> bool:
    value = task.value
    kind = type(value)
    return (value is None or kind is int or kind is float or kind is bool
            or ((kind is str or kind is bytes) and len(value) <= _SMALL)) and len(task.output) <= _SMALL


def _same_attempt(task: TaskRecord, ref: AttemptRef | TaskOutcome) -> bool:
    return ref.attempt == task.attempt and ref.epoch == task.epoch


def result_refs(spec: TaskSpec) -> tuple[str, ...]:
    """Tasks whose results the arguments reference (``{REF_KEY: task_id}``, see :func:`actorsched.ref`)."""
    if not spec.kwargs and not any(type(a) in (dict, list) for a in spec.args):
        return ()  # the common case: nothing to scan
    refs: dict[str, None] = {}
    stack: list[Any] = [spec.args, spec.kwargs]
    while stack:
        value = stack.pop()
        if type(value) is dict:
            if len(value) == 1 and type(value.get(REF_KEY)) is str:
                refs[value[REF_KEY]] = None
            else:
                stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
    return tuple(refs)


def all_deps(spec: TaskSpec) -> tuple[str, ...]:
    """``spec.deps`` plus every task whose result an argument references."""
    refs = result_refs(spec)
    return tuple(dict.fromkeys([*spec.deps, *refs])) if refs else tuple(spec.deps)


def _spec_problem(spec: TaskSpec) -> str:
    module, sep, function = spec.name.partition(":")
    if not spec.task_id:
        return "task_id must not be empty"
    if not sep or not module or not function:
        return f"name must look like 'package.module:function', got {spec.name!r}"
    if not PRIORITY_MIN <= spec.priority <= PRIORITY_MAX:
        return f"priority must be in [{PRIORITY_MIN}, {PRIORITY_MAX}], got {spec.priority}"
    if spec.timeout_s is not None and spec.timeout_s < 0:
        return f"timeout_s must be >= 0 or None, got {spec.timeout_s}"
    if spec.max_attempts is not None and spec.max_attempts < 1:
        return f"max_attempts must be >= 1 or None, got {spec.max_attempts}"
    if spec.trace:  # the decoders bound no string: its length and format are checked here (see TaskSpec)
        return TaskSpec.trace_problem(spec.trace)
    return ""


def _dependency_order(batch: dict[str, TaskSpec], deps: dict[str, tuple[str, ...]]) -> list[TaskSpec]:
    """The batch with every task after its in-batch dependencies (the batch has no cycle)."""
    ordered: list[TaskSpec] = []
    placed: set[str] = set()
    for root in batch:
        stack = [(root, False)]
        while stack:
            task_id, expanded = stack.pop()
            if task_id in placed:
                continue
            if expanded:
                placed.add(task_id)
                ordered.append(batch[task_id])
                continue
            stack.append((task_id, True))
            stack.extend((dep, False) for dep in deps.get(task_id, ()) if dep in batch and dep not in placed)
    return ordered


def _find_cycle(deps: dict[str, tuple[str, ...]]) -> list[str]:
    """A dependency cycle among the new tasks of a batch (those with dependencies), as a path, or []."""
    colour: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in deps:
        if colour.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                colour[node] = 1
                path.append(node)
            edges = [d for d in deps[node] if d in deps]
            if index < len(edges):
                stack.append((node, index + 1))
                nxt = edges[index]
                if colour.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if not colour.get(nxt):
                    stack.append((nxt, 0))
                continue
            colour[node] = 2
            path.pop()
    return []
