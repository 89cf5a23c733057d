"""The PostgreSQL journal and its lease against a real PostgreSQL server (tests/pgserver.py).

What is checked here is the database's side of leadership: an expired lease is taken under
a higher epoch, a live one is not, and a write under an epoch that no longer leads is
refused by the database even though nothing else told the old leader.  The coordinator
processes around it are exercised in tests/chaos/test_ha.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from actorsched.coordinator.journal import JournalRow, RowProblem
from actorsched.coordinator.journal_pg import Fenced, Lease, PgJournal, bounded_dsn, prepare
from actorsched.localcluster import wait_until
from actorsched.protocol import TaskSpec, pack_record


def spec(task_id: str, name: str = "actorsched.tasks:add") -> bytes:
    return pack_record(TaskSpec(task_id, name, [1, 2]))


def row(task_id: str, seq: int, state: str = "QUEUED", value: object = None, finished: float | None = None,
        with_spec: bool = True, epoch: int = 1) -> JournalRow:
    return JournalRow(task_id, seq, state, 1, epoch, 0, finished, spec(task_id) if with_spec else None, value, None,
                      [], "")


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    bounded = bounded_dsn(pg_dsn)
    prepare(bounded)
    return bounded


@pytest.fixture
def leases(dsn: str) -> Iterator[list[Lease]]:
    made: list[Lease] = []
    yield made
    for lease in made:
        lease.close()


def make_lease(dsn: str, leases: list[Lease], name: str, lease_s: float = 30.0) -> Lease:
    lease = Lease(dsn, lease_s, name, f"tcp://127.0.0.1:1{len(leases)}00", f"tcp://127.0.0.1:1{len(leases)}01")
    leases.append(lease)
    return lease


def test_rows_written_in_one_group_commit_read_back_folded_and_in_submit_order(dsn: str) -> None:
    journal = PgJournal(dsn, epoch=0)
    try:
        # a task submitted and finished in one group commit is one row, its final one
        journal.write_batches([([row("b", 2), row("a", 1)], []),
                               ([row("a", 1, "SUCCEEDED", value={"x": 1}, finished=10.0, with_spec=False)], [])])
        journal.write_batches([([row("c", 3)], [])])
        rows = list(journal.rows())
        assert [r.task_id for r in rows] == ["a", "b", "c"]
        first = rows[0]
        assert isinstance(first, JournalRow) and first.state == "SUCCEEDED" and first.value == {"x": 1}
        assert [r.task_id for r in journal.rows(unfinished_only=True)] == ["b", "c"]
        assert journal.finished_counts() == {"SUCCEEDED": 1}
        assert journal.max_seq() == 3
        reader = journal.reader()
        try:
            fetched, unread = reader.fetch(["c", "a", "missing"])
            assert sorted(r.task_id for r in fetched) == ["a", "c"] and unread == []
            listed = [r for r in reader.newest() if r is not None]
            assert [r.task_id for r in listed] == ["c", "b", "a"]
            assert [r.task_id for r in reader.newest(state="SUCCEEDED") if r is not None] == ["a"]
            assert [r.task_id for r in reader.newest(id_prefix="b") if r is not None] == ["b"]
        finally:
            reader.close()
        assert journal.purge(finished_before=20.0, keep=[]) == {"SUCCEEDED": 1}
        assert [r.task_id for r in journal.rows()] == ["b", "c"]
    finally:
        journal.close()


def test_a_damaged_result_is_a_row_problem_not_a_crash(dsn: str) -> None:
    journal = PgJournal(dsn, epoch=0)
    try:
        journal.write_batches([([row("bad", 1)], [])])
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("UPDATE actorsched_tasks SET result = %s WHERE task_id = 'bad'", (b"\xc1\xc1",))
        (problem,) = journal.rows()
        assert isinstance(problem, RowProblem) and "cannot be read" in problem.reason
        journal.quarantine("bad", "damaged", 5.0)
        (fixed,) = journal.rows()
        assert isinstance(fixed, JournalRow) and fixed.state == "FAILED" and fixed.error is not None
        assert fixed.error[0] == "Quarantined"
    finally:
        journal.close()


def test_a_live_lease_is_not_taken_and_an_expired_one_is_taken_under_a_higher_epoch(
        dsn: str, leases: list[Lease]) -> None:
    first = make_lease(dsn, leases, "first", lease_s=1.0)
    second = make_lease(dsn, leases, "second", lease_s=1.0)
    assert first.try_take() and first.epoch == 1 and first.holds()
    assert not second.try_take()
    info = second.leader()
    assert info is not None and info.holder == "first" and info.epoch == 1 and info.expires_in_s > 0
    assert info.client_endpoint == "tcp://127.0.0.1:1000"
    # the first stops renewing (a pause, a crash): once the database's clock passes its lease, it is taken
    wait_until(second.try_take, 10, "the expired lease to be taken", 0.05)
    assert second.epoch == 2
    assert not first.renew(), "the old leader's renewal must fail: it is fenced"
    wait_until(lambda: not first.holds(), 5, "the old leader to know it lost", 0.05)


def test_a_write_under_an_epoch_that_no_longer_leads_is_refused_by_the_database(
        dsn: str, leases: list[Lease]) -> None:
    old = make_lease(dsn, leases, "old", lease_s=0.5)
    assert old.try_take()
    old_journal = PgJournal(dsn, old.epoch)
    try:
        old_journal.write_batches([([row("before", 1, epoch=old.epoch)], [])])
        new = make_lease(dsn, leases, "new", lease_s=30.0)
        wait_until(new.try_take, 10, "the expired lease to be taken", 0.05)
        # the old leader was paused: it wakes and writes as if it still led
        with pytest.raises(Fenced, match="no longer leads"):
            old_journal.write_batches([([row("late", 2, epoch=old.epoch)], [])])
        with pytest.raises(Fenced):
            old_journal.purge(finished_before=1e12, keep=[])
        new_journal = PgJournal(dsn, new.epoch)
        try:
            assert [r.task_id for r in new_journal.rows()] == ["before"]
            new_journal.write_batches([([row("after", 2, epoch=new.epoch)], [])])
            assert [r.task_id for r in new_journal.rows()] == ["before", "after"]
        finally:
            new_journal.close()
    finally:
        old_journal.close()


def test_a_resigned_lease_is_taken_at_once(dsn: str, leases: list[Lease]) -> None:
    first = make_lease(dsn, leases, "first", lease_s=60.0)
    second = make_lease(dsn, leases, "second", lease_s=60.0)
    assert first.try_take()
    assert not second.try_take()
    first.resign()
    assert second.try_take() and second.epoch == 2


def test_a_write_whose_connection_was_cut_is_sent_again_on_a_new_one(dsn: str, leases: list[Lease]) -> None:
    lease = make_lease(dsn, leases, "leader", lease_s=30.0)
    assert lease.try_take()
    journal = PgJournal(dsn, lease.epoch, lease.holds)
    try:
        journal.write_batches([([row("one", 1, epoch=lease.epoch)], [])])
        with psycopg.connect(dsn, autocommit=True) as admin:  # what a database restart does to a session
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
        assert killed is not None and killed[0] >= 1
        started = time.monotonic()
        journal.write_batches([([row("two", 2, epoch=lease.epoch)], [])])
        assert time.monotonic() - started < 10
        assert [r.task_id for r in journal.rows()] == ["one", "two"]
    finally:
        journal.close()


def test_a_purge_deletes_in_chunks_each_fenced_and_keeps_what_it_must(
        dsn: str, leases: list[Lease], monkeypatch: pytest.MonkeyPatch) -> None:
    from actorsched.coordinator import journal_pg

    monkeypatch.setattr(journal_pg, "_PURGE_CHUNK", 2)  # 5 old rows: three statements of at most 2
    lease = make_lease(dsn, leases, "leader")
    assert lease.try_take()
    journal = PgJournal(dsn, lease.epoch, lease.holds)
    try:
        journal.write_batches([([row(f"old-{i}", i, "SUCCEEDED", value=i, finished=10.0) for i in range(1, 6)]
                                + [row("kept", 6, "FAILED", finished=10.0), row("new", 7, "SUCCEEDED", finished=99.0),
                                   row("open", 8)], [])])
        assert journal.purge(finished_before=50.0, keep=["kept"]) == {"SUCCEEDED": 5}
        assert [r.task_id for r in journal.rows()] == ["kept", "new", "open"]
        new = make_lease(dsn, leases, "new")
        lease.resign()
        assert new.try_take()
        with pytest.raises(Fenced):
            journal.purge(finished_before=1e12, keep=[])
        assert len(list(journal.rows())) == 3
    finally:
        journal.close()
