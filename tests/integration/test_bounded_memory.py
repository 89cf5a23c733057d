"""Issue 9 #2, #3, #7, #8 (bound), #18: what the coordinator keeps in memory, and what one peer can make it hold.

Finished tasks leave memory once their result is durable; everything a client asks of
them is read back from the journal.  Query replies are paged, each id answered once.
A client's unfinished tasks are bounded, so one client cannot fill the queue.  A
journal row that cannot be replayed fails its task instead of stopping every start.
Everything here runs against a real coordinator process with a real SQLite journal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgpack
import psutil
import pytest

from actorsched import ref
from actorsched.client import Client
from actorsched.errors import QueueFull
from actorsched.localcluster import LocalCluster, wait_until

WAIT_S = 30.0
NOOP = "actorsched.tasks:noop"
ECHO = "actorsched.tasks:echo"


def _forgotten(client: Client, count: int) -> Callable[[], bool]:
    """The queue's memory holds no finished task any more (``count`` were forgotten in all)."""

    def check() -> bool:
        queue = client.stats()["queue"]
        return queue["open"] == 0 and queue["in_memory"] == 0 and queue["forgotten"] >= count

    return check


def test_finished_tasks_leave_memory_and_are_read_back_from_the_journal(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text("[tasks]\nfinished_in_memory = 0\n")  # (else the most recent small results stay)
    cluster = make_cluster(workers=1, slots=2, coordinator_args=["--config", str(config)])
    client = ready(cluster)
    first = client.submit(ECHO, "kept in the journal", task_id="first")
    assert first.result(timeout=WAIT_S) == "kept in the journal"
    handles = client.submit_many([{"name": NOOP} for _ in range(300)])
    client.gather(handles, timeout=WAIT_S)
    wait_until(_forgotten(client, 301), WAIT_S, "finished tasks to leave memory")
    stats = client.stats()["queue"]
    assert stats["tasks"] == 301 and stats["states"]["SUCCEEDED"] == 301

    info = client.query("first")  # from the journal now
    assert (info.state, info.value, info.worker_id) == ("SUCCEEDED", "kept in the journal", "worker-1")
    assert info.history and info.history[-1].outcome == "succeeded"
    # A resubmit of the same task is still idempotent, and a different one under its id a conflict.
    submitted = client.stats()["queue"]["submitted"]
    assert client.submit(ECHO, "kept in the journal", task_id="first").result(timeout=WAIT_S) == \
        "kept in the journal"
    assert client.stats()["queue"]["submitted"] == submitted
    with pytest.raises(Exception, match="already exists with different content"):
        client.submit(ECHO, "something else", task_id="first")
    # A new task can still take a forgotten task's result as its argument.
    assert client.submit(ECHO, ref("first"), task_id="second").result(timeout=WAIT_S) == \
        "kept in the journal"


def test_coordinator_memory_does_not_grow_with_finished_tasks(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client]) -> None:
    """Before the fix every finished task stayed in memory (~2.5 KB each) for retention_s, a week."""
    cluster = make_cluster(workers=2, slots=2)
    client = ready(cluster)
    coordinator = psutil.Process(cluster.coordinator.pid)
    payload = "x" * 2000  # each task's argument and result: ~4 KB a task, 80 MB over the run if kept

    def run(count: int) -> None:
        for _ in range(count // 1000):
            client.gather(client.submit_many([{"name": ECHO, "args": [payload]} for _ in range(1000)]),
                          timeout=WAIT_S)

    run(4000)  # warm up: allocator arenas, SQLite's page cache, the journal's WAL
    wait_until(_forgotten(client, 4000), WAIT_S, "the warm-up tasks to leave memory")
    before = coordinator.memory_info().rss
    run(20_000)
    wait_until(_forgotten(client, 24_000), WAIT_S, "finished tasks to leave memory")
    grown = coordinator.memory_info().rss - before
    assert grown < 30 * 1024 * 1024, f"coordinator RSS grew by {grown / 2**20:.1f} MB over 20,000 finished tasks"


def test_a_query_answers_each_task_once_and_pages_large_results(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], tmp_path: Path) -> None:
    """Before: ids were not de-duplicated and the reply was built whole, so a 305-byte query naming one
    5 MB result 60 times cost ~900 MB.  Now the reply stops at its budget and names the ids left."""
    cluster = make_cluster(workers=1, slots=1)
    client = ready(cluster)
    big = client.submit_many([{"name": ECHO, "args": ["y" * 3_000_000]} for _ in range(8)])
    client.gather(big, timeout=WAIT_S)
    ids = [h.task_id for h in big]
    coordinator = psutil.Process(cluster.coordinator.pid)
    before = coordinator.memory_info().rss

    with cluster.client() as raw:
        from actorsched import protocol
        reply = raw._expect(raw._exchange([(1, protocol.encode(protocol.Query(1, [ids[0]] * 200)))], "query")[0],
                            protocol.QueryReply, "query")
        assert [i.task_id for i in reply.tasks] == [ids[0]] and reply.rest == []
        reply = raw._expect(raw._exchange([(2, protocol.encode(protocol.Query(2, ids)))], "query")[0],
                            protocol.QueryReply, "query")
        assert 1 <= len(reply.tasks) < len(ids) and reply.rest, "8 x 3 MB must not fit in one 8 MB page"
        assert {i.task_id for i in reply.tasks} | set(reply.rest) == set(ids)

    infos = client.query_many(ids + ids)  # the client pages through the rest by itself
    assert [i.state for i in infos] == ["SUCCEEDED"] * 16 and all(len(i.value) == 3_000_000 for i in infos)
    grown = coordinator.memory_info().rss - before
    assert grown < 150 * 1024 * 1024, f"coordinator RSS grew by {grown / 2**20:.0f} MB answering queries"


def test_one_client_cannot_fill_the_queue(make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client],
                                          tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text("[tasks]\nmax_pending_per_client = 50\n")
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(config)])
    flooder, other = connect(cluster), connect(cluster)
    flooder.submit_many([{"name": NOOP} for _ in range(50)])  # no worker: they stay unfinished
    with pytest.raises(QueueFull, match="max_pending_per_client=50"):
        flooder.submit(NOOP)
    handle = other.submit(NOOP)  # another client is still served
    assert other.query(handle.task_id).state == "QUEUED"
    flooder.cancel_many([f"never-{i}" for i in range(3)])  # unknown ids: nothing changes
    assert flooder.stats()["queue"]["open"] == 51


def test_a_row_that_cannot_be_replayed_fails_its_task_instead_of_every_start(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], tmp_path: Path) -> None:
    """Before: a task whose stored data crashed the coordinator crashed it again at every restart."""
    cluster = make_cluster(workers=0)
    client = ready(cluster)
    good = client.submit(NOOP, task_id="good")
    bad = client.submit(NOOP, task_id="bad")
    dependent = client.submit(NOOP, task_id="dependent", deps=["bad"])
    client.close()
    cluster.kill_coordinator()
    db = sqlite3.connect(Path(cluster.state_dir) / "journal.sqlite3")
    with db:
        db.execute("UPDATE tasks SET spec=? WHERE task_id='bad'", (msgpack.packb([["not", "a", "spec"]]),))
    db.close()
    cluster.start_coordinator()
    cluster.add_worker()
    client = ready(cluster)
    assert client.query(good.task_id).state in ("QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED")
    assert client.gather([client.handle("good")], timeout=WAIT_S) == [None]
    info = client.query(bad.task_id)
    assert info.state == "FAILED" and info.error is not None and info.error.type == "Quarantined"
    assert "quarantined at replay" in info.error.message
    client.gather([client.handle(dependent.task_id)], timeout=WAIT_S, return_exceptions=True)
    dep = client.query(dependent.task_id)
    assert dep.state == "FAILED" and dep.error is not None and dep.error.type == "DependencyFailed"
    assert "quarantined task=bad" in cluster.log_text()


def test_a_client_behind_another_clients_flood_is_served_next(
        make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client]) -> None:
    """Before: one client's 200,000 tasks delayed another client's single task past a minute.
    Within a priority level the line is now shared: the newcomer's task goes to the head."""
    cluster = make_cluster(workers=1, slots=1)
    flooder, other = connect(cluster), connect(cluster)
    cluster.wait_for_workers(flooder, 1, timeout_s=WAIT_S)
    flood = flooder.submit_many([{"name": "actorsched.tasks:sleep", "args": [0.06]} for _ in range(60)])
    wait_until(lambda: flooder.query(flood[0].task_id).state in ("RUNNING", "SUCCEEDED"), WAIT_S,
               "the flood to start")
    mine = other.submit("actorsched.tasks:sleep", 0.06)
    mine.result(timeout=WAIT_S)
    started_mine = other.query(mine.task_id).history[-1].started_at
    flooder.cancel_many([h.task_id for h in flood])
    before = [i for i in flooder.query_many([h.task_id for h in flood])
              if i.history and i.history[-1].started_at < started_mine]
    assert len(before) <= 3, f"{len(before)} of the flood's tasks started before the other client's one"
