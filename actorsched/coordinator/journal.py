"""The coordinator's durable journal: one SQLite file in WAL mode.

What is written: every accepted task (its spec, once), and every change that must
survive a crash: QUEUED with a new attempt number (and the epoch, deaths and attempt
history), RETRYING, and final states with their value or error.  ASSIGNED and RUNNING
are not written: after a crash such a task waits ``restart_grace_s`` for its worker to
report it (then it is adopted), else it is placed again under the new epoch, whose
fencing token makes the old attempt's late result stale.

Group commit: the TaskQueue actor hands each inbox batch's changes, with the messages
to peers that must wait for them, to :class:`JournalWriter`; the writer applies
everything waiting in one transaction and one fsync (:meth:`Journal.write_batches`), in
order, and only then sends those messages.

Results: the ``result`` column holds msgpack ``[value, error, history, output]``, or
``[value, error, history]`` when the task wrote no output (what journals written before
output was captured hold, and still read): an older coordinator can read every row of a
task that printed nothing.  New rows are inserted in submit order (``seq``), so the table's
own order (``rowid``) is submit order and a listing reads the newest rows first without an
index of its own (:meth:`JournalReader.newest`), examining at most a bounded number.

Start: :meth:`Journal.open` checks the file (``PRAGMA quick_check``), refuses a newer
schema, creates a missing one, and reads the next coordinator epoch;
:meth:`Journal.commit_epoch` stores it once the coordinator is really up (every socket
bound), so a start that fails leaves the stored epoch as it was.  The first write
stores it too, should nobody have: nothing durable ever carries an unstored epoch.
"""

from __future__ import annotations

import fcntl
import logging
import operator
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgpack

from actorsched.core.stats import Histogram
from actorsched.errors import ActorschedError
from actorsched.protocol import Pack, packer
from actorsched.recordcodec import MAX_NESTING, check_depth

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class JournalError(ActorschedError):
    """The journal file is corrupt, truncated, of a newer schema, or cannot be written."""


class JournalRow(NamedTuple):
    """One task's row as written and read back (a tuple: two are built per task, so cheap matters)."""

    task_id: str
    seq: int
    state: str
    attempt: int
    epoch: int
    deaths: int
    finished_at: float | None  # wall-clock seconds, for retention; None while unfinished
    spec: bytes | None  # msgpack of the TaskSpec fields; None on updates of a known task
    value: Any
    error: list[Any] | None
    history: list[Any]
    output: str = ""  # what the last reported attempt wrote to stdout and stderr


class ListedRow(NamedTuple):
    """The light view of a stored task that a listing shows (no value, output, history or args)."""

    task_id: str
    seq: int
    state: str
    attempt: int
    name: str
    priority: int
    worker_id: str  # who ran its last attempt ("" if none did)
    error: list[Any] | None  # [type, message, traceback]
    updated_at: float  # wall clock: finished, else the end of its last attempt (0: unknown)


class JournalReading(Protocol):
    """A read-only view of the journal for one thread (see :class:`JournalReader`)."""

    def fetch(self, task_ids: list[str], budget_bytes: int = 0) -> tuple[list[JournalRow | RowProblem], list[str]]:
        ...

    def newest(self, state: str | None = None, spec_contains: str = "", result_contains: str = "",
               id_prefix: str = "", max_rows: int = 100_000) -> Generator[ListedRow | None, None, None]:
        ...

    def close(self) -> None:
        ...


class JournalBackend(Protocol):
    """What the TaskQueue and the writer use of a journal: :class:`Journal` (SQLite, the default)
    or :class:`actorsched.coordinator.journal_pg.PgJournal` (PostgreSQL, several coordinators)."""

    epoch: int

    def rows(self, unfinished_only: bool = False) -> Iterator[JournalRow | RowProblem]:
        ...

    def finished_counts(self) -> dict[str, int]:
        ...

    def max_seq(self) -> int:
        ...

    def quarantine(self, task_id: str, reason: str, finished_at: float) -> None:
        ...

    def reader(self) -> JournalReading:
        ...

    def purge(self, finished_before: float, keep: list[str]) -> dict[str, int]:
        ...

    def write_batches(self, batches: list[tuple[list[JournalRow], list[str]]]) -> None:
        ...

    def close(self) -> None:
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    deaths INTEGER NOT NULL,
    finished_at REAL,
    spec BLOB NOT NULL,
    result BLOB
);
"""


class Journal:
    def __init__(self, state_dir: str | Path, fsync: bool = True) -> None:
        self.path = Path(state_dir) / "journal.sqlite3"
        self.lock_path = Path(state_dir) / "journal.lock"
        self.epoch_path = Path(state_dir) / "epoch"  # the highest epoch ever stored, outside the database
        self.fsync = fsync
        self.epoch = 0
        self._epoch_stored = False
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pack = packer()  # for the one thread that writes

    def open(self) -> int:
        """Open or create the journal and return the new coordinator epoch (not stored yet).

        First takes the state folder's lock (held until :meth:`close`, or the process's
        end, however it ends): two coordinators on one journal would each replay it and
        run its tasks twice, so the second is refused, with the holder's pid.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            return self._open()
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise JournalError(
                f"journal {self.path} is in use by another coordinator (pid {holder}, from {self.lock_path}); "
                f"stop that one first, or give this one its own --state-dir / [journal] state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _open(self) -> int:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            if not fresh:
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(check)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path} has schema version {version}, newer than this coordinator's "
                    f"{SCHEMA_VERSION}; run a newer actorsched or point [journal] state_dir elsewhere"
                )
            if version == 0 and not fresh and db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name='tasks'").fetchone()[0] == 0:
                raise sqlite3.DatabaseError("file exists but holds no actorsched tables")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            row = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            # A journal restored from a backup holds an older epoch: the file beside it keeps the
            # highest one used, so fencing tokens of attempts still out there are never reused.
            self.epoch = max(row[0] if row else 0, self._epoch_in_file()) + 1
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"journal {self.path} is corrupt or truncated ({exc}); move it aside to start empty "
                f"(tasks in it will be lost) or restore it from a backup"
            ) from None
        self._db = db
        log.info("journal opened path=%s epoch=%d", self.path, self.epoch)
        return self.epoch

    def commit_epoch(self) -> None:
        """Store this coordinator's epoch: call once it is up, before it places any task.

        Until then a failed start (a busy port) leaves the stored epoch unchanged.
        """
        assert self._db is not None
        if not self._epoch_stored:
            self._remember_epoch()
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('epoch', ?)", (self.epoch,))
            self._epoch_stored = True

    def _epoch_in_file(self) -> int:
        try:
            return int(self.epoch_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise JournalError(f"{self.epoch_path} cannot be read ({exc}); it holds the highest coordinator "
                               f"epoch used here: fix or remove it (removing it is safe unless the journal "
                               f"was restored from an older backup)") from None

    def _remember_epoch(self) -> None:
        """Write the epoch file durably (a new file renamed over the old one, then the folder synced)."""
        temporary = self.epoch_path.with_suffix(".new")
        with open(temporary, "w") as out:
            out.write(f"{self.epoch}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.epoch_path)
        folder = os.open(self.epoch_path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def rows(self, unfinished_only: bool = False) -> Iterator[JournalRow | RowProblem]:
        """Every task (or every unfinished one), in submit order, for replay at start.

        A row whose stored data cannot be read back comes as a :class:`RowProblem`,
        so one bad row cannot stop a start (the caller quarantines it).
        """
        assert self._db is not None
        where = "WHERE finished_at IS NULL " if unfinished_only else ""
        for raw in self._db.execute(f"SELECT {_COLUMNS} FROM tasks {where}ORDER BY seq"):
            yield stored_row(raw)

    def finished_counts(self) -> dict[str, int]:
        """Final tasks in the journal, per state."""
        assert self._db is not None
        return dict(self._db.execute(
            "SELECT state, count(*) FROM tasks WHERE finished_at IS NOT NULL GROUP BY state").fetchall())

    def max_seq(self) -> int:
        assert self._db is not None
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM tasks").fetchone()[0])

    def quarantine(self, task_id: str, reason: str, finished_at: float) -> None:
        """Mark a task whose stored data cannot be replayed FAILED with ``reason``, at start
        (before the writer runs): a row no code path can trust must not crash every restart."""
        assert self._db is not None
        error = ["Quarantined", reason, ""]
        self._db.execute("UPDATE tasks SET state='FAILED', finished_at=?, result=? WHERE task_id=?",
                         (finished_at, self._pack([None, error, []]), task_id))

    def reader(self) -> JournalReader:
        """A read-only connection for the calling thread (WAL: it reads the last commit, never waits)."""
        return JournalReader(self.path)

    def purge(self, finished_before: float, keep: list[str]) -> dict[str, int]:
        """Delete final tasks that finished (wall clock) at or before ``finished_before``, except ``keep``;
        returns how many per state.  Call on the writing thread."""
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep_ids (task_id TEXT PRIMARY KEY)")
            db.execute("DELETE FROM keep_ids")
            db.executemany("INSERT OR IGNORE INTO keep_ids VALUES (?)", [(t,) for t in keep])
            counts: dict[str, int] = {}
            for (state,) in db.execute(
                    "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= ? "
                    "AND task_id NOT IN (SELECT task_id FROM keep_ids) RETURNING state", (finished_before,)):
                counts[state] = counts.get(state, 0) + 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return counts

    def write(self, rows: list[JournalRow], deleted: list[str] | None = None) -> None:
        """Apply ``rows`` (then delete ``deleted``) in one transaction; durable when this returns."""
        self.write_batches([(rows, deleted or [])])

    def write_batches(self, batches: list[tuple[list[JournalRow], list[str]]]) -> None:
        """Apply several batches in order in one transaction (one fsync): a group commit.

        See :func:`fold_batches` for what is folded and why order matters.
        """
        if not any(rows or deleted for rows, deleted in batches):
            return
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
            if not self._epoch_stored:  # nothing durable may carry an epoch a restart could reuse
                self._remember_epoch()
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('epoch', ?)", (self.epoch,))
            for inserts, updates, deleted in fold_batches(batches):
                self._apply(db, inserts, updates)
                if deleted:
                    db.executemany("DELETE FROM tasks WHERE task_id=?", [(t,) for t in deleted])
            db.execute("COMMIT")
            self._epoch_stored = True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, db: sqlite3.Connection, inserts: list[JournalRow], updates: list[JournalRow]) -> None:
        pack = self._pack
        if inserts:
            db.executemany("INSERT OR REPLACE INTO tasks(task_id, seq, state, attempt, epoch, deaths, "
                           "finished_at, spec, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(r.task_id, r.seq, r.state, r.attempt, r.epoch, r.deaths, r.finished_at, r.spec,
                             pack_result(r, pack)) for r in inserts])
        if updates:
            db.executemany("UPDATE tasks SET state=?, attempt=?, epoch=?, deaths=?, finished_at=?, "
                           "result=? WHERE task_id=?",
                           [(r.state, r.attempt, r.epoch, r.deaths, r.finished_at, pack_result(r, pack), r.task_id)
                            for r in updates])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._unlock()


_COLUMNS = "task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result"
_SEQ = operator.attrgetter("seq")


def fold_batches(batches: list[tuple[list[JournalRow], list[str]]]
                 ) -> Iterator[tuple[list[JournalRow], list[JournalRow], list[str]]]:
    """The steps of one group commit, for any backend: (rows to insert, rows to update, ids to delete
    after both), in order.

    Between deletions, the rows of one task are folded into one: a task submitted and
    finished within one group commit is written once, as its final row.  Inserts come in
    submit order (``seq``), so that a table's insertion order is submit order (listings
    read it newest first).  Order across deletions matters: a task purged in one batch
    and submitted again under the same id in the next must end up present.
    """
    inserts: dict[str, JournalRow] = {}
    updates: dict[str, JournalRow] = {}
    for rows, deleted in batches:
        for row in rows:
            if row.spec is not None:
                inserts[row.task_id] = row
                updates.pop(row.task_id, None)
            elif row.task_id in inserts:
                inserts[row.task_id] = row._replace(spec=inserts[row.task_id].spec)
            else:
                updates[row.task_id] = row
        if deleted:
            yield _in_seq_order(inserts), list(updates.values()), deleted
            inserts, updates = {}, {}
    if inserts or updates:
        yield _in_seq_order(inserts), list(updates.values()), []


def _in_seq_order(inserts: dict[str, JournalRow]) -> list[JournalRow]:
    return sorted(inserts.values(), key=_SEQ) if len(inserts) > 1 else list(inserts.values())


class RowProblem(NamedTuple):
    """A stored row that cannot be read back (its result blob does not decode, or nests too deep)."""

    task_id: str
    seq: int
    reason: str


def stored_row(raw: tuple[Any, ...]) -> JournalRow | RowProblem:
    task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result = raw
    try:
        value, error, history, output = _result_parts(unpack_stored(result)) if result else (None, None, [], "")
    except Exception as exc:  # whatever the bytes hold, one task's data must not stop the coordinator
        return RowProblem(task_id, seq, f"its stored result cannot be read ({type(exc).__name__}: {exc})")
    return JournalRow(task_id, seq, state, attempt, epoch, deaths, finished_at, spec, value, error, history, output)


def _result_parts(stored: Any) -> tuple[Any, Any, Any, str]:
    """``[value, error, history]`` (older rows, and tasks without output) or ``[value, error, history, output]``."""
    if type(stored) is not list or len(stored) not in (3, 4):
        raise ValueError(f"expected [value, error, history] or [value, error, history, output], "
                         f"got {type(stored).__name__} of {len(stored) if type(stored) is list else '?'} items")
    if len(stored) == 3:
        return stored[0], stored[1], stored[2], ""
    if type(stored[3]) is not str:
        raise ValueError(f"stored output must be a string, got {type(stored[3]).__name__}")
    return stored[0], stored[1], stored[2], stored[3]


class JournalReader:
    """Reads tasks that left the TaskQueue's memory, on the thread that made it."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def fetch(self, task_ids: list[str], budget_bytes: int = 0) -> tuple[list[JournalRow | RowProblem], list[str]]:
        """The rows of these tasks (those the journal has), and the ids left unread.

        With ``budget_bytes``, reading stops once the stored results and specs read add up
        to more than that (at least one row is read), so one request cannot pull the
        journal into memory; the ids not read are returned, for the next page.
        """
        rows: list[JournalRow | RowProblem] = []
        spent = 0
        for start in range(0, len(task_ids), _CHUNK):
            chunk = task_ids[start:start + _CHUNK]
            cursor = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_id IN ({','.join('?' * len(chunk))})", chunk)
            for raw in cursor:
                rows.append(stored_row(raw))
                spent += len(raw[7] or b"") + len(raw[8] or b"")
                if budget_bytes and spent > budget_bytes:
                    cursor.close()
                    read = {row.task_id for row in rows}
                    return rows, [t for t in task_ids[start:] if t not in read]
        return rows, []

    def newest(self, state: str | None = None, spec_contains: str = "", result_contains: str = "",
               id_prefix: str = "", max_rows: int = 100_000) -> Generator[ListedRow | None, None, None]:
        """Stored tasks, newest first, that match ``state`` and whose stored spec (result) holds the
        text ``spec_contains`` (``result_contains``) and whose id starts with ``id_prefix``.

        The text tests are prefilters for the caller's exact ones (a name is in the spec, a
        worker id in the result's history), run by SQLite so that rows that cannot match are
        never decoded here.  At most the newest ``max_rows`` rows are examined (by rowid,
        which is submit order); when older ones were left out the iterator ends with one
        ``None``.  Rows that cannot be read are skipped.
        """
        db = self._db
        top, low = db.execute("SELECT coalesce(max(rowid), 0), coalesce(min(rowid), 0) FROM tasks").fetchone()
        bottom = top - max_rows
        where, params = listing_filter(SQLITE_LISTING, bottom, state, spec_contains, result_contains, id_prefix)
        cursor = db.execute(f"SELECT task_id, seq, state, attempt, finished_at, spec, result FROM tasks "
                            f"WHERE {where} ORDER BY rowid DESC", params)
        try:
            for raw in cursor:
                listed = listed_row(raw)
                if listed is not None:
                    yield listed
        finally:
            cursor.close()
        if low <= bottom:
            yield None

    def close(self) -> None:
        self._db.close()


class ListingSql(NamedTuple):
    """How one SQL dialect writes a listing's filters (see :func:`listing_filter`)."""

    order: str  # the column in submit order
    param: str  # a placeholder
    contains: str  # "the blob {column} holds the bytes of a parameter"
    prefix: str  # "task_id starts with a parameter", given its length first


SQLITE_LISTING = ListingSql("rowid", "?", "instr({column}, ?) > 0", "substr(task_id, 1, ?) = ?")


def listing_filter(sql: ListingSql, bottom: int, state: str | None, spec_contains: str, result_contains: str,
                   id_prefix: str) -> tuple[str, list[Any]]:
    """The WHERE clause and parameters of a listing (see :meth:`JournalReader.newest`)."""
    where = [f"{sql.order} > {sql.param}"]
    params: list[Any] = [bottom]
    if state is not None:
        where.append(f"state = {sql.param}")
        params.append(state)
    for column, text in (("spec", spec_contains), ("result", result_contains)):
        if text:
            where.append(sql.contains.format(column=column))
            params.append(text.encode())
    if id_prefix:
        where.append(sql.prefix)
        params += [len(id_prefix), id_prefix]
    return " AND ".join(where), params


def listed_row(raw: tuple[Any, ...]) -> ListedRow | None:
    """The light view of a stored row, decoding only the fields it needs (None if unreadable)."""
    task_id, seq, state, attempt, finished_at, spec, result = raw
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(spec) + 1)
        unpacker.feed(spec)
        unpacker.read_array_header()
        unpacker.skip()  # task_id
        name = unpacker.unpack()
        unpacker.skip()  # args
        unpacker.skip()  # kwargs
        priority = unpacker.unpack()
        error, history = None, []
        if result:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(result) + 1)
            unpacker.feed(result)
            unpacker.read_array_header()
            unpacker.skip()  # the value, however large
            error = unpacker.unpack()
            history = unpacker.unpack()
        last = history[-1] if history else None
        worker_id = last[1] if last else ""
        updated = finished_at if finished_at is not None else (last[5] if last else 0.0)
        if type(name) is not str or type(priority) is not int or type(worker_id) is not str or not isinstance(
                updated, (int, float)) or (error is not None and (type(error) is not list or len(error) != 3 or not all(
                type(part) is str for part in error))):
            return None
    except Exception:  # a damaged row: the listing shows the others
        return None
    return ListedRow(task_id, seq, state, attempt, name, priority, worker_id, error, float(updated))


_CHUNK = 500  # ids per SELECT ... IN (...) (SQLite allows 32,766 parameters)


def unpack_stored(blob: bytes) -> Any:
    """A stored result blob: ``[value, error, history]`` or ``[value, error, history, output]``, refused
    (ProtocolError) if nested past what any peer may send, since code walking it must never recurse without bound."""
    stored = msgpack.unpackb(blob, raw=False)
    check_depth(stored, MAX_NESTING + 2, "a stored result")
    return stored


def pack_result(row: JournalRow, pack: Pack) -> bytes | None:
    if row.output:
        return pack([row.value, row.error, row.history, row.output])
    if row.value is None and row.error is None and not row.history:
        return None
    return pack([row.value, row.error, row.history])


_WriterItem = tuple[list[JournalRow], list[str], Callable[[], None]]


class JournalWriter:
    """Group commit on a thread of its own, so the TaskQueue never waits for a disk.

    The TaskQueue hands over each batch's rows together with what to do once they are
    durable (acknowledge clients, report results).  The writer takes everything waiting
    in its queue, writes it in one transaction with one fsync, then runs the follow-ups
    in order.  :meth:`idle` says when every follow-up handed over has run, so a reply
    that changes nothing may go at once without overtaking one still waiting for disk.
    A write that fails (disk full, file gone) is our emergency: ``on_failure`` is called
    and nothing after it is acknowledged.
    """

    def __init__(self, journal: JournalBackend, on_failure: Callable[[BaseException], None]) -> None:
        self.journal = journal
        self.on_failure = on_failure
        self._queue: queue.SimpleQueue[_WriterItem | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._failed = False
        # Each counter is written by one thread only (submitted: the caller's, done: the
        # writer's), so comparing them needs no lock.
        self._submitted = 0
        self._done = 0
        self.commit_time = Histogram()  # seconds per group commit (written by the writer's thread only)
        self._thread.start()

    def submit(self, rows: list[JournalRow], then: Callable[[], None], deleted: list[str] | None = None) -> None:
        """Queue ``rows`` (and ``deleted`` ids); ``then`` runs on the writer thread once they are durable.

        Call from one thread only (the TaskQueue's).
        """
        self._submitted += 1
        self._queue.put((rows, deleted or [], then))

    @property
    def submitted(self) -> int:
        """Items handed over so far (the number of the last one); read on the submitting thread."""
        return self._submitted

    @property
    def done(self) -> int:
        """Items whose follow-ups have run, so whose rows are durable (any thread may read it)."""
        return self._done

    def idle(self) -> bool:
        """True when every follow-up submitted so far has run (call from the submitting thread)."""
        return self._done == self._submitted

    def stop(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = []
            stopping = item is None
            if item is not None:
                batch.append(item)
            while not stopping:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            if batch and not self._failed:
                try:
                    started = time.perf_counter()
                    self.journal.write_batches([(rows, deleted) for rows, deleted, _ in batch])
                    self.commit_time.observe(time.perf_counter() - started)
                except Exception as exc:  # disk full, I/O error: nothing more may be acknowledged
                    self._failed = True
                    log.critical("journal write failed, no further acknowledgements: %s", exc)
                    self.on_failure(exc)
                    if stopping:
                        return
                    continue
                try:
                    for _, _, then in batch:
                        then()
                        self._done += 1
                except Exception as exc:  # our bug: stop loudly rather than never acknowledge again
                    self._failed = True
                    log.exception("a journal follow-up failed")
                    self.on_failure(exc)
            if stopping:
                return
