"""The pure core and the protocol never import threads, sockets, clocks or actors.

The boundary is kept by this test, not by hope: ``actorsched/core/`` and
``actorsched/protocol.py`` take events and ``now`` as arguments, so unit tests can
drive them with a fake clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "actorsched"
FORBIDDEN = frozenset({"pykka", "zmq", "threading", "socket", "time"})

PURE_MODULES = sorted((PACKAGE / "core").glob("*.py")) + [PACKAGE / "protocol.py"]


def forbidden_imports(source: str, filename: str = "<test>") -> list[str]:
    """Every import in ``source`` whose top-level package is forbidden, as 'line: module'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports stay inside actorsched
                continue
            names = [node.module or ""]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    return found


def test_the_pure_module_list_covers_every_core_module_and_the_protocol() -> None:
    names = {p.name for p in PURE_MODULES}
    assert {"queue.py", "registry.py", "placement.py", "liveness.py", "states.py", "commands.py"} <= names
    assert "protocol.py" in names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_actor_socket_thread_or_clock(path: Path) -> None:
    assert forbidden_imports(path.read_text(), str(path)) == []


@pytest.mark.parametrize("source", [
    "import time",
    "import threading as t",
    "from socket import socket",
    "import zmq.asyncio",
    "from pykka import ThreadingActor",
    "import os, time",
    "def f():\n    import time\n",
    "if True:\n    from time import monotonic\n",
])
def test_the_checker_catches_every_form_of_a_forbidden_import(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize("source", [
    "import timeit",
    "import socketserver_free_name",
    "from actorsched.core import queue",
    "from . import time",
    "import datetime",
])
def test_the_checker_does_not_flag_names_that_only_look_alike(source: str) -> None:
    assert forbidden_imports(source) == []
