"""Throwaway real PostgreSQL servers for tests and bench scripts.

The PostgreSQL journal of the coordinator must be tested against a real server (locks, fencing,
crash recovery and failover are exactly what a fake would get wrong), so this module starts
one from Debian's ``postgresql`` package in a temporary folder, on a free loopback port:

    with PgServer() as pg:
        dsn = pg.create_database("t1")   # "host=127.0.0.1 port=N user=postgres dbname=t1"
        ...
        pg.kill()                        # SIGKILL of the postmaster: a crash
        pg.restart()                     # same port, same data, crash recovery

Tests use the ``pg_server`` / ``pg_dsn`` fixtures of ``tests/conftest.py``; bench scripts insert
the repository's ``tests`` folder in ``sys.path`` and import ``PgServer``.  Run as a script
(``python tests/pgserver.py``) it starts one server and prints its DSN until Ctrl-C.

Why it is built the way it is:

* Debian puts the server binaries in ``/usr/lib/postgresql/<major>/bin``, not on PATH, and
  whatever ``pg_ctl`` PATH finds may be a wrapper or another version: no PATH lookups.
* PostgreSQL refuses to run as root, and CI runs as root: every server command then runs as an
  unprivileged account (``postgres``, else ``nobody``, else a created ``actorsched-pg``) that
  owns the temporary folder.
* ``postgres`` is started directly (no ``pg_ctl``) so that ``pid`` is the real postmaster:
  tests kill it to simulate a crash, and we only ever signal processes we started, by PID.
* The postmaster gets ``PR_SET_PDEATHSIG=SIGKILL`` (through ``setpriv``) so that it dies with
  the test process even when that is SIGKILLed and neither atexit nor fixture finalizers run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

__all__ = ["PgServer", "PgServerError"]

START_TIMEOUT_S = 30.0
"""Bound on initdb + the first accepted connection: generous for a loaded 2-core CI machine."""
STOP_TIMEOUT_S = 30.0
"""Bound on a fast shutdown (SIGINT) before the server is SIGKILLed instead."""
REAP_TIMEOUT_S = 10.0
"""Bound on waiting for killed processes to be gone and their port to be free again."""
CHILD_GRACE_S = 3.0
"""After ``kill()``, how long the postmaster's children get to notice its death and exit by themselves
(a backend busy computing checks only now and then) before they are SIGKILLed too."""
POLL_S = 0.05
"""Interval between two polls of a condition (each poll is bounded by a deadline)."""
DEDICATED_USER = "actorsched-pg"
"""Account created (as root) when neither ``postgres`` nor ``nobody`` can run the server."""
SUPERUSER = "postgres"
"""The database superuser initdb creates (``-U``); authentication is ``trust`` on loopback."""
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_BIND_ERRORS = ("could not bind", "could not create any TCP/IP sockets", "Address already in use")


class PgServerError(RuntimeError):
    """PostgreSQL could not be set up, started or stopped; the message carries the log's tail."""


@dataclass(frozen=True)
class _Setup:
    """What ``available()`` found out once per process: where the binaries are and who runs them."""

    bindir: str
    user: str | None
    """Account the server commands run as; None: as ourselves (we are not root)."""
    uid: int
    gid: int
    setpriv: str | None
    """``setpriv`` (util-linux): drops privileges and sets the parent-death signal, then execs."""
    base_dir: str
    """Folder for the temporary server folders, traversable by ``user``."""


def _version_key(path: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,), ``.../9.6/bin`` -> (9, 6): highest major first."""
    name = Path(path).parent.name
    return tuple(int(part) for part in name.split(".")) if re.fullmatch(r"\d+(\.\d+)*", name) else (-1,)


def find_bindir() -> str | None:
    """The folder of ``initdb`` and ``postgres``: the highest Debian major, else ``pg_config --bindir``.

    ``ACTORSCHED_PG_BINDIR`` overrides both (for a PostgreSQL built elsewhere).
    """
    candidates: list[str] = []
    override = os.environ.get("ACTORSCHED_PG_BINDIR")
    if override:
        candidates.append(override)
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True))
    pg_config = shutil.which("pg_config")  # only reports a folder; the binaries are checked in it
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(out.stdout.strip())
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, exe), os.X_OK) for exe in ("initdb", "postgres")):
            return bindir
    return None


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _server_env(home: str) -> dict[str, str]:
    """Our environment without PG* variables (PGDATA, PGPORT, PGOPTIONS would change the server) and C locale."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", HOME=home)
    return env


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` is free on ``host``: with SO_REUSEADDR as postgres binds, so TIME_WAIT is no obstacle."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 now (a race with other binders is retried by ``start``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _poll(predicate: Any, timeout_s: float) -> bool:
    """Poll ``predicate()`` every POLL_S until it is true (-> True) or ``timeout_s`` passed (-> False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def _gone(proc: psutil.Process) -> bool:
    """A process is gone once it exited; a zombie counts as gone (it holds no port nor shared memory)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class PgServer:
    """One PostgreSQL server in its own temporary folder, on 127.0.0.1 (plus ``listen``) and a free port.

    ``durable=False`` (the default) turns off fsync, synchronous_commit and full_page_writes: a test
    server needs no protection against power loss, and it is much faster.  Note that with
    synchronous_commit off, a *process* crash (``kill()``) may lose the last commits too; tests of
    crash recovery use ``durable=True``.  ``listen`` adds addresses to listen on (e.g. a veth
    address of a network namespace); connections from anywhere are then trusted.  ``settings``
    adds ``-c name=value`` options.  ``die_with_parent`` kills the postmaster when the *thread*
    that started it exits (the kernel's parent-death signal): start it from a thread that lives
    as long as the server is needed (pytest fixtures and scripts use the main thread).

    Nothing is started by the constructor: call ``start()`` or use ``with PgServer() as pg:``.
    """

    _setup: _Setup | None = None
    _unavailable: str | None = None
    _checked = False
    _check_lock = threading.Lock()
    _live: set[PgServer] = set()

    def __init__(self, *, durable: bool = False, listen: Iterable[str] = (), port: int | None = None,
                 settings: Mapping[str, str] | None = None, start_timeout_s: float = START_TIMEOUT_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S, die_with_parent: bool = True) -> None:
        self.durable = durable
        self.listen = ["127.0.0.1", *(address for address in listen if address != "127.0.0.1")]
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self._port = port
        self._fixed_port = port is not None
        self._tmp: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._last_pid: int | None = None
        self._owner_pid = os.getpid()

    # ----------------------------------------------------------------------------------- availability

    @classmethod
    def available(cls) -> str | None:
        """None when servers can be started here, else a one-line reason (checked once per process).

        As root this may create the ``actorsched-pg`` system account, when neither ``postgres``
        nor ``nobody`` can run the server binaries.
        """
        with cls._check_lock:
            if not cls._checked:
                try:
                    cls._setup = cls._find_setup()
                except PgServerError as exc:
                    cls._unavailable = " ".join(str(exc).split())
                cls._checked = True
        return cls._unavailable

    @classmethod
    def _find_setup(cls) -> _Setup:
        bindir = find_bindir()
        if bindir is None:
            raise PgServerError("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, "
                                "no pg_config --bindir with initdb): install Debian's postgresql package "
                                "(make postgresql)")
        setpriv = shutil.which("setpriv")
        bases = list(dict.fromkeys([tempfile.gettempdir(), "/tmp", "/var/tmp"]))
        if os.geteuid() != 0:
            own = _Setup(bindir, None, os.getuid(), os.getgid(), setpriv, bases[0])
            cls._probe(own)
            return own
        reasons: list[str] = []
        names = [os.environ.get("ACTORSCHED_PG_USER", ""), "postgres", "nobody", DEDICATED_USER]
        for name in dict.fromkeys(n for n in names if n):
            setup = cls._try_account(bindir, setpriv, bases, name, reasons)
            if setup is not None:
                return setup
        if not _account_exists(DEDICATED_USER):  # no existing account works: create a dedicated one
            try:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                DEDICATED_USER], capture_output=True, text=True, timeout=30, check=True)
            except subprocess.CalledProcessError as exc:
                reasons.append(f"{DEDICATED_USER}: useradd failed ({(exc.stderr or '').strip()[:200] or exc})")
            except (OSError, subprocess.SubprocessError) as exc:
                reasons.append(f"{DEDICATED_USER}: useradd failed ({exc})")
            else:
                setup = cls._try_account(bindir, setpriv, bases, DEDICATED_USER, reasons)
                if setup is not None:
                    return setup
        raise PgServerError("running as root and no unprivileged account can run PostgreSQL: "
                            + "; ".join(dict.fromkeys(reasons)))

    @classmethod
    def _try_account(cls, bindir: str, setpriv: str | None, bases: list[str], name: str,
                     reasons: list[str]) -> _Setup | None:
        """The setup running as account ``name`` if it can run postgres in one of ``bases``; else note why not."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        if entry.pw_uid == 0:
            reasons.append(f"{name}: is root")
            return None
        for base in bases:
            setup = _Setup(bindir, name, entry.pw_uid, entry.pw_gid, setpriv, base)
            try:
                cls._probe(setup)
            except PgServerError as exc:
                reasons.append(f"{name}: {exc}")
                continue
            return setup
        return None

    @classmethod
    def _probe(cls, setup: _Setup) -> None:
        """Run ``postgres --version`` and ``test -x base_dir`` as the server's account: both must work."""
        for what, cmd in (("cannot run postgres", [os.path.join(setup.bindir, "postgres"), "--version"]),
                          (f"cannot enter {setup.base_dir}", ["test", "-x", setup.base_dir])):
            argv, kwargs = cls._command(setup, cmd, pdeathsig=False)
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_server_env("/"),
                                        cwd="/", **kwargs)
            except (OSError, subprocess.SubprocessError) as exc:
                raise PgServerError(f"{what} ({exc})") from exc
            if result.returncode != 0:
                raise PgServerError(f"{what} (exit {result.returncode}: {result.stderr.strip()[:200]})")

    @staticmethod
    def _command(setup: _Setup, cmd: list[str], *, pdeathsig: bool) -> tuple[list[str], dict[str, Any]]:
        """``cmd`` as the server's account: through setpriv (which execs, so the PID stays the server's)."""
        options: list[str] = []
        if setup.user is not None:
            options += [f"--reuid={setup.uid}", f"--regid={setup.gid}", "--clear-groups"]
        if pdeathsig:
            options.append("--pdeathsig=KILL")
        if not options:
            return cmd, {}
        if setup.setpriv is not None:
            return [setup.setpriv, *options, "--", *cmd], {}
        if setup.user is None:  # no setpriv: no parent-death signal, atexit and finalizers remain
            return cmd, {}
        return cmd, {"user": setup.uid, "group": setup.gid, "extra_groups": []}

    @classmethod
    def _require_setup(cls) -> _Setup:
        reason = cls.available()
        if reason is not None or cls._setup is None:
            raise PgServerError(f"PostgreSQL is not available: {reason}")
        return cls._setup

    # ------------------------------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        """The TCP port: fixed at the first ``start()`` and kept by ``restart()``."""
        if self._port is None:
            raise PgServerError("the server was never started: no port yet")
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the postmaster we started is alive (it may still be starting or recovering)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_dir(self) -> Path:
        """The temporary folder that holds everything (data, socket, log); removed by ``cleanup()``."""
        if self._tmp is None:
            raise PgServerError("the server was never started: no folder yet")
        return Path(self._tmp)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_path(self) -> Path:
        """initdb's and the server's output, across restarts."""
        return self.base_dir / "postgres.log"

    @property
    def user(self) -> str | None:
        """The OS account the server runs as; None when it runs as ourselves."""
        return self._require_setup().user

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, PgServerError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def dsn(self, dbname: str = "postgres", *, host: str = "127.0.0.1") -> str:
        """A libpq connection string for ``dbname`` over TCP (``host``: one of the listen addresses)."""
        return f"host={host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def __repr__(self) -> str:
        return f"<PgServer port={self._port} pid={self.pid} dir={self._tmp}>"

    # ------------------------------------------------------------------------------------- life cycle

    def __enter__(self) -> PgServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    def start(self) -> PgServer:
        """Create and initdb the folder (first time), start the postmaster and wait until it accepts connections.

        A no-op when it runs.  After ``stop()`` or ``kill()`` it starts again on the same port and
        data (so ``restart()`` is ``stop()`` + ``start()``).  Raises PgServerError with the log's
        tail when the server does not come up within ``start_timeout_s``.
        """
        if self.running:
            return self
        setup = self._require_setup()
        deadline = time.monotonic() + self.start_timeout_s
        if self._tmp is None:
            self._create_folder(setup)
        self._clear_stale_locks()
        if self._port is not None:
            if not _poll(lambda: _bindable(self.port), max(0.0, min(REAP_TIMEOUT_S, deadline - time.monotonic()))):
                raise PgServerError(f"port {self.port} is in use: cannot start PostgreSQL on it")
            self._launch(setup, self._port, deadline)
            return self
        for attempt in range(5):  # a free port may be taken between our probe and postgres's bind: retry
            port = _free_port()
            try:
                self._launch(setup, port, deadline)
            except _PortTaken:
                if attempt == 4:
                    raise PgServerError(f"no free port after 5 attempts:\n{self.log_tail()}") from None
                continue
            self._port = port
            return self
        raise AssertionError("unreachable")

    def _create_folder(self, setup: _Setup) -> None:
        """mkdtemp owned by the server's account, then initdb into ``data``."""
        self._tmp = tempfile.mkdtemp(prefix="actorsched-pg-", dir=setup.base_dir)
        PgServer._live.add(self)
        self.socket_dir.mkdir()
        self.log_path.touch()
        if setup.user is not None:
            for path in (self.base_dir, self.socket_dir, self.log_path):
                os.chown(path, setup.uid, setup.gid)
        cmd = [os.path.join(setup.bindir, "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
               "--encoding=UTF8", "--locale=C", "--no-sync"]
        argv, kwargs = self._command(setup, cmd, pdeathsig=self.die_with_parent)
        with open(self.log_path, "ab") as log:
            try:
                result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self._tmp, env=_server_env(self._tmp), timeout=self.start_timeout_s,
                                        **kwargs)
            except subprocess.TimeoutExpired as exc:  # run() killed it
                raise PgServerError(f"initdb took over {self.start_timeout_s} s:\n{self.log_tail()}") from exc
        if result.returncode != 0:
            raise PgServerError(f"initdb failed (exit {result.returncode}):\n{self.log_tail()}")
        if len(self.listen) > 1:  # initdb trusts loopback only; the extra addresses need their own line
            with open(self.data_dir / "pg_hba.conf", "a") as hba:
                hba.write("\n# actorsched tests: extra listen addresses\nhost all all all trust\n"
                          "host replication all all trust\n")

    def _clear_stale_locks(self) -> None:
        """Remove the lock files of *our* postmaster once it is dead, so a reused PID cannot block a restart."""
        if self._last_pid is None or self._port is None:
            return
        for lock in (self.data_dir / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self._port}.lock"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(lock.read_text().splitlines()[0].strip()) == self._last_pid:
                    lock.unlink()

    def _launch(self, setup: _Setup, port: int, deadline: float) -> None:
        """Start ``postgres`` itself on ``port``; return once it accepts a connection."""
        options = {"listen_addresses": ",".join(self.listen), "max_connections": "100"}
        if not self.durable:
            options.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        options.update(self.settings)
        cmd = [os.path.join(setup.bindir, "postgres"), "-D", str(self.data_dir), "-p", str(port),
               "-k", str(self.socket_dir)]
        for name, value in options.items():
            cmd += ["-c", f"{name}={value}"]
        argv, kwargs = self._command(setup, cmd, pdeathsig=self.die_with_parent)
        log_offset = self.log_path.stat().st_size
        self._log = open(self.log_path, "ab")  # open for the server's lifetime
        # Own session: a Ctrl-C in the terminal must not reach the server behind our back.
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=self._tmp, env=_server_env(str(self._tmp)), start_new_session=True,
                                      **kwargs)
        self._last_pid = self._proc.pid
        proc = self._proc
        while True:  # bounded by the deadline
            if proc.poll() is not None:
                self._close_log()
                self._proc = None
                with open(self.log_path, "rb") as log:
                    log.seek(log_offset)
                    new = log.read().decode(errors="replace")
                if not self._fixed_port and self._port is None and any(text in new for text in _BIND_ERRORS):
                    raise _PortTaken(port)
                raise PgServerError(f"postgres exited with {proc.returncode} while starting:\n{self.log_tail()}")
            if self._accepts(port):
                return
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.kill()
                raise PgServerError(f"postgres did not accept connections within {self.start_timeout_s} s:\n{tail}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(POLL_S)  # the poll interval, cut short if the server exits

    def _accepts(self, port: int) -> bool:
        """One connection attempt: with psycopg when installed, else with pg_isready."""
        try:
            import psycopg
        except ImportError:
            setup = self._require_setup()
            cmd = [os.path.join(setup.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                   "-U", SUPERUSER, "-t", "2"]
            with contextlib.suppress(subprocess.TimeoutExpired):
                return subprocess.run(cmd, timeout=10, env=_server_env("/")).returncode == 0
            return False
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user={SUPERUSER} dbname=postgres",
                                 connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit); SIGKILL after ``stop_timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._proc = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and make sure none of its processes outlive it.

        Its children notice the postmaster's death and exit by themselves; any still there after
        CHILD_GRACE_S is SIGKILLed too (they would hold the shared memory and block a restart).
        The postmaster is SIGSTOPped first so that it cannot fork a child we would not know of.
        Returns once they are all gone and the port is free again.
        """
        proc = self._proc
        if proc is None:
            return
        children: list[psutil.Process] = []
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGSTOP)
                with contextlib.suppress(psutil.Error):
                    children = psutil.Process(proc.pid).children(recursive=True)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait(REAP_TIMEOUT_S)
        self._proc = None
        self._close_log()
        if not _poll(lambda: all(_gone(child) for child in children), CHILD_GRACE_S):
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()  # psutil checks it is still the same process (PID and start time)
            if not _poll(lambda: all(_gone(child) for child in children), REAP_TIMEOUT_S):
                raise PgServerError(f"processes of the killed server survive SIGKILL: {children}")
        if self._port is not None and not _poll(lambda: _bindable(self.port), REAP_TIMEOUT_S):
            raise PgServerError(f"port {self.port} still in use after the server was killed")

    def restart(self, *, kill: bool = False) -> PgServer:
        """``stop()`` (or ``kill()``, a crash) when it runs, then ``start()`` again: same port, same data."""
        if self.running:
            if kill:
                self.kill()
            else:
                self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its temporary folder.  Safe to call twice."""
        try:
            self.stop()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            PgServer._live.discard(self)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -------------------------------------------------------------------------------------- databases

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(), connect_timeout=10, autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (``name``: lowercase identifier; default a unique one) -> its DSN."""
        from psycopg import sql

        name = name or f"db_{uuid.uuid4().hex[:12]}"
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters")
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Terminate the sessions connected to ``name``, then drop it (no error when it does not exist)."""
        from psycopg import sql

        with self._admin() as conn:
            # Refuse new connections first, so a client that reconnects in a loop cannot slip in between.
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None:
                return
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name)))


class _PortTaken(Exception):
    """postgres could not bind the port we picked: someone took it first."""


@atexit.register
def _cleanup_all() -> None:
    """Stop what this process started, even when a test run ends without finalizers (not in forked children)."""
    for server in list(PgServer._live):
        if server._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                server.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Start one server, print its DSN, and stop it on Ctrl-C, SIGTERM, or after ``--seconds``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--durable", action="store_true", help="keep fsync, synchronous_commit, full_page_writes")
    parser.add_argument("--listen", action="append", default=[], help="extra listen address (repeatable)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long (default 3600)")
    args = parser.parse_args(argv)
    reason = PgServer.available()
    if reason is not None:
        print(f"PostgreSQL unavailable: {reason}", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with PgServer(durable=args.durable, listen=args.listen, port=args.port) as server:
        print(server.dsn(), flush=True)
        print(f"pid {server.pid}, log {server.log_path}; Ctrl-C stops it", file=sys.stderr, flush=True)
        assert server._proc is not None
        try:
            code = server._proc.wait(args.seconds)
        except KeyboardInterrupt:
            return 0
        except subprocess.TimeoutExpired:
            print(f"stopping after {args.seconds} s", file=sys.stderr)
            return 0
        print(f"postgres exited by itself with {code}:\n{server.log_tail()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
