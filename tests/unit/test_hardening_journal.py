"""Issue 9 #14: one coordinator per state folder, by an OS lock that names its holder."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from actorsched.coordinator.journal import Journal, JournalError, JournalRow


def test_a_second_open_of_one_state_folder_is_refused_naming_the_holder_pid(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    assert first.open() == 1
    try:
        with pytest.raises(JournalError) as caught:
            Journal(tmp_path).open()
        assert f"pid {os.getpid()}" in str(caught.value) and "state_dir" in str(caught.value)
    finally:
        first.close()


def test_a_refused_open_does_not_move_the_epoch(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    first.commit_epoch()
    with pytest.raises(JournalError):
        Journal(tmp_path).open()
    first.close()
    second = Journal(tmp_path)
    assert second.open() == 2
    second.close()


def test_close_releases_the_lock(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        journal = Journal(tmp_path)
        assert journal.open() == epoch
        journal.commit_epoch()
        journal.close()


def test_the_epoch_is_stored_only_once_committed_or_written(tmp_path: Path) -> None:
    """A start that fails after opening the journal (a busy port) must not use up an epoch;
    the first durable write stores it even if nobody committed it."""
    journal = Journal(tmp_path)
    assert journal.open() == 1
    journal.close()  # failed start: epoch 1 never stored
    journal = Journal(tmp_path)
    assert journal.open() == 1
    journal.write([])  # nothing to write: still not stored
    journal.close()
    journal = Journal(tmp_path)
    assert journal.open() == 1
    journal.write([JournalRow("t", 1, "QUEUED", 1, 1, 0, None, b"\x90", None, None, [])])
    journal.close()
    journal = Journal(tmp_path)
    assert journal.open() == 2
    journal.close()


def test_an_open_that_fails_on_a_bad_file_releases_the_lock(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.execute("CREATE TABLE unrelated (x)")
    db.close()
    for _ in range(2):  # the second would be "in use" if the first had kept the lock
        with pytest.raises(JournalError, match="holds no actorsched tables"):
            Journal(tmp_path).open()


def test_a_journal_restored_from_an_older_backup_does_not_reuse_epochs(tmp_path: Path) -> None:
    """Restoring a backup used to move the epoch back (5 -> 3), reusing fencing tokens of attempts
    that workers may still report; the highest epoch used is also kept beside the journal."""
    for _ in range(2):
        journal = Journal(tmp_path)
        journal.open()
        journal.commit_epoch()
        journal.close()
    backup = (tmp_path / "journal.sqlite3").read_bytes()  # taken at epoch 2
    for _ in range(3):
        journal = Journal(tmp_path)
        journal.open()
        journal.commit_epoch()
        journal.close()
    (tmp_path / "journal.sqlite3").write_bytes(backup)
    for leftover in ("journal.sqlite3-wal", "journal.sqlite3-shm"):
        (tmp_path / leftover).unlink(missing_ok=True)
    journal = Journal(tmp_path)
    assert journal.open() == 6
    journal.close()
