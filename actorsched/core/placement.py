"""The dispatcher's pure core: the ready heap, a view of free capacity, the placement policy.

Theory of operation
-------------------
Ready tasks wait in one heap ordered by ``(priority key, submit order)``: a smaller
priority runs first, FIFO within a priority.  With ``aging_s_per_priority > 0`` a task
gains one priority level per that many seconds of waiting; because every waiting
task ages at the same rate, the aged order is fixed at insertion time
(``priority + ready_at / aging``), so the heap never needs re-sorting.

Capacity is a view built from the registry's deltas (``WorkerUp``, ``SlotsFreed``,
load reports): ``free = slots - outstanding``, where ``outstanding`` grows when this
core places a task and shrinks when the registry reports slots freed.  Deltas commute,
so the view stays right whatever order the messages arrive in.  A worker never gets
more tasks than its free slots.

Placement: each task goes to the accepting worker with free slots, the right tags and
the lowest load score (see :func:`actorsched.core.registry.load_score`); the score is
recomputed after every placement so a batch spreads across workers.  A retry waits
up to ``retry_elsewhere_s`` for a worker where the task has not failed or crashed, then
takes any (see :meth:`DispatcherCore._pick`).  Tasks that cannot be placed now (tags
no free worker has, retries waiting) are looked past, up to ``_MAX_SKIPPED`` per round.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from actorsched.config import PlacementConfig
from actorsched.core.commands import PeerKey, Placement, ReadyTask
from actorsched.core.registry import load_score

_MAX_SKIPPED = 1024  # tasks that cannot be placed now (tags, retries waiting), looked past per round


@dataclass(slots=True)
class Capacity:
    worker_id: str
    slots: int
    tags: frozenset[str]
    outstanding: int = 0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    accepting: bool = True
    probe: bool = False  # half-open circuit breaker: one task at a time

    @property
    def free(self) -> int:
        return (1 if self.probe else self.slots) - self.outstanding


class DispatcherCore:
    def __init__(self, config: PlacementConfig) -> None:
        self.config = config
        self.heap: list[tuple[float, int, int, str]] = []  # (priority key, seq, attempt, task id)
        self.entries: dict[str, ReadyTask] = {}
        self.workers: dict[PeerKey, Capacity] = {}
        self.placed = 0

    # ------------------------------------------------------------------ events

    def tasks_ready(self, tasks: list[ReadyTask]) -> None:
        aging = self.config.aging_s_per_priority
        for task in tasks:
            self.entries[task.task_id] = task
            key = task.priority + task.ready_at / aging if aging > 0 else float(task.priority)
            heapq.heappush(self.heap, (key, task.seq, task.attempt, task.task_id))

    def tasks_withdrawn(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.entries.pop(task_id, None)  # its heap item is skipped when popped

    def worker_up(self, key: PeerKey, worker_id: str, slots: int, tags: tuple[str, ...], running: int) -> None:
        self.workers[key] = Capacity(worker_id, slots, frozenset(tags), outstanding=running)

    def worker_down(self, key: PeerKey) -> None:
        self.workers.pop(key, None)

    def worker_load(self, key: PeerKey, cpu_percent: float, memory_percent: float) -> None:
        capacity = self.workers.get(key)
        if capacity is not None:
            capacity.cpu_percent = cpu_percent
            capacity.memory_percent = memory_percent

    def worker_accepting(self, key: PeerKey, accepting: bool, probe: bool = False) -> None:
        capacity = self.workers.get(key)
        if capacity is not None:
            capacity.accepting = accepting
            capacity.probe = probe

    def slots_freed(self, key: PeerKey, count: int) -> None:
        capacity = self.workers.get(key)
        if capacity is not None:
            capacity.outstanding = max(0, capacity.outstanding - count)

    # ------------------------------------------------------------------ decisions

    def dispatch(self, now: float = 0.0) -> list[Placement]:
        """Match ready tasks to free slots; returns one or more placements per worker.

        ``now`` (the clock of the tasks' ``ready_at``) bounds how long a retry waits for
        a worker where it has not failed (``retry_elsewhere_s``).
        """
        if not self.entries:
            self.heap.clear()
            return []
        candidates = [
            (self._score(c), key) for key, c in self.workers.items() if c.accepting and c.free > 0
        ]
        if not candidates:
            return []
        heapq.heapify(candidates)
        placed: dict[PeerKey, list[ReadyTask]] = {}
        skipped: list[tuple[float, int, int, str]] = []
        while self.heap and candidates and len(skipped) < _MAX_SKIPPED:
            item = heapq.heappop(self.heap)
            task = self.entries.get(item[3])
            if task is None or task.attempt != item[2]:
                continue  # withdrawn or superseded
            index = self._pick(candidates, task, now)
            if index < 0:
                skipped.append(item)
                continue
            _, key = candidates[index]
            capacity = self.workers[key]
            del self.entries[task.task_id]
            placed.setdefault(key, []).append(task)
            capacity.outstanding += 1
            if index == 0:
                if capacity.free > 0:
                    heapq.heapreplace(candidates, (self._score(capacity), key))
                else:
                    heapq.heappop(candidates)
            else:  # a tagged task took a worker from the middle of the heap
                if capacity.free > 0:
                    candidates[index] = (self._score(capacity), key)
                else:
                    candidates[index] = candidates[-1]
                    candidates.pop()
                heapq.heapify(candidates)
        for item in skipped:
            heapq.heappush(self.heap, item)
        batch = self.config.max_assign_batch
        self.placed += sum(len(tasks) for tasks in placed.values())
        return [
            Placement(key, tasks[i:i + batch]) for key, tasks in placed.items() for i in range(0, len(tasks), batch)
        ]

    def free_slots(self) -> int:
        return sum(max(c.free, 0) for c in self.workers.values() if c.accepting)

    def _pick(self, candidates: list[tuple[float, PeerKey]], task: ReadyTask, now: float) -> int:
        """Index of the best candidate for ``task``, or -1 if none may take it now.

        A retry goes to a worker where the task has not failed yet, waiting up to
        ``retry_elsewhere_s`` for one to have a free slot: a broken worker fails fast,
        stays free and would otherwise draw every retry to itself.  It goes back to a
        worker where it failed once that wait is over, or at once if no accepting worker
        able to run it is left outside ``avoid``.
        """
        if not task.tags and not task.avoid:
            return 0
        best = fallback = -1
        for index, (score, key) in enumerate(candidates):
            capacity = self.workers[key]
            if task.tags and not capacity.tags.issuperset(task.tags):
                continue
            if capacity.worker_id in task.avoid:
                if fallback < 0 or score < candidates[fallback][0]:
                    fallback = index
            elif best < 0 or score < candidates[best][0]:
                best = index
        if best >= 0 or fallback < 0:
            return best
        if now - task.ready_at < self.config.retry_elsewhere_s and self._has_untried_worker(task):
            return -1  # wait for a worker where it has not failed
        return fallback

    def _has_untried_worker(self, task: ReadyTask) -> bool:
        """Whether an accepting worker able to run ``task`` (free or not) is outside its ``avoid``."""
        return any(c.accepting and c.worker_id not in task.avoid and c.tags.issuperset(task.tags)
                   for c in self.workers.values())

    def _score(self, c: Capacity) -> float:
        return load_score(c.outstanding, c.slots, c.cpu_percent, c.memory_percent, self.config)
