"""The dispatcher's pure core: the ready heaps, the count of tasks outstanding per worker, the placement policy.

Theory of operation
-------------------
Ready tasks wait in two heaps ordered by ``(priority key, place in line, submit order)``:
a smaller priority runs first, then the earlier place.  The TaskQueue gives each task
its place (``since``), fair between clients: a client that arrives behind another's
flood gets a place at the head of the line (see ``TaskQueueCore._take_place``).
With ``aging_s_per_priority > 0`` a task gains one priority level per that many
seconds of place; because every waiting task ages at the same rate, the aged order
is fixed at insertion time
(``priority + since / aging``), so the heap never needs re-sorting.  A task whose
worker died under it keeps its place in line.

Short and long tasks: the TaskQueue marks a task *short* when its name's measured run
time is below ``short_task_s``.  A worker takes up to ``slots`` tasks of any kind plus
up to ``prefetch`` more short ones, which wait in its own queue so a free child never
waits a round trip to the coordinator.  Long tasks (and tasks of a name never seen to
finish) are placed only where a slot is free, so they never queue behind each other on
a busy worker.  Short tasks live in their own heap so that a round never has to look
past thousands of long ones to find them; the two heads are compared to keep the order.

Outstanding counts are this core's own fact: a placement adds to a worker's count, the
TaskQueue's ``FreeSlots`` subtracts (an outcome, a released or requeued task).  Deltas
commute, so the count is right whatever order the messages arrive in.

Placement: each task goes to the accepting worker with room, the right tags and the
lowest load score (see :func:`actorsched.core.registry.load_score`); the score is
recomputed after every placement so a batch spreads across workers.  A retry waits
up to ``retry_elsewhere_s`` for a worker where the task has not failed or crashed, then
takes any (see :meth:`DispatcherCore._pick`).  Tasks that cannot be placed now (tags
no free worker has, retries waiting) are looked past, up to ``_MAX_SKIPPED`` per round.

Take-back: when nothing is left to place and a worker sits idle while another holds
prefetched tasks beyond its slots, :meth:`DispatcherCore.take_backs` asks the TaskQueue
to take half of that excess back (the worker gives back only what it has not started).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from actorsched.core.commands import PeerKey, Placement, ReadyTask, TakeBack
from actorsched.core.registry import load_score
from actorsched.settings import PlacementConfig

_MAX_SKIPPED = 1024  # tasks that cannot be placed now (tags, retries waiting), looked past per round
TAKE_BACK_INTERVAL_S = 0.05  # at most one take-back request per worker per this long

_HeapItem = tuple[float, float, int, int, str]  # (priority key, place in line, seq, attempt, task id)


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
    prefetch: int = 0
    last_take_back: float = float("-inf")

    @property
    def limit(self) -> int:
        """Tasks it may hold running: a probe holds one."""
        return 1 if self.probe else self.slots

    @property
    def free(self) -> int:
        """Free slots (not counting prefetch room)."""
        return self.limit - self.outstanding

    @property
    def room(self) -> int:
        """Tasks it may still take, short ones included."""
        return (1 if self.probe else self.slots + self.prefetch) - self.outstanding


class DispatcherCore:
    def __init__(self, config: PlacementConfig) -> None:
        self.config = config
        self.heap: list[_HeapItem] = []  # tasks that need a free slot
        self.short_heap: list[_HeapItem] = []  # short tasks: a free slot or prefetch room
        self.entries: dict[str, ReadyTask] = {}
        self.workers: dict[PeerKey, Capacity] = {}
        self.placed = 0
        self.take_back_requests = 0

    # ------------------------------------------------------------------ events

    def tasks_ready(self, tasks: list[ReadyTask]) -> None:
        aging = self.config.aging_s_per_priority
        entries, heap, short_heap, push = self.entries, self.heap, self.short_heap, heapq.heappush
        for task in tasks:
            entries[task.task_id] = task
            key = task.priority + task.since / aging if aging > 0 else float(task.priority)
            push(short_heap if task.short else heap, (key, task.since, task.seq, task.attempt, task.task_id))

    def tasks_withdrawn(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.entries.pop(task_id, None)  # its heap item is skipped when popped

    def worker_up(self, key: PeerKey, worker_id: str, slots: int, tags: tuple[str, ...], running: int,
                  prefetch: int = 0) -> None:
        self.workers[key] = Capacity(worker_id, slots, frozenset(tags), outstanding=running, prefetch=prefetch)

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
        """Match ready tasks to workers with room; returns one or more placements per worker.

        ``now`` (the clock of the tasks' ``ready_at``) bounds how long a retry waits for
        a worker where it has not failed (``retry_elsewhere_s``).
        """
        if not self.entries:
            self.heap.clear()
            self.short_heap.clear()
            return []
        candidates = [(self._score(c), key) for key, c in self.workers.items() if c.accepting and c.room > 0]
        if not candidates:
            return []
        heapq.heapify(candidates)
        with_free_slot = sum(1 for _, key in candidates if self.workers[key].free > 0)
        placed: dict[PeerKey, list[ReadyTask]] = {}
        skipped: list[tuple[list[_HeapItem], _HeapItem]] = []
        heap, short_heap, entries, workers = self.heap, self.short_heap, self.entries, self.workers
        while candidates and len(skipped) < _MAX_SKIPPED:
            if short_heap and (not heap or short_heap[0] < heap[0]):
                source = short_heap
            elif heap and with_free_slot:
                source = heap
            else:
                break  # the best task waiting needs a free slot: nothing worse overtakes it
            item = heapq.heappop(source)
            task = entries.get(item[4])
            if task is None or task.attempt != item[3]:
                continue  # withdrawn or superseded
            index = self._pick(candidates, task, now, with_free_slot)
            if index < 0:
                skipped.append((source, item))
                continue
            key = candidates[index][1]
            capacity = workers[key]
            del entries[task.task_id]
            placed.setdefault(key, []).append(task)
            if capacity.free == 1:
                with_free_slot -= 1
            capacity.outstanding += 1
            if index == 0:
                if capacity.room > 0:
                    heapq.heapreplace(candidates, (self._score(capacity), key))
                else:
                    heapq.heappop(candidates)
            else:  # a tagged task (or one needing a slot) took a worker from the middle of the heap
                if capacity.room > 0:
                    candidates[index] = (self._score(capacity), key)
                else:
                    candidates[index] = candidates[-1]
                    candidates.pop()
                heapq.heapify(candidates)
        for source, item in skipped:
            heapq.heappush(source, item)
        batch = self.config.max_assign_batch
        self.placed += sum(len(tasks) for tasks in placed.values())
        return [
            Placement(key, tasks[i:i + batch]) for key, tasks in placed.items() for i in range(0, len(tasks), batch)
        ]

    def take_backs(self, now: float) -> list[TakeBack]:
        """When nothing waits and a worker sits idle, take half the prefetch of the fullest holder back."""
        if self.entries:
            return []
        idle = [c for c in self.workers.values() if c.accepting and c.outstanding == 0]
        if not idle:
            return []
        holders = sorted(((c.outstanding - c.slots, key) for key, c in self.workers.items()
                          if c.outstanding - c.slots >= 2 and now - c.last_take_back >= TAKE_BACK_INTERVAL_S),
                         reverse=True)[:len(idle)]
        out = []
        for excess, key in holders:
            self.workers[key].last_take_back = now
            out.append(TakeBack(key, (excess + 1) // 2))
        self.take_back_requests += len(out)
        return out

    def free_slots(self) -> int:
        return sum(max(c.free, 0) for c in self.workers.values() if c.accepting)

    def _pick(self, candidates: list[tuple[float, PeerKey]], task: ReadyTask, now: float,
              with_free_slot: int) -> int:
        """Index of the best candidate for ``task``, or -1 if none may take it now.

        A task that is not short needs a free slot; a short one may also use prefetch room.
        A retry goes to a worker where the task has not failed yet, waiting up to
        ``retry_elsewhere_s`` for one to have room: a broken worker fails fast,
        stays free and would otherwise draw every retry to itself.  It goes back to a
        worker where it failed once that wait is over, or at once if no accepting worker
        able to run it is left outside ``avoid``.
        """
        need_slot = not task.short
        if need_slot and not with_free_slot:
            return -1
        workers = self.workers
        if not task.tags and not task.avoid and (not need_slot or workers[candidates[0][1]].free > 0):
            return 0
        best = fallback = -1
        for index, (score, key) in enumerate(candidates):
            capacity = workers[key]
            if need_slot and capacity.free <= 0:
                continue
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
