"""The journal on PostgreSQL, and leadership among the coordinators that share it.

With ``[journal] backend = "postgresql"`` several coordinators run against one database:
one leads, the others stand by (their ports answer ``NotLeader``, naming the leader).

Leadership is a lease row (``actorsched_leader``, one row) with an epoch taken from the
database.  A coordinator takes it over only when it has expired by the database's clock
(``UPDATE ... SET epoch = epoch + 1 ... WHERE expires_at < now()``), so the epoch, which
is also the coordinator epoch of the fencing tokens, only grows and is never reused.
The leader renews it every ``lease_s / 3`` (:class:`Lease`); when it cannot, it stops
serving once ``lease_s`` has passed since the last renewal it sent (measured on its own
clock from before the request went out, so it always stops before the database could
let anyone else lead).

Fencing: every write transaction first calls ``actorsched_fence(epoch)``, which takes a
share lock on the lease row and raises if the epoch no longer leads.  A takeover updates
that row, so it waits for a write in flight to commit, and a write that starts after a
takeover sees the new epoch and fails: a paused or cut-off old leader's late writes are
refused by the database itself, never interleaved with the new leader's.  A fenced
leader steps down (its process exits; run it under a supervisor, which starts it again
as a standby).

Writes keep the batch-native hot path: one group commit is one statement,
``actorsched_write(epoch, columns...)``: a function that fences, then inserts, updates
and deletes every row of the batch from arrays (one per column), in one transaction and
one round trip.  One round trip matters twice in Python: each wait for the database
lets go of the GIL, and taking it back behind the coordinator's busy threads costs up to
a switch interval (5 ms) each time; a pipelined BEGIN/fence/writes/COMMIT measured
17-19 ms per group commit under load for 2.5 ms of database work.  Every
statement is idempotent (inserts are upserts), so a group commit whose connection broke
before its outcome was known is simply sent again on a new connection, as long as the
lease still holds: the leader rides out a short database restart.

The rows, the result encoding and the folding of one group commit are those of the
SQLite journal (:mod:`actorsched.coordinator.journal`); only the SQL differs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

import psycopg
from psycopg import conninfo

from actorsched.coordinator.journal import (
    SCHEMA_VERSION,
    JournalError,
    JournalRow,
    ListedRow,
    ListingSql,
    RowProblem,
    fold_batches,
    listed_row,
    listing_filter,
    pack_result,
    stored_row,
)
from actorsched.protocol import packer

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actorsched_meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS actorsched_tasks (
    task_id text PRIMARY KEY,
    seq bigint NOT NULL,
    state text NOT NULL,
    attempt bigint NOT NULL,
    epoch bigint NOT NULL,
    deaths bigint NOT NULL,
    finished_at double precision,
    spec bytea NOT NULL,
    result bytea
);
CREATE INDEX IF NOT EXISTS actorsched_tasks_by_seq ON actorsched_tasks (seq);
CREATE INDEX IF NOT EXISTS actorsched_tasks_unfinished ON actorsched_tasks (seq) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS actorsched_leader (
    id integer PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    client_endpoint text NOT NULL,
    worker_endpoint text NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO actorsched_leader VALUES (1, 0, '', '', '', '-infinity') ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION actorsched_fence(claimed bigint) RETURNS void AS $$
BEGIN
    PERFORM 1 FROM actorsched_leader WHERE id = 1 AND epoch = claimed FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'actorsched fenced: epoch % no longer leads', claimed;
    END IF;
END
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION actorsched_write(claimed bigint,
    i_id text[], i_seq bigint[], i_state text[], i_attempt bigint[], i_epoch bigint[], i_deaths bigint[],
    i_finished float8[], i_spec bytea[], i_result bytea[],
    u_id text[], u_state text[], u_attempt bigint[], u_epoch bigint[], u_deaths bigint[], u_finished float8[],
    u_result bytea[], d_id text[]) RETURNS void AS $$
BEGIN
    PERFORM actorsched_fence(claimed);
    IF cardinality(i_id) > 0 THEN
        INSERT INTO actorsched_tasks (task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result)
        SELECT * FROM unnest(i_id, i_seq, i_state, i_attempt, i_epoch, i_deaths, i_finished, i_spec, i_result)
        ON CONFLICT (task_id) DO UPDATE SET seq = excluded.seq, state = excluded.state,
            attempt = excluded.attempt, epoch = excluded.epoch, deaths = excluded.deaths,
            finished_at = excluded.finished_at, spec = excluded.spec, result = excluded.result;
    END IF;
    IF cardinality(u_id) > 0 THEN
        UPDATE actorsched_tasks AS t SET state = u.state, attempt = u.attempt, epoch = u.epoch,
            deaths = u.deaths, finished_at = u.finished, result = u.result
        FROM unnest(u_id, u_state, u_attempt, u_epoch, u_deaths, u_finished, u_result)
            AS u(task_id, state, attempt, epoch, deaths, finished, result)
        WHERE t.task_id = u.task_id;
    END IF;
    IF cardinality(d_id) > 0 THEN
        DELETE FROM actorsched_tasks WHERE task_id = ANY(d_id);
    END IF;
END
$$ LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan;
CREATE OR REPLACE FUNCTION actorsched_purge(claimed bigint, before float8, keep text[], most integer)
        RETURNS TABLE(purged_state text, purged bigint) AS $$
BEGIN
    PERFORM actorsched_fence(claimed);
    RETURN QUERY WITH gone AS (
        DELETE FROM actorsched_tasks WHERE task_id IN (
            SELECT t.task_id FROM actorsched_tasks AS t
            WHERE t.finished_at IS NOT NULL AND t.finished_at <= before AND NOT (t.task_id = ANY(keep))
            LIMIT most)
        RETURNING actorsched_tasks.state AS gone_state)
    SELECT gone.gone_state, count(*) FROM gone GROUP BY gone.gone_state;
END
$$ LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan;
CREATE OR REPLACE FUNCTION actorsched_quarantine(claimed bigint, id text, finished float8, stored bytea)
        RETURNS void AS $$
BEGIN
    PERFORM actorsched_fence(claimed);
    UPDATE actorsched_tasks SET state = 'FAILED', finished_at = finished, result = stored WHERE task_id = id;
END
$$ LANGUAGE plpgsql;
"""
# force_custom_plan: a plan cached while the table was small (a sequential scan) would stay as it grows.
_WRITE = "SELECT actorsched_write(%s, " + ", ".join(["%s"] * 17) + ")"
_FENCED = "actorsched fenced"
_COLUMNS = "task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result"
_PG_LISTING = ListingSql("seq", "%s", "position(%s IN {column}) > 0", "left(task_id, %s) = %s")
_PURGE_CHUNK = 20_000
"""Rows one purge statement deletes at most: each is its own short transaction, so that a purge of millions
neither holds the lease row's share lock past a renewal nor keeps one transaction open for long."""
_REPLAY_PAGE = 5000  # rows per SELECT when replaying (keyset paging, no transaction held open)
_RECONNECT_EVERY_S = 0.2

# Bounds on how long a cut network can hold any call, unless the DSN sets its own: a leader
# must notice within its lease.  (libpq's TCP user timeout and keepalives; milliseconds/seconds.)
_NETWORK_BOUNDS = {"connect_timeout": "2", "keepalives": "1", "keepalives_idle": "1", "keepalives_interval": "1",
                   "keepalives_count": "2", "tcp_user_timeout": "2000"}


class Fenced(JournalError):
    """Another coordinator leads now: this one's writes are refused by the database."""


def bounded_dsn(dsn: str) -> str:
    """``dsn`` with network time bounds added (those it does not set itself), and checked: a
    malformed DSN is a :class:`JournalError` naming the problem, never the password."""
    try:
        given = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise JournalError(f"[journal] dsn is not a valid PostgreSQL connection string: {exc}") from None
    extra = {k: v for k, v in _NETWORK_BOUNDS.items() if k not in given}
    return conninfo.make_conninfo(dsn, **extra)


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages (host, port, database; never the password)."""
    parts = conninfo.conninfo_to_dict(dsn)
    return f"postgresql://{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def connect(dsn: str, autocommit: bool = True) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=autocommit)
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to the journal database {describe_dsn(dsn)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def prepare(dsn: str) -> None:
    """Create the tables and the fence function if missing (under a lock: coordinators may start together),
    and refuse a database of a newer schema."""
    try:
        with connect(dsn) as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(7346121)")  # any fixed number: one schema change at a time
            db.execute(_SCHEMA)
            row = db.execute("SELECT value FROM actorsched_meta WHERE key = 'schema'").fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise JournalError(f"journal database {describe_dsn(dsn)} has schema version {row[0]}, newer "
                                   f"than this coordinator's {SCHEMA_VERSION}; run a newer actorsched")
            db.execute("INSERT INTO actorsched_meta VALUES ('schema', %s) ON CONFLICT (key) DO NOTHING",
                       (SCHEMA_VERSION,))
    except psycopg.Error as exc:
        raise JournalError(f"cannot prepare the journal database {describe_dsn(dsn)}: {_first_line(exc)}") from None


class LeaderInfo(NamedTuple):
    epoch: int
    holder: str
    client_endpoint: str
    worker_endpoint: str
    expires_in_s: float  # by the database's clock; negative once expired


class Lease:
    """This coordinator's claim to lead, kept in the database's lease row.

    :meth:`try_take` takes an expired lease (or one this holder resigned); then
    :meth:`start_keeping` renews it on a thread of its own.  :meth:`holds` is what the
    coordinator's main loop checks: false once fenced, or once ``lease_s`` passed since
    the last renewal that was sent and succeeded.
    """

    def __init__(self, dsn: str, lease_s: float, holder: str, client_endpoint: str, worker_endpoint: str) -> None:
        self.dsn = dsn
        self.lease_s = lease_s
        self.holder = holder
        self.endpoints = (client_endpoint, worker_endpoint)
        self.epoch = 0
        self.fenced = False
        self.reason = ""
        self._valid_until = 0.0  # monotonic
        self._db: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()
            self._db = None
            db = connect(self.dsn)
            # Never wait on a lock for long (a write in flight holds the lease row's share lock for
            # milliseconds; a stuck one must not hold the standby's loop or the renewal).
            wait_ms = max(100, int(self.lease_s * 1000 / 3))
            db.execute(f"SET lock_timeout = {wait_ms}")
            db.execute(f"SET statement_timeout = {2 * wait_ms}")
            self._db = db
        return self._db

    def leader(self) -> LeaderInfo | None:
        """Who leads now (None if the database cannot be read)."""
        try:
            row = self._connection().execute(
                "SELECT epoch, holder, client_endpoint, worker_endpoint, "
                "extract(epoch FROM expires_at - now())::float8 FROM actorsched_leader WHERE id = 1").fetchone()
        except (psycopg.Error, JournalError) as exc:
            log.debug("cannot read the lease: %s", exc)
            return None
        if row is None:
            return None
        expires = row[4] if row[4] is not None else -1.0
        return LeaderInfo(int(row[0]), row[1], row[2], row[3], float(expires))

    def try_take(self) -> bool:
        """Take the lease if it has expired; True if this coordinator now leads (``epoch`` is its new epoch)."""
        sent = time.monotonic()
        try:
            row = self._connection().execute(
                "UPDATE actorsched_leader SET epoch = epoch + 1, holder = %s, client_endpoint = %s, "
                "worker_endpoint = %s, expires_at = now() + make_interval(secs => %s) "
                "WHERE id = 1 AND expires_at < now() RETURNING epoch",
                (self.holder, *self.endpoints, self.lease_s)).fetchone()
        except (psycopg.Error, JournalError) as exc:
            log.debug("cannot try the lease: %s", exc)
            return False
        if row is None:
            return False
        self.epoch = int(row[0])
        self._valid_until = sent + self.lease_s
        return True

    def renew(self) -> bool:
        """Extend the lease; False if another coordinator leads now (fenced).  Raises on database errors."""
        sent = time.monotonic()
        row = self._connection().execute(
            "UPDATE actorsched_leader SET expires_at = now() + make_interval(secs => %s) "
            "WHERE id = 1 AND epoch = %s RETURNING epoch", (self.lease_s, self.epoch)).fetchone()
        if row is None:
            return False
        self._valid_until = sent + self.lease_s
        return True

    def holds(self) -> bool:
        return not self.fenced and time.monotonic() < self._valid_until

    def start_keeping(self) -> None:
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        interval = self.lease_s / 3
        failures = 0
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    self.lose(f"fenced: epoch {self.epoch} no longer leads (another coordinator took over)")
                    return
                if failures:
                    log.warning("lease renewed again after %d failed attempt(s) epoch=%d", failures, self.epoch)
                failures = 0
            except (psycopg.Error, JournalError) as exc:
                failures += 1
                if self._db is not None:
                    self._db.close()
                left = self._valid_until - time.monotonic()
                log.warning("cannot renew the lease (%s); %.1f s of it left epoch=%d", _first_line(exc), left,
                            self.epoch)
                if left <= 0:
                    self.lose(f"lost the journal database for longer than the lease ({self.lease_s:g} s)")
                    return

    def lose(self, reason: str) -> None:
        """This coordinator no longer leads (fenced, or out of the database's reach): :meth:`holds` is false."""
        self.reason = reason
        self.fenced = True
        log.critical("leadership lost: %s", reason)

    def resign(self) -> None:
        """Give the lease up at a clean stop, so a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.epoch and not self.fenced:
            try:
                self._connection().execute("UPDATE actorsched_leader SET expires_at = '-infinity' "
                                           "WHERE id = 1 AND epoch = %s", (self.epoch,))
                log.info("lease given up epoch=%d", self.epoch)
            except (psycopg.Error, JournalError) as exc:
                log.warning("could not give the lease up (%s); a standby takes over when it expires", exc)

    def close(self) -> None:
        self._stop.set()
        if self._db is not None:
            self._db.close()
            self._db = None


class PgJournal:
    """The journal of the leading coordinator, in PostgreSQL (see the module's docstring).

    ``epoch`` is the lease's: every write is fenced on it.  ``holds_lease`` tells a writer
    whose connection broke whether it may still retry; ``on_fenced`` hears of a write the
    database refused because another coordinator leads.
    """

    def __init__(self, dsn: str, epoch: int, holds_lease: Callable[[], bool] = lambda: True,
                 on_fenced: Callable[[str], None] = lambda reason: None, lease_s: float = 3.0) -> None:
        self.dsn = dsn
        self.epoch = epoch
        self.holds_lease = holds_lease
        self.on_fenced = on_fenced
        self.lease_ms = lease_s * 1000
        self._orphan = 0  # the server pid of a connection given up mid-write, to end before writing again
        self._db: psycopg.Connection[Any] | None = None
        self._pack = packer()  # for the one thread that writes

    # ---------------------------------------------------------------- start-up reads

    def rows(self, unfinished_only: bool = False) -> Iterator[JournalRow | RowProblem]:
        """Every task (or every unfinished one), in submit order, for replay at start."""
        where = "AND finished_at IS NULL " if unfinished_only else ""
        after = -1
        while True:
            page = self._writer().execute(
                f"SELECT {_COLUMNS} FROM actorsched_tasks WHERE seq > %s {where}ORDER BY seq LIMIT %s",
                (after, _REPLAY_PAGE)).fetchall()
            for raw in page:
                yield stored_row(raw)
            if len(page) < _REPLAY_PAGE:
                return
            after = page[-1][1]

    def finished_counts(self) -> dict[str, int]:
        return {state: int(n) for state, n in self._writer().execute(
            "SELECT state, count(*) FROM actorsched_tasks WHERE finished_at IS NOT NULL GROUP BY state")}

    def max_seq(self) -> int:
        row = self._writer().execute("SELECT coalesce(max(seq), 0) FROM actorsched_tasks").fetchone()
        return int(row[0]) if row else 0

    def reader(self) -> PgJournalReader:
        return PgJournalReader(self.dsn)

    # ---------------------------------------------------------------- fenced writes

    def quarantine(self, task_id: str, reason: str, finished_at: float) -> None:
        stored = self._pack([None, ["Quarantined", reason, ""], []])
        self._retried(lambda db: db.execute("SELECT actorsched_quarantine(%s, %s, %s, %s)",
                                            (self.epoch, task_id, finished_at, stored)))

    def purge(self, finished_before: float, keep: list[str]) -> dict[str, int]:
        """Delete final tasks finished at or before ``finished_before`` (except ``keep``), in chunks of
        :data:`_PURGE_CHUNK`, each a fenced statement of its own; how many per state."""
        counts: dict[str, int] = {}
        for _ in range(1_000_000):  # bounded: each round deletes a chunk, and the table is finite
            found: list[tuple[str, int]] = []
            self._retried(lambda db, into=found: into.extend(db.execute(  # type: ignore[misc]
                "SELECT * FROM actorsched_purge(%s, %s, %s, %s)",
                (self.epoch, finished_before, keep, _PURGE_CHUNK)).fetchall()))
            for state, n in found:
                counts[state] = counts.get(state, 0) + int(n)
            if sum(int(n) for _, n in found) < _PURGE_CHUNK:
                break
        return counts

    def write_batches(self, batches: list[tuple[list[JournalRow], list[str]]]) -> None:
        """One group commit: one transaction, sent in pipeline mode, fenced on this coordinator's epoch."""
        if not any(rows or deleted for rows, deleted in batches):
            return
        pack = self._pack
        steps = [(_columns([(r.task_id, r.seq, r.state, r.attempt, r.epoch, r.deaths, r.finished_at, r.spec,
                             pack_result(r, pack)) for r in inserts], 9),
                  _columns([(r.task_id, r.state, r.attempt, r.epoch, r.deaths, r.finished_at, pack_result(r, pack))
                            for r in updates], 7),
                  deleted) for inserts, updates, deleted in fold_batches(batches)]

        params = [(self.epoch, *inserts, *updates, deleted) for inserts, updates, deleted in steps]
        if len(params) == 1:  # the usual group commit: one statement, its own transaction, one round trip
            self._retried(lambda db: db.execute(_WRITE, params[0]))
        else:  # deletions in between (a purge): the steps in order, in one transaction
            self._retried(lambda db: _in_transaction(db, [(_WRITE, p) for p in params]))

    def _retried(self, write: Callable[[psycopg.Connection[Any]], Any]) -> None:
        """Run ``write``, one fenced transaction; :class:`Fenced` if another coordinator leads.

        A broken connection is replaced and the whole transaction sent again, for as long as the
        lease holds.  Idempotent is not enough: the old connection's backend may still be running
        the first try (a stalled network), and committing it after later writes would undo them.
        So before sending again, that backend is ended and waited for (:meth:`_end_backend`).
        """
        while True:
            try:
                db = self._writer()
                if self._orphan:
                    self._end_backend(db, self._orphan)
                    self._orphan = 0
                write(db)
                return
            except psycopg.Error as exc:
                if _FENCED in str(exc):
                    reason = (f"fenced: epoch {self.epoch} no longer leads (another coordinator took over); "
                              f"the database refused this one's write")
                    self.on_fenced(reason)
                    raise Fenced(reason) from None
                if not self._broken(exc):
                    raise JournalError(f"journal database {describe_dsn(self.dsn)} refused a write: "
                                       f"{_first_line(exc)}") from None
                if not self.holds_lease():
                    raise JournalError(f"lost the journal database {describe_dsn(self.dsn)} for longer than "
                                       f"the lease: {_first_line(exc)}") from None
                log.warning("journal connection lost (%s); sending the write again on a new one",
                            _first_line(exc))
                if self._db is not None:
                    self._orphan = self._orphan or self._db.info.backend_pid
                self._drop_connection()
                time.sleep(_RECONNECT_EVERY_S)  # a pause between connection attempts, not synchronisation
            except JournalError:  # could not reconnect yet
                if not self.holds_lease():
                    raise
                time.sleep(_RECONNECT_EVERY_S)

    def _broken(self, exc: psycopg.Error) -> bool:
        return isinstance(exc, psycopg.OperationalError) or (self._db is not None and self._db.broken)

    def _writer(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            self._db = connect(self.dsn)
            # A session stuck inside a transaction (its coordinator paused or cut off mid-way) is ended by the
            # server after a lease, releasing the lease row's lock for a standby.
            self._db.execute(f"SET idle_in_transaction_session_timeout = {int(self.lease_ms)}")
        return self._db

    def _end_backend(self, db: psycopg.Connection[Any], pid: int) -> None:
        """End the server process of a connection given up, and wait until it is gone (while the lease holds)."""
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != (0,):
            if not self.holds_lease():
                raise JournalError(f"the journal database's session {pid} of a lost connection did not end "
                                   f"within the lease; not sending the write again")
            time.sleep(0.02)  # polling the server for the old session's end, bounded by the lease

    def _drop_connection(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None

    def close(self) -> None:
        self._drop_connection()


def _in_transaction(db: psycopg.Connection[Any], statements: list[tuple[str, Any]]) -> None:
    """The statements in one transaction, sent together up to the COMMIT (no round trip inside it)."""
    with db.pipeline(), db.transaction():
        for query, params in statements:
            db.execute(query, params)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column (what ``unnest`` takes)."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


class PgJournalReader:
    """Reads tasks that left the TaskQueue's memory, on the thread that made it (its own connection)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._db: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = connect(self.dsn)
            # Plan every read for the table as it is now: a plan prepared while the table was small
            # (a sequential scan) stays cached as it grows, and a read of 10 ids became a scan of all.
            self._db.prepare_threshold = None
        return self._db

    def fetch(self, task_ids: list[str], budget_bytes: int = 0) -> tuple[list[JournalRow | RowProblem], list[str]]:
        """As :meth:`actorsched.coordinator.journal.JournalReader.fetch`."""
        rows: list[JournalRow | RowProblem] = []
        spent = 0
        for start in range(0, len(task_ids), _CHUNK):
            chunk = task_ids[start:start + _CHUNK]
            for raw in self._read(f"SELECT {_COLUMNS} FROM actorsched_tasks WHERE task_id = ANY(%s)", (chunk,)):
                rows.append(stored_row(raw))
                spent += len(raw[7] or b"") + len(raw[8] or b"")
                if budget_bytes and spent > budget_bytes:
                    read = {row.task_id for row in rows}
                    return rows, [t for t in task_ids[start:] if t not in read]
        return rows, []

    def newest(self, state: str | None = None, spec_contains: str = "", result_contains: str = "",
               id_prefix: str = "", max_rows: int = 100_000) -> Generator[ListedRow | None, None, None]:
        """As :meth:`actorsched.coordinator.journal.JournalReader.newest`, by ``seq`` (submit order)."""
        top, low = self._read("SELECT coalesce(max(seq), 0), coalesce(min(seq), 0) FROM actorsched_tasks", ())[0]
        bottom = top - max_rows
        where, params = listing_filter(_PG_LISTING, bottom, state, spec_contains, result_contains, id_prefix)
        query = (f"SELECT task_id, seq, state, attempt, finished_at, spec, result FROM actorsched_tasks "
                 f"WHERE {where} ORDER BY seq DESC")
        db = self._connection()
        with db.transaction(), db.cursor(name="actorsched_listing") as cursor:  # rows as they are read
            cursor.itersize = 500
            cursor.execute(query, params)
            for raw in cursor:
                listed = listed_row(tuple(raw))
                if listed is not None:
                    yield listed
        if low <= bottom:
            yield None

    def _read(self, query: str, params: Any) -> list[tuple[Any, ...]]:
        """A read, tried once more on a new connection if the old one broke (reads are safe to repeat)."""
        for tries_left in (1, 0):
            try:
                return self._connection().execute(query, params).fetchall()
            except psycopg.OperationalError as exc:
                if not tries_left:
                    raise JournalError(f"cannot read the journal database {describe_dsn(self.dsn)}: "
                                       f"{_first_line(exc)}") from None
                if self._db is not None:
                    self._db.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


_CHUNK = 1000  # ids per SELECT ... = ANY(...)
