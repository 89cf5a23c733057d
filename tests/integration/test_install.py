"""The package as a user installs it: the built wheel in a fresh venv, used from outside the checkout.

One module-scoped fixture copies the sources (``pyproject.toml``, ``README*``,
``LICENSE*``, ``actorsched/``) to a temporary folder (a build in the checkout would leave
``build/`` there), builds the wheel there with ``pip wheel`` (the build backend comes from
the package registry, as for any user), creates a fresh venv (``python -m venv
--without-pip``: the venv's own pip would only add seconds) and installs the wheel and its
dependencies into it with this interpreter's pip (``pip --python``).
The tests then work in another temporary folder with a clean environment (no
``PYTHONPATH``, the venv's ``bin`` first on ``PATH``), so nothing of the checkout can be
imported: the installed ``actorsched-coordinator``, ``actorsched-worker`` and
``actorsched`` commands run a task, and a script runs a ``LocalCluster``.

Needs the package registry (for the build backend and the dependencies); when a step fails
and the registry does not answer, the tests skip saying so.  About 10 s with a warm pip
cache, a little more on a cold one.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from actorsched.localcluster import ROOT

pytestmark = [pytest.mark.install, pytest.mark.timeout(300)]

STEP_TIMEOUT_S = 240.0
"""Bound on a build or an install: downloads from a slow registry, on a busy 2-core machine."""
TASK_TIMEOUT_S = 30.0
PROBE = "actorsched/dashboard/_install_probe/nested/probe.svg"
"""Added to the copied sources only: proves that files in subfolders of dashboard/ ship."""


@dataclass
class Installed:
    wheel: Path
    venv: Path
    workdir: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _index_url() -> str:
    """The registry pip uses: $PIP_INDEX_URL, else pip's configured index-url, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].split()[0]
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60)
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url") and value.strip("'\" "):
            return value.strip("'\" ")
    return "https://pypi.org/simple"


def _registry_problem() -> str | None:
    """Why the package registry cannot be used, or None when it answers (asked about a dependency we need)."""
    url = _index_url().rstrip("/") + "/pykka/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url} is unreachable: {exc}"


def _run_step(what: str, argv: list[str]) -> None:
    """Run a build/install step; skip when it failed because the registry cannot be reached."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if done.returncode != 0:
        problem = _registry_problem()
        if problem is not None:
            pytest.skip(f"cannot {what} without the package registry ({problem})")
        pytest.fail(f"{what} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for path in [ROOT / "pyproject.toml", *ROOT.glob("README*"), *ROOT.glob("LICEN[CS]E*")]:
        shutil.copy2(path, src / path.name)
    shutil.copytree(ROOT / "actorsched", src / "actorsched",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    probe = src / PROBE
    probe.parent.mkdir(parents=True)
    probe.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')

    dist = base / "dist"
    _run_step("build the wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("actorsched-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    _run_step("install the wheel", [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                                    "install", "-q", str(wheel)])

    workdir = base / "work"  # outside the checkout: nothing of it is importable from here
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV")
           and not key.startswith("ACTORSCHED_")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return Installed(wheel=wheel, venv=venv, workdir=workdir, env=env)


def _run(installed: Installed, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=installed.workdir, env=installed.env, capture_output=True, text=True,
                          timeout=timeout)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return f"no output within {timeout_s} s"
        return proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    """End one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _kill_if_ours(pid: int, venv: Path) -> None:
    """SIGKILL ``pid`` if it still runs this venv's python (a PID reused since by another program is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if cmdline and cmdline[0].decode(errors="replace").startswith(str(venv)):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


# ------------------------------------------------------------------ the wheel


def test_the_wheel_ships_the_entry_points_py_typed_and_every_dashboard_asset(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert "actorsched/py.typed" in names
    assert PROBE in names
    assets = [path.relative_to(ROOT).as_posix() for path in (ROOT / "actorsched" / "dashboard").rglob("*")
              if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")]
    assert sorted(set(assets) - names) == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for command in ("actorsched", "actorsched-coordinator", "actorsched-worker"):
        assert f"\n{command} = " in f"\n{scripts}"


def test_the_installed_package_is_the_one_imported_and_is_typed(installed: Installed) -> None:
    done = _run(installed, installed.bin("python"), "-c",
                "import actorsched, importlib.resources as r; print(actorsched.__file__); "
                "print(r.files('actorsched').joinpath('py.typed').is_file())")
    assert done.returncode == 0, done.stderr
    where, typed = done.stdout.split()
    assert Path(where).resolve().is_relative_to(installed.venv.resolve()), where
    assert typed == "True"


# ------------------------------------------------------------------ the commands


def test_the_installed_commands_run_a_task_from_outside_the_checkout(installed: Installed) -> None:
    for command in ("actorsched", "actorsched-coordinator", "actorsched-worker"):
        helped = _run(installed, command, "--help")  # found on PATH, in the venv
        assert helped.returncode == 0 and "usage:" in helped.stdout, (command, helped.stderr)

    procs: list[subprocess.Popen[str]] = []
    log = open(installed.workdir / "commands.log", "w")
    try:
        coordinator = subprocess.Popen(
            ["actorsched-coordinator", "--bind", "tcp://127.0.0.1:0", "--worker-bind", "tcp://127.0.0.1:0",
             "--http", "127.0.0.1:0", "--state-dir", str(installed.workdir / "state")],
            cwd=installed.workdir, env=installed.env, stdout=subprocess.PIPE, stderr=log, text=True)
        procs.append(coordinator)
        line = _read_line(coordinator, TASK_TIMEOUT_S)
        assert line.startswith("coordinator ready"), (line, (installed.workdir / "commands.log").read_text())
        fields = dict(part.split("=", 1) for part in line.split()[2:])

        procs.append(subprocess.Popen(
            ["actorsched-worker", "--connect", fields["workers"], "--slots", "1", "--worker-id", "installed-1"],
            cwd=installed.workdir, env=installed.env, stdout=log, stderr=subprocess.STDOUT, text=True))

        coordinator_flag = ["--coordinator", fields["clients"]]
        submitted = _run(installed, "actorsched", "submit", *coordinator_flag, "actorsched.tasks:add", "2", "3")
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip()
        result = _run(installed, "actorsched", "result", *coordinator_flag, "--timeout", str(TASK_TIMEOUT_S),
                      task_id, timeout=TASK_TIMEOUT_S + 30)
        assert result.returncode == 0, (result.stderr, (installed.workdir / "commands.log").read_text())
        assert json.loads(result.stdout) == 5

        workers = _run(installed, "actorsched", "workers", "--json", *coordinator_flag)
        assert workers.returncode == 0, workers.stderr
        assert "installed-1" in workers.stdout

        if "http" in fields:
            url = fields["http"] if "://" in fields["http"] else f"http://{fields['http']}"
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as reply:
                assert reply.status == 200
    finally:
        for proc in reversed(procs):  # the worker first, then the coordinator
            _stop(proc)
        log.close()


# ------------------------------------------------------------------ LocalCluster

SCRIPT = """
    import json, os, signal, sys

    import actorsched.localcluster as localcluster
    from actorsched.localcluster import LocalCluster

    def on_term(signum, frame):  # the test's timeout: leave through `with`, which stops the cluster
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    with LocalCluster(workers=1, slots=1) as cluster:
        pids = [cluster.coordinator.pid, *(p.pid for p in cluster.worker_procs)]
        with open(sys.argv[1], "w") as out:
            json.dump(pids, out)
        with cluster.client() as client:
            cluster.wait_for_workers(client, 1, timeout_s=30)
            value = client.submit("actorsched.tasks:echo", "from an installed LocalCluster").result(timeout=30)
    print(json.dumps({"value": value, "from_checkout": localcluster.FROM_CHECKOUT,
                      "package": localcluster.__file__, "cwd": os.getcwd()}))
"""


def test_localcluster_works_from_the_installed_package(installed: Installed) -> None:
    script = installed.workdir / "use_localcluster.py"
    script.write_text(textwrap.dedent(SCRIPT))
    pid_file = installed.workdir / "cluster-pids.json"
    proc = subprocess.Popen([installed.bin("python"), str(script), str(pid_file)], cwd=installed.workdir,
                            env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        _stop(proc)  # on a timeout: SIGTERM lets the script stop its cluster itself
        if proc.returncode != 0 and pid_file.exists():
            for pid in json.loads(pid_file.read_text()):
                _kill_if_ours(pid, installed.venv)  # what the script could not stop: its cluster, by PID
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["value"] == "from an installed LocalCluster"
    assert report["from_checkout"] is False
    assert Path(report["package"]).resolve().is_relative_to(installed.venv.resolve())
