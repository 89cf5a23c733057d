"""The pure cores and the protocol use no clock, randomness, file, OS call, thread, socket or actor.

The boundary is kept by this test, not by hope: ``actorsched/core/`` and
``actorsched/protocol.py`` take events, ``now`` and (for jitter) a random source as
arguments, so unit tests drive them with a fake clock and a seeded rng.

What is checked, by reading source with :mod:`ast` (nothing is imported):

* every module the pure modules load, transitively: their ``actorsched.*`` imports are
  followed (package ``__init__`` files included, since importing ``a.b.c`` runs ``a`` and
  ``a.b``), and no module on the way may import a banned module (:data:`FORBIDDEN`) or
  call the builtin ``open`` (or ``__import__``, which would hide an import from this walk);
* imports anywhere in a module count (inside functions too: they run when called), except
  under ``if TYPE_CHECKING:`` and in a package's PEP 562 ``__getattr__``, which importing
  never runs (``actorsched.Client`` is loaded that way so workers' children stay light).

A known violation is listed in :data:`KNOWN_VIOLATIONS` with its reason and marked
``xfail(strict=True)``: when it is fixed the case passes, fails as XPASS, and the entry goes.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "actorsched"

FORBIDDEN = frozenset({
    "datetime", "time",  # clocks: take ``now`` as an argument
    "random", "secrets",  # randomness: take an rng as an argument
    "os", "socket", "subprocess", "psutil",  # the operating system
    "threading", "multiprocessing", "asyncio",  # concurrency belongs to the shells
    "zmq", "sqlite3", "pykka",  # I/O and actors
})
"""Top-level modules the pure modules may not load, directly or through another actorsched module."""
FORBIDDEN_CALLS = frozenset({"open", "__import__"})
"""Builtins the pure modules (and what they load) may not call: files, and imports hidden from this walk."""

PURE_MODULES = sorted((PACKAGE / "core").glob("*.py")) + [PACKAGE / "protocol.py"]

KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    # None today.  Fixed since this test was strengthened: core/queue.py imported random (jitter now
    # comes from an injected rng), and four cores imported actorsched.config, a file and environment
    # loader (their config dataclasses now live in the pure actorsched.settings).
}
"""(pure module, banned name) -> why it is broken today; each is an xfail(strict=True) case."""


# --------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Use:
    """One banned import or call: where, and what."""

    path: Path
    line: int
    name: str  # the banned module, or "open()" for a call

    def __str__(self) -> str:
        return f"{_rel(self.path)}:{self.line}: {self.name}"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.Module, is_package: bool) -> list[ast.AST]:
    """Every node that can run once the module is imported (see the module docstring for the two exceptions)."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                continue
            if (is_package and node is tree and isinstance(child, ast.FunctionDef)
                    and child.name == "__getattr__"):
                continue
            stack.append(child)
    return found


@dataclass(frozen=True)
class Parsed:
    uses: tuple[Use, ...]  # banned imports and calls in this module itself
    imports: tuple[str, ...]  # actorsched modules it imports (dotted)


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def parse_source(source: str, path: Path = Path("<test>"), module: str = "actorsched.example",
                 is_package: bool = False) -> Parsed:
    """The banned uses in ``source`` and the actorsched modules it imports."""
    tree = ast.parse(source, str(path))
    uses: list[Use] = []
    imports: list[str] = []
    for node in _nodes(tree, is_package):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN:
                    uses.append(Use(path, node.lineno, alias.name.split(".")[0]))
                if alias.name == "actorsched" or alias.name.startswith("actorsched."):
                    imports.append(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, is_package)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
                if target.split(".")[0] in FORBIDDEN:
                    uses.append(Use(path, node.lineno, target.split(".")[0]))
            if target == "actorsched" or target.startswith("actorsched."):
                imports.append(target)
                imports += [f"{target}.{alias.name}" for alias in node.names]  # kept if it is a module
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            uses.append(Use(path, node.lineno, f"{node.func.id}()"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id in ("builtins", "io")
              and node.func.attr == "open"):
            uses.append(Use(path, node.lineno, "open()"))
    return Parsed(tuple(uses), tuple(imports))


def module_file(module: str, root: Path = ROOT) -> tuple[Path, bool] | None:
    """The source file of an actorsched module under ``root`` and whether it is a package; None if none."""
    parts = module.split(".")
    package = root.joinpath(*parts, "__init__.py")
    if package.is_file():
        return package, True
    plain = root.joinpath(*parts[:-1], parts[-1] + ".py")
    return (plain, False) if plain.is_file() else None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _parsed(module: str, root: Path = ROOT) -> Parsed | None:
    found = module_file(module, root)
    if found is None:
        return None
    path, is_package = found
    return parse_source(path.read_text(), path, module, is_package)


def _with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def banned_uses(path: Path, root: Path = ROOT) -> list[tuple[Use, list[str]]]:
    """Every banned use in ``path`` or in what it loads, each with the import chain that reaches it."""
    start = module_name(path, root)
    chains: dict[str, list[str]] = {}
    queue: list[tuple[str, list[str]]] = [(m, [m]) for m in _with_parents(start)]
    while queue:
        module, chain = queue.pop(0)
        if module in chains:
            continue
        parsed = _parsed(module, root)
        if parsed is None:  # a name imported from a module, not a module
            continue
        chains[module] = chain
        for target in parsed.imports:
            for step in _with_parents(target):
                if step not in chains:
                    queue.append((step, [*chain, step]))
    return [(use, chains[module]) for module in chains for use in _parsed(module, root).uses]  # type: ignore[union-attr]


def describe(found: list[tuple[Use, list[str]]]) -> str:
    return "\n".join(f"  {use}   (via {' -> '.join(chain)})" for use, chain in found)


# --------------------------------------------------------------------------- the rule


def _cases() -> list[object]:
    cases: list[object] = []
    for path in PURE_MODULES:
        rel = str(path.relative_to(PACKAGE))
        for banned in sorted(FORBIDDEN) + sorted(f"{call}()" for call in FORBIDDEN_CALLS):
            reason = KNOWN_VIOLATIONS.get((rel, banned))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(path, banned, marks=marks, id=f"{rel}-{banned}"))
    return cases


@pytest.mark.parametrize(("path", "banned"), _cases())
def test_pure_module_loads_no_clock_randomness_file_os_thread_socket_or_actor(path: Path, banned: str) -> None:
    found = [(use, chain) for use, chain in banned_uses(path) if use.name == banned]
    assert not found, f"{_rel(path)} loads or calls {banned}:\n{describe(found)}"


def test_every_violation_of_the_pure_modules_is_a_known_one() -> None:
    """One list of everything wrong today, so a new violation shows up even among the xfails."""
    unknown = []
    for path in PURE_MODULES:
        rel = str(path.relative_to(PACKAGE))
        unknown += [(use, chain) for use, chain in banned_uses(path) if (rel, use.name) not in KNOWN_VIOLATIONS]
    assert not unknown, f"new violations of the pure-core rule:\n{describe(unknown)}"


def test_the_known_violations_name_real_modules_and_banned_names() -> None:
    rels = {str(p.relative_to(PACKAGE)) for p in PURE_MODULES}
    names = FORBIDDEN | {f"{call}()" for call in FORBIDDEN_CALLS}
    assert {rel for rel, _ in KNOWN_VIOLATIONS} <= rels
    assert {name for _, name in KNOWN_VIOLATIONS} <= names


def test_the_pure_module_list_covers_every_core_module_and_the_protocol() -> None:
    names = {p.name for p in PURE_MODULES}
    assert {"queue.py", "registry.py", "placement.py", "liveness.py", "states.py", "commands.py"} <= names
    assert "protocol.py" in names


def test_the_walk_follows_the_protocol_into_the_record_codec_and_the_errors() -> None:
    visited = _visited("actorsched.protocol")
    assert {"actorsched", "actorsched.protocol", "actorsched.recordcodec", "actorsched.errors"} <= visited
    assert "actorsched.client" not in visited  # the package's lazy __getattr__ is not an import


def _visited(start: str) -> set[str]:
    seen: set[str] = set()
    queue = _with_parents(start)
    while queue:
        module = queue.pop()
        if module in seen or _parsed(module) is None:
            continue
        seen.add(module)
        queue += [step for target in _parsed(module).imports for step in _with_parents(target)]  # type: ignore[union-attr]
    return seen


# --------------------------------------------------------------------------- the checker's own tests


def _uses(source: str, module: str = "actorsched.core.example", is_package: bool = False) -> list[str]:
    return [use.name for use in parse_source(source, module=module, is_package=is_package).uses]


@pytest.mark.parametrize("source", [
    "import time",
    "import threading as t",
    "from socket import socket",
    "import zmq.asyncio",
    "from pykka import ThreadingActor",
    "import os, time",
    "def f():\n    import time\n",
    "if True:\n    from time import monotonic\n",
    "import datetime",
    "from datetime import datetime",
    "import random",
    "from random import Random",
    "import os.path",
    "from os import getpid",
    "import sqlite3",
    "import subprocess",
    "import psutil",
    "try:\n    import psutil\nexcept ImportError:\n    psutil = None\n",
    "class A:\n    def m(self):\n        from threading import Lock\n",
    "with open('x') as f:\n    pass\n",
    "data = open('x', 'rb').read()",
    "def load(path):\n    return builtins.open(path)\n",
    "import io\nio.open('x')",
    "mod = __import__('time')",
])
def test_the_checker_catches_every_form_of_a_forbidden_import_or_call(source: str) -> None:
    assert _uses(source) != []


@pytest.mark.parametrize("source", [
    "import timeit",
    "import socketserver_free_name",
    "from actorsched.core import queue",
    "from . import time",  # actorsched.core.time: inside the package, followed by the walk instead
    "import datetimes",
    "import osmosis",
    "import randomness",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import time\n",
    "file.open()",
    "self.open('x')",
    "opened = 'open'",
])
def test_the_checker_does_not_flag_names_that_only_look_alike(source: str) -> None:
    assert _uses(source) == []


def test_a_package_init_lazy_getattr_is_not_an_import_but_a_plain_function_is() -> None:
    lazy = "def __getattr__(name):\n    import zmq\n    return zmq\n"
    assert _uses(lazy, module="actorsched", is_package=True) == []
    assert _uses(lazy, module="actorsched.x", is_package=False) == ["zmq"]


@pytest.mark.parametrize(("source", "module", "is_package", "expected"), [
    ("from actorsched.protocol import Message", "actorsched.core.x", False,
     {"actorsched.protocol", "actorsched.protocol.Message"}),
    ("from . import states", "actorsched.core.x", False, {"actorsched.core", "actorsched.core.states"}),
    ("from .states import TaskState", "actorsched.core.x", False, {"actorsched.core.states",
                                                                    "actorsched.core.states.TaskState"}),
    ("from ..errors import ProtocolError", "actorsched.core.x", False, {"actorsched.errors",
                                                                        "actorsched.errors.ProtocolError"}),
    ("from .queue import X", "actorsched.core", True, {"actorsched.core.queue", "actorsched.core.queue.X"}),
    ("import actorsched.config as c", "actorsched.core.x", False, {"actorsched.config"}),
])
def test_the_checker_resolves_actorsched_imports(source: str, module: str, is_package: bool,
                                                 expected: set[str]) -> None:
    assert set(parse_source(source, module=module, is_package=is_package).imports) == expected


def test_the_walk_reports_a_banned_use_two_modules_away_with_its_chain(tmp_path: Path) -> None:
    package = tmp_path / "actorsched"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("def __getattr__(name):\n    import zmq\n")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "pure.py").write_text("from actorsched.core import helper\nfrom . import clean\n")
    (package / "core" / "clean.py").write_text("import heapq\n")
    (package / "core" / "helper.py").write_text("from ..loader import load\n")
    (package / "loader.py").write_text("import os\n\ndef load(path):\n    return open(path).read()\n")
    found = banned_uses(package / "core" / "pure.py", tmp_path)
    assert sorted((use.name, use.line, module_name(use.path, tmp_path)) for use, _ in found) == [
        ("open()", 4, "actorsched.loader"), ("os", 1, "actorsched.loader")]
    chains = {tuple(chain) for _, chain in found}
    assert chains == {("actorsched.core.pure", "actorsched.core.helper", "actorsched.loader")}
    assert "actorsched/loader.py:1: os   (via actorsched.core.pure -> actorsched.core.helper -> actorsched.loader)" \
        in describe(found).replace(str(tmp_path) + "/", "")
    assert banned_uses(package / "core" / "clean.py", tmp_path) == []
