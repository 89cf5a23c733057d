"""Chaos: seeded random kill -9s of the coordinator under a submit and result load; nothing acknowledged is lost.

A real coordinator (journal on, fsync on) and ``--workers`` real workers are started with
:class:`~actorsched.localcluster.LocalCluster`.  Each of ``--kills`` cycles:

1. a submitter thread with its own client submits seeded batches of 5..25 short
   ``actorsched.tasks:sleep`` tasks (each returns its own argument), keeping at most
   ``--max-open`` of them unfinished, and remembers every task id whose ``submit_many``
   returned (acknowledged: durable, by the coordinator's contract) and the batch under
   way; its ``query_many`` calls and the workers' results are the result load;
2. once a batch was acknowledged in this cycle, after a seeded random 0..``--max-load-s``
   seconds, the coordinator gets SIGKILL (whatever it was doing);
3. the submitter's client is closed (its pending request fails at once), and the
   coordinator is restarted on the same ports and journal; the workers are not
   restarted: they find it again on their own.

Then every acknowledged task must end SUCCEEDED with its own value, with at most one
committed success.  Checked twice: through the client (``query_many``) and in the
journal itself, after a clean stop (``state_dir/journal.sqlite3``, table ``tasks``: its
state, attempt and result blob ``[value, error, history]``).  A batch under way at a kill
was not acknowledged: it may be in the journal, but only whole.

Printed: a line per kill, then kills, acknowledged tasks, lost ones (acknowledged but
missing from the journal or not SUCCEEDED), tasks with more than one committed success,
wrong values, re-runs (tasks that needed more than one attempt, and attempts by outcome),
unacknowledged batches found whole / absent / split, and restart times.  Exit status 0
only if nothing was lost and no task committed twice.

Every loop is bounded by a count and by ``--time-limit``; every process started is
stopped by PID (LocalCluster.stop) in ``finally``.

    .venv/bin/python bench/chaos_coordinator.py --kills 5
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
from _common import FINAL, query_all, wait_final  # noqa: E402

from actorsched.client import Client  # noqa: E402
from actorsched.errors import ActorschedError  # noqa: E402
from actorsched.localcluster import LocalCluster  # noqa: E402

SLEEP = "actorsched.tasks:sleep"


class Submitter(threading.Thread):
    """Submits seeded batches until its client fails; remembers what was acknowledged."""

    def __init__(self, endpoint: str, prefix: str, seed: int, max_open: int, deadline: float) -> None:
        super().__init__(name=f"submitter-{prefix}", daemon=True)
        self.client = Client(endpoint, timeout_s=30)
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.max_open = max_open
        self.deadline = deadline
        self.lock = threading.Lock()
        self.acked: dict[str, float] = {}
        self.in_flight: dict[str, float] = {}
        self.open: set[str] = set()
        self.queries = 0
        self.error: BaseException | None = None
        self.first_ack = threading.Event()

    def run(self) -> None:
        batch = 0
        try:
            while time.monotonic() < self.deadline:
                while len(self.open) >= self.max_open and time.monotonic() < self.deadline:
                    infos = self.client.query_many(self.open)
                    self.queries += 1
                    self.open = {i.task_id for i in infos if i.state not in FINAL}
                    if len(self.open) >= self.max_open:
                        time.sleep(0.02)
                size = self.rng.randint(5, 25)
                specs = [{"task_id": f"{self.prefix}-b{batch:04d}-{i:02d}", "name": SLEEP,
                          "args": [round(self.rng.uniform(0.005, 0.03), 4)]} for i in range(size)]
                self.in_flight = {s["task_id"]: s["args"][0] for s in specs}
                self.client.submit_many(specs)
                with self.lock:
                    self.acked.update(self.in_flight)
                self.open.update(self.in_flight)
                self.in_flight = {}
                self.first_ack.set()
                batch += 1
        except Exception as exc:  # ActorschedError once the coordinator dies or the client is closed
            self.error = exc

    def acked_now(self) -> dict[str, float]:
        with self.lock:
            return dict(self.acked)


def journal_rows(state_dir: str) -> dict[str, tuple[str, int, list[Any], Any]]:
    """task_id -> (state, attempt, history, value) straight from the journal file (read-only)."""
    path = Path(state_dir) / "journal.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = {}
        for task_id, state, attempt, result in db.execute("SELECT task_id, state, attempt, result FROM tasks"):
            value, _error, history = msgpack.unpackb(result, raw=False) if result else (None, None, [])
            rows[task_id] = (state, attempt, history, value)
        return rows
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--max-open", type=int, default=40, help="unfinished acknowledged tasks at most")
    parser.add_argument("--max-load-s", type=float, default=2.0, help="a kill comes 0..this after the first ack")
    parser.add_argument("--settle-s", type=float, default=180.0, help="wait at most this for every task at the end")
    parser.add_argument("--time-limit", type=float, default=900.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.time_limit
    rng = random.Random(args.seed)
    acked: dict[str, float] = {}
    in_flights: list[dict[str, float]] = []
    restarts: list[float] = []
    kills = 0
    ok = True
    with tempfile.TemporaryDirectory(prefix="actorsched-chaos-") as tmp:
        state_dir = os.path.join(tmp, "state")
        with LocalCluster(workers=args.workers, slots=args.slots, state_dir=state_dir, log_dir=tmp) as cluster:
            with cluster.client(timeout_s=30) as client:
                worker_ids = {w.worker_id: w.pid for w in cluster.wait_for_workers(client, args.workers, 60)}
            print(f"chaos: {args.kills} kill -9s of the coordinator, seed {args.seed}; workers {sorted(worker_ids)}; "
                  f"journal {state_dir}/journal.sqlite3", flush=True)
            started = time.monotonic()
            for cycle in range(args.kills):
                if time.monotonic() > deadline:
                    print(f"time limit reached after {kills} kills", flush=True)
                    ok = False
                    break
                submitter = Submitter(cluster.client_endpoint, f"k{cycle:03d}", rng.randrange(2**32), args.max_open,
                                      deadline)
                submitter.start()
                try:
                    if not submitter.first_ack.wait(max(0.0, min(60.0, deadline - time.monotonic()))):
                        print(f"  cycle {cycle}: no batch acknowledged within 60 s ({submitter.error!r})", flush=True)
                        ok = False
                    load_s = rng.uniform(0.0, args.max_load_s)
                    time.sleep(load_s)
                    cluster.kill_coordinator(signal.SIGKILL)
                    kills += 1
                finally:
                    submitter.client.close()  # a request under way fails at once instead of timing out
                    submitter.join(30)
                mine = submitter.acked_now()
                acked.update(mine)
                if submitter.in_flight:
                    in_flights.append(dict(submitter.in_flight))
                t0 = time.monotonic()
                cluster.start_coordinator(timeout_s=60)
                restarts.append(time.monotonic() - t0)
                if cycle < 5 or (cycle + 1) % 10 == 0:
                    print(f"  kill {cycle + 1:>3}: after {load_s:4.2f} s of load; {len(mine):>4} acked this cycle, "
                          f"{len(acked):>6} in all; restart {restarts[-1]:.2f} s; {time.monotonic() - started:.0f} s",
                          flush=True)

            with cluster.client(timeout_s=30) as client:
                cluster.wait_for_workers(client, args.workers, timeout_s=60)
                ids = list(acked)
                infos = wait_final(client, ids, min(deadline - time.monotonic(), 0.0) + args.settle_s)
                flights = [query_all(client, list(f)) for f in in_flights]
                workers_after = {w.worker_id: w.pid for w in client.workers()}
            cluster.kill_coordinator(signal.SIGTERM)  # a clean stop: the journal file is complete
            journal = journal_rows(state_dir)

        states = collections.Counter(i.state for i in infos)
        lost_client = [i.task_id for i in infos if i.state == "NOT_FOUND"]
        not_succeeded = [(i.task_id, i.state) for i in infos if i.state not in ("SUCCEEDED", "NOT_FOUND")]
        wrong = [(i.task_id, i.value, acked[i.task_id]) for i in infos
                 if i.state == "SUCCEEDED" and i.value != acked[i.task_id]]
        twice_client = [i.task_id for i in infos if sum(h.outcome == "succeeded" for h in i.history) > 1]
        missing_journal = [t for t in ids if t not in journal]
        not_succeeded_journal = [(t, journal[t][0]) for t in ids if t in journal and journal[t][0] != "SUCCEEDED"]
        twice_journal = [t for t in ids if t in journal
                         and sum(1 for h in journal[t][2] if len(h) > 2 and h[2] == "succeeded") > 1]
        wrong_journal = [t for t in ids if t in journal and journal[t][0] == "SUCCEEDED" and journal[t][3] != acked[t]]
        reruns = sum(1 for i in infos if i.attempt > 1)
        outcomes = collections.Counter(h.outcome for i in infos for h in i.history)
        whole = absent = split = 0
        for flight in flights:
            found = {f.state != "NOT_FOUND" for f in flight}
            if found == {True}:
                whole += 1
            elif found == {False}:
                absent += 1
            else:
                split += 1

        print(f"\nkills: {kills} (seed {args.seed}) in {time.monotonic() - started:.0f} s; coordinator restart "
              f"median {sorted(restarts)[len(restarts) // 2] if restarts else float('nan'):.2f} s, "
              f"max {max(restarts, default=float('nan')):.2f} s")
        print(f"acknowledged tasks: {len(ids):,}; by state now: {dict(states)}")
        print(f"lost (acknowledged, then unknown to the coordinator): {len(lost_client)} {lost_client[:5]}")
        print(f"lost (acknowledged, missing from the journal file): {len(missing_journal)} {missing_journal[:5]}")
        print(f"acknowledged but not SUCCEEDED: client {len(not_succeeded)} {not_succeeded[:5]}, "
              f"journal {len(not_succeeded_journal)} {not_succeeded_journal[:5]}")
        print(f"more than one committed success: client {len(twice_client)} {twice_client[:5]}, "
              f"journal {len(twice_journal)} {twice_journal[:5]}")
        print(f"wrong values: client {len(wrong)} {wrong[:3]}, journal {len(wrong_journal)} {wrong_journal[:3]}")
        print(f"re-runs: {reruns} task(s) needed more than one attempt; attempts by outcome: {dict(outcomes)}")
        print(f"unacknowledged batches under way at a kill: {len(flights)}: journaled whole {whole}, "
              f"absent {absent}, split {split}")
        print(f"workers kept their processes across every restart: {workers_after == worker_ids} "
              f"({workers_after})")
        ok &= kills == args.kills and not lost_client and not missing_journal and not not_succeeded
        ok &= not not_succeeded_journal and not twice_client and not twice_journal and not wrong
        ok &= not wrong_journal and split == 0 and len(ids) > 0
    print(f"\nchaos_coordinator: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    try:
        main()
    except ActorschedError as exc:
        sys.exit(f"chaos_coordinator: {exc}")
