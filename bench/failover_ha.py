"""Takeover time of a standby coordinator: kill -9 of the leader under load, repeatedly.

A real PostgreSQL server (``tests/pgserver.py``, fsync on), ``--coordinators`` real
coordinators on it (``[journal] backend = "postgresql"``, ``lease_s`` as given) and
``--workers`` real workers that know every coordinator.  One client, given every
coordinator's endpoint, keeps submitting batches of short tasks and remembers every
task id whose ``submit_many`` returned (acknowledged); it is never restarted, so it must
find each new leader by itself.

Each of ``--kills`` cycles: once the client has had a batch acknowledged since the last
takeover, after a seeded random 0..``--max-load-s`` s the leader gets SIGKILL.  Measured
from the kill:

- takeover: until a standby prints "coordinator ready" (it won the lease, replayed the
  journal and serves);
- client: until the client's next answered request, a submit or a query (it found the
  new leader);
- submits: until its next acknowledged submit (it keeps at most ``--max-open`` tasks
  unfinished, so this includes the workers moving to the new leader and the tasks they
  held being adopted or, past ``restart_grace_s``, run again).

The killed coordinator is started again (it stands by).  At the end every acknowledged
task must be SUCCEEDED with its own value, with one committed success, checked through
the client and in the database's table itself.  Prints p50 and max of both times, and
PASS only if nothing acknowledged was lost or committed twice.  Every loop is bounded by
a count and ``--time-limit``; every process is stopped by PID in ``finally``.

    .venv/bin/python bench/failover_ha.py --kills 20
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import FINAL, figure, median, percentile, wait_final  # noqa: E402
from hacluster import HaCluster, committed_rows, committed_successes  # noqa: E402
from pgserver import PgServer  # noqa: E402

from actorsched.errors import ActorschedError  # noqa: E402
from actorsched.localcluster import wait_until  # noqa: E402

SLEEP = "actorsched.tasks:sleep"


class Submitter(threading.Thread):
    """One client for the whole run; a submit that fails (a takeover under way) is not acknowledged."""

    def __init__(self, cluster: HaCluster, seed: int, max_open: int, deadline: float) -> None:
        super().__init__(name="submitter", daemon=True)
        self.client = cluster.client(timeout_s=20)
        self.rng = random.Random(seed)
        self.max_open = max_open
        self.deadline = deadline
        self.lock = threading.Lock()
        self.acked: dict[str, float] = {}
        self.ack_times: list[float] = []
        self.answer_times: list[float] = []
        self.failed_submits = 0
        self.stopping = threading.Event()
        self.open: set[str] = set()

    def run(self) -> None:
        batch = 0
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                if len(self.open) >= self.max_open:
                    infos = self.client.query_many(self.open)
                    with self.lock:
                        self.answer_times.append(time.monotonic())
                    self.open = {i.task_id for i in infos if i.state not in FINAL}
                    if len(self.open) >= self.max_open:
                        self.stopping.wait(0.02)
                        continue
                size = self.rng.randint(5, 25)
                specs = [{"task_id": f"ha-b{batch:05d}-{i:02d}", "name": SLEEP,
                          "args": [round(self.rng.uniform(0.005, 0.03), 4)]} for i in range(size)]
                batch += 1
                self.client.submit_many(specs)
                now = time.monotonic()
                with self.lock:
                    self.acked.update({s["task_id"]: s["args"][0] for s in specs})
                    self.ack_times.append(now)
                    self.answer_times.append(now)
                self.open.update(s["task_id"] for s in specs)
            except ActorschedError:
                self.failed_submits += 1

    def first_ack_after(self, since: float) -> float | None:
        with self.lock:
            return next((t for t in self.ack_times if t > since), None)

    def first_answer_after(self, since: float) -> float | None:
        with self.lock:
            return next((t for t in self.answer_times if t > since), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--coordinators", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--lease-s", type=float, default=3.0)
    parser.add_argument("--max-open", type=int, default=40)
    parser.add_argument("--max-load-s", type=float, default=2.0)
    parser.add_argument("--settle-s", type=float, default=120.0)
    parser.add_argument("--time-limit", type=float, default=900.0)
    args = parser.parse_args()
    reason = PgServer.available()
    if reason:
        sys.exit(f"failover_ha: PostgreSQL unavailable: {reason}")
    deadline = time.monotonic() + args.time_limit
    rng = random.Random(args.seed)
    takeovers: list[float] = []
    answered: list[float] = []
    resumed: list[float] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="actorsched-failover-ha-") as tmp, PgServer(durable=True) as pg:
        dsn = pg.create_database("failover_ha")
        cluster = HaCluster(dsn, args.coordinators, args.lease_s, log_dir=tmp)
        try:
            cluster.start()
            for i in range(args.workers):
                cluster.add_worker(f"w{i + 1}", args.slots)
            with cluster.client() as client:
                wait_until(lambda: len(client.workers()) >= args.workers, 60, "the workers to register")
            print(f"failover_ha: {args.kills} kill -9s of the leader; {args.coordinators} coordinators, "
                  f"lease {args.lease_s:g} s, {args.workers} workers x {args.slots} slots, PostgreSQL fsync on",
                  flush=True)
            submitter = Submitter(cluster, rng.randrange(2**32), args.max_open, deadline)
            submitter.start()
            last = time.monotonic()
            for cycle in range(args.kills):
                if time.monotonic() > deadline:
                    print(f"time limit reached after {cycle} kills", flush=True)
                    ok = False
                    break
                wait_until(lambda since=last: submitter.first_ack_after(since) is not None, 60,  # type: ignore[misc]
                           "a submit acknowledged")
                time.sleep(rng.uniform(0.0, args.max_load_s))  # load before the kill (a seeded pause, not a wait)
                leader = cluster.leader()
                killed_at = time.monotonic()
                leader.kill()
                _, ready_at = cluster.wait_for_leader(killed_at, 60)
                takeovers.append(ready_at - killed_at)
                wait_until(lambda since=killed_at: submitter.first_ack_after(since) is not None, 60,  # type: ignore[misc]
                           "the client to resume")
                acked_at = submitter.first_ack_after(killed_at)
                answered_at = submitter.first_answer_after(killed_at)
                assert acked_at is not None and answered_at is not None
                resumed.append(acked_at - killed_at)
                answered.append(answered_at - killed_at)
                last = acked_at
                leader.start()  # back as a standby
                wait_until(lambda back=leader, since=killed_at: back.standing_by_since(since), 60,  # type: ignore[misc]
                           "the killed coordinator to stand by")
                print(f"  kill {cycle + 1:>3}: takeover {takeovers[-1]:.2f} s, client answered {answered[-1]:.2f} s, "
                      f"submits resumed {resumed[-1]:.2f} s, "
                      f"{len(submitter.acked):,} acknowledged", flush=True)
            submitter.stopping.set()
            submitter.join(60)
            submitter.client.close()
            ids = list(submitter.acked)
            with cluster.client() as client:
                infos = wait_final(client, ids, args.settle_s)
        finally:
            cluster.stop()
        journal = committed_rows(dsn)
    acked = submitter.acked
    lost = [i.task_id for i in infos if i.state == "NOT_FOUND"] + [t for t in ids if t not in journal]
    not_succeeded = [(i.task_id, i.state) for i in infos if i.state not in ("SUCCEEDED", "NOT_FOUND")]
    twice = [t for t in ids if t in journal and committed_successes(journal[t][1]) > 1]
    wrong = [i.task_id for i in infos if i.state == "SUCCEEDED" and i.value != acked[i.task_id]]
    outcomes = collections.Counter(h.outcome for i in infos for h in i.history)
    print(f"\nkills: {len(takeovers)}; acknowledged tasks: {len(ids):,}; submits that failed during a takeover: "
          f"{submitter.failed_submits}")
    if takeovers:
        figure("takeover p50", median(takeovers), "s",
               f"max {max(takeovers):.2f} s, p90 {percentile(takeovers, 90):.2f} s")
        figure("client answered p50", median(answered), "s", f"max {max(answered):.2f} s")
        figure("submits resumed p50", median(resumed), "s", f"max {max(resumed):.2f} s")
    print(f"lost: {len(lost)} {lost[:5]}; not SUCCEEDED: {len(not_succeeded)} {not_succeeded[:5]}; "
          f"committed twice: {len(twice)} {twice[:5]}; wrong values: {len(wrong)} {wrong[:5]}")
    print(f"attempts by outcome: {dict(outcomes)}")
    ok &= len(takeovers) == args.kills and not lost and not not_succeeded and not twice and not wrong and len(ids) > 0
    print(f"\nfailover_ha: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
