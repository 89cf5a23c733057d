"""Fast, strict conversion between frozen dataclass records and msgpack-ready arrays.

For each record class the first use compiles two small functions from its field
annotations (the way :mod:`dataclasses` writes ``__init__``): an encoder that lists
the fields in declaration order, and a decoder that checks the array's length and
every field's type before building the record (filling a slotted record's slots
directly, since every field is given and checked).  Generated code with plain ``type(x)
is str`` tests is several times faster than walking a tree of checker closures, and
every task crosses this code four times per attempt.

Supported field types: ``str``, ``int``, ``float`` (an int is accepted and widened),
``bool``, ``bytes``, ``Any``, ``X | None``, ``list[...]`` of those or of records,
``dict[str, Any]`` and nested records.  A bool is not an int here.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from collections.abc import Callable
from typing import Any

from actorsched.errors import ProtocolError

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], list[Any]]

_DECODERS: dict[type, Decoder] = {}
_ENCODERS: dict[type, Encoder] = {}
_SCALARS = {str: "str", int: "int", bool: "bool", bytes: "bytes"}


class _Shown(reprlib.Repr):
    """A peer's value in an error text, bounded in nesting and length.

    A plain ``repr`` of a value nested ~1,000 levels deep raises RecursionError, and of a
    16 MB string builds a 16 MB text only to cut it to 60 characters.
    """

    repr_bytes = reprlib.Repr.repr_str  # slices before repr, as for str


_SHOWN = _Shown()
_SHOWN.maxlevel = 3
_SHOWN.maxstring = _SHOWN.maxother = 40
_SHOWN.maxlist = _SHOWN.maxdict = 4


def _bad(where: str, expected: str, value: Any) -> ProtocolError:
    shown = _SHOWN.repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ProtocolError(f"{where}: expected {expected}, got {type(value).__name__} {shown}")


def _nested(where: str, exc: ProtocolError) -> ProtocolError:
    return ProtocolError(f"{where}: {exc}")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return members[0], True
    return hint, False


def _check_lines(var: str, hint: Any, where: str, env: dict[str, Any], indent: str) -> list[str]:
    """Source lines that check (and maybe convert) local ``var`` against ``hint``."""
    hint, optional = _unwrap_optional(hint)
    if optional:
        inner = _check_lines(var, hint, where, env, indent + "    ")
        return [f"{indent}if {var} is not None:", *inner] if inner else []
    w = repr(where)
    if hint is Any:
        return []
    if hint in _SCALARS:
        name = _SCALARS[hint]
        env[name] = hint
        return [f"{indent}if type({var}) is not {name}: raise _bad({w}, {name!r}, {var})"]
    if hint is float:
        return [
            f"{indent}if type({var}) is not float:",
            f"{indent}    if type({var}) is int: {var} = float({var})",
            f"{indent}    else: raise _bad({w}, 'a number', {var})",
        ]
    origin = typing.get_origin(hint)
    if origin is dict:
        return [f"{indent}if type({var}) is not dict: raise _bad({w}, 'a map', {var})"]
    if origin is list:
        (item,) = typing.get_args(hint)
        lines = [f"{indent}if type({var}) is not list: raise _bad({w}, 'a list', {var})"]
        if item is Any:
            return lines
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            fn = f"_dec_{item.__name__}"
            env[fn] = record_decoder(item)
            return lines + [
                f"{indent}try: {var} = [{fn}(_x) for _x in {var}]",
                f"{indent}except ProtocolError as _e: raise _nested({w}, _e) from None",
            ]
        body = _check_lines("_x", item, where + "[]", env, indent + "    ")
        return lines + [f"{indent}for _x in {var}:", *body]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        fn = f"_dec_{hint.__name__}"
        env[fn] = record_decoder(hint)
        return [
            f"{indent}try: {var} = {fn}({var})",
            f"{indent}except ProtocolError as _e: raise _nested({w}, _e) from None",
        ]
    raise TypeError(f"record field type {hint!r} is not supported")  # our bug, loud


def record_decoder(cls: type) -> Decoder:
    """The strict decoder of ``cls`` from its array form; raises ProtocolError."""
    cached = _DECODERS.get(cls)
    if cached is not None:
        return cached
    _DECODERS[cls] = lambda value: _DECODERS[cls](value)  # placeholder, for recursive records
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    env: dict[str, Any] = {"_cls": cls, "_bad": _bad, "_nested": _nested, "ProtocolError": ProtocolError}
    local = [f"_f{i}" for i in range(len(names))]
    shape = f"an array of {len(names)} fields ({', '.join(names)})"
    lines = [
        "def decode(value):",
        f"    if type(value) is not list or len(value) != {len(names)}:",
        f"        raise _bad({cls.__name__!r}, {shape!r}, value)",
        f"    {', '.join(local)}{',' if len(local) == 1 else ''} = value",
    ]
    for var, name in zip(local, names):
        lines += _check_lines(var, hints[name], f"{cls.__name__}.{name}", env, "    ")
    env["_build"] = record_builder(cls)  # every field is checked and given: its slots can be filled directly
    lines.append(f"    return _build({', '.join(local)})")
    exec("\n".join(lines), env)  # noqa: S102 - generated from our own annotations only
    _DECODERS[cls] = env["decode"]
    return env["decode"]  # type: ignore[no-any-return]


def record_encoder(cls: type) -> Encoder:
    """The encoder of ``cls`` into nested arrays, fields in declaration order."""
    cached = _ENCODERS.get(cls)
    if cached is not None:
        return cached
    _ENCODERS[cls] = lambda value: _ENCODERS[cls](value)  # placeholder, for recursive records
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {}
    parts = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint, optional = _unwrap_optional(hints[f.name])
        is_list = typing.get_origin(hint) is list
        inner, _ = _unwrap_optional(typing.get_args(hint)[0] if is_list else hint)
        expr = f"value.{f.name}"
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            fn = f"_enc_{inner.__name__}"
            env[fn] = record_encoder(inner)
            expr = f"[{fn}(_x) for _x in {expr}]" if is_list else f"{fn}({expr})"
            if optional:
                expr = f"(None if value.{f.name} is None else {expr})"
        parts.append(expr)
    exec(f"def encode(value):\n    return [{', '.join(parts)}]", env)  # noqa: S102
    _ENCODERS[cls] = env["encode"]
    return env["encode"]  # type: ignore[no-any-return]


_BUILDERS: dict[type, Callable[..., Any]] = {}


def record_builder(cls: type) -> Callable[..., Any]:
    """A positional constructor of the frozen, slotted record ``cls`` that fills its slots directly.

    For records built on the hot path (one or more per task) from values the caller
    already trusts: a frozen dataclass's ``__init__`` goes through ``object.__setattr__``
    once per field, several times slower.  Every field must be given.
    """
    cached = _BUILDERS.get(cls)
    if cached is not None:
        return cached
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if not all(name in getattr(cls, "__slots__", ()) for name in names) or hasattr(cls, "__post_init__"):
        _BUILDERS[cls] = cls
        return cls
    env: dict[str, Any] = {"_cls": cls, "_new": object.__new__}
    lines = [f"def build({', '.join(names)}):", "    record = _new(_cls)"]
    for name in names:
        env[f"_set_{name}"] = vars(cls)[name].__set__
        lines.append(f"    _set_{name}(record, {name})")
    lines.append("    return record")
    exec("\n".join(lines), env)  # noqa: S102 - generated from our own field names only
    _BUILDERS[cls] = env["build"]
    return env["build"]  # type: ignore[no-any-return]
