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

Start: :meth:`Journal.open` checks the file (``PRAGMA quick_check``), refuses a newer
schema, creates a missing one, and increments the coordinator epoch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from actorsched.errors import ActorschedError
from actorsched.protocol import Pack, packer

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
        self.fsync = fsync
        self.epoch = 0
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pack = packer()  # for the one thread that writes

    def open(self) -> int:
        """Open or create the journal and return the new coordinator epoch.

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
            self.epoch = (row[0] if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('epoch', ?)", (self.epoch,))
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"journal {self.path} is corrupt or truncated ({exc}); move it aside to start empty "
                f"(tasks in it will be lost) or restore it from a backup"
            ) from None
        self._db = db
        log.info("journal opened path=%s epoch=%d", self.path, self.epoch)
        return self.epoch

    def rows(self) -> Iterator[JournalRow]:
        """Every task, in submit order, for replay at start."""
        assert self._db is not None
        for task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result in self._db.execute(
                "SELECT task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result "
                "FROM tasks ORDER BY seq"):
            value, error, history = msgpack.unpackb(result, raw=False) if result else (None, None, [])
            yield JournalRow(task_id, seq, state, attempt, epoch, deaths, finished_at, spec, value, error, history)

    def write(self, rows: list[JournalRow], deleted: list[str] | None = None) -> None:
        """Apply ``rows`` (then delete ``deleted``) in one transaction; durable when this returns."""
        self.write_batches([(rows, deleted or [])])

    def write_batches(self, batches: list[tuple[list[JournalRow], list[str]]]) -> None:
        """Apply several batches in order in one transaction (one fsync): a group commit.

        Order matters: a task purged in one batch and submitted again under the same id
        in the next must end up present.  Between deletions, the rows of one task are
        folded into one: a task submitted and finished within one group commit is
        written once, as its final row.
        """
        if not any(rows or deleted for rows, deleted in batches):
            return
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
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
                    self._apply(db, inserts, updates)
                    inserts, updates = {}, {}
                    db.executemany("DELETE FROM tasks WHERE task_id=?", [(t,) for t in deleted])
            self._apply(db, inserts, updates)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, db: sqlite3.Connection, inserts: dict[str, JournalRow], updates: dict[str, JournalRow]) -> None:
        pack = self._pack
        if inserts:
            db.executemany("INSERT OR REPLACE INTO tasks(task_id, seq, state, attempt, epoch, deaths, "
                           "finished_at, spec, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(r.task_id, r.seq, r.state, r.attempt, r.epoch, r.deaths, r.finished_at, r.spec,
                             _pack_result(r, pack)) for r in inserts.values()])
        if updates:
            db.executemany("UPDATE tasks SET state=?, attempt=?, epoch=?, deaths=?, finished_at=?, "
                           "result=? WHERE task_id=?",
                           [(r.state, r.attempt, r.epoch, r.deaths, r.finished_at, _pack_result(r, pack), r.task_id)
                            for r in updates.values()])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._unlock()


def _pack_result(row: JournalRow, pack: Pack) -> bytes | None:
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

    def __init__(self, journal: Journal, on_failure: Callable[[BaseException], None]) -> None:
        self.journal = journal
        self.on_failure = on_failure
        self._queue: queue.SimpleQueue[_WriterItem | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._failed = False
        # Each counter is written by one thread only (submitted: the caller's, done: the
        # writer's), so comparing them needs no lock.
        self._submitted = 0
        self._done = 0
        self._thread.start()

    def submit(self, rows: list[JournalRow], then: Callable[[], None], deleted: list[str] | None = None) -> None:
        """Queue ``rows`` (and ``deleted`` ids); ``then`` runs on the writer thread once they are durable.

        Call from one thread only (the TaskQueue's).
        """
        self._submitted += 1
        self._queue.put((rows, deleted or [], then))

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
                    self.journal.write_batches([(rows, deleted) for rows, deleted, _ in batch])
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
