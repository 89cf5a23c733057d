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
``dict[str, Any]`` and nested records.  A bool is not an int here.  The decoders refuse
a key of a ``dict[str, Any]`` field that is not a str: msgpack's ``strict_map_key`` also
lets bytes keys through, and kwargs with a bytes key were queued and journaled only to
fail in the worker's child (``keywords must be strings``).  The maps inside user values
are the user's own: their keys may be bytes too.

Two limits come from a field's metadata (see :func:`bounds` and :func:`nesting`):

- A number field may carry inclusive bounds, checked after its type: a peer's
  ``slots=2**64-1`` or ``duration_s=NaN`` is a decode error naming the field and the
  range, not a value that later breaks sums, placement or encoding.
- A field holding user values (``Any``, ``list[Any]``, ``dict[str, Any]``) may nest
  lists and maps at most :data:`MAX_NESTING` levels deep (or the field's own limit).
  msgpack decodes ~1,000 levels, and every recursive walk of such a value later (``==``,
  ``repr``, resolving references, packing it again) would raise RecursionError and stop
  the actor doing it.  :func:`check_depth` walks the value once, iteratively, and only
  when it is a container; the encoders apply the same limit, so a sender learns at once
  that a value would be refused.

The same walk refuses msgpack extension values (``msgpack.ExtType``, ``msgpack.Timestamp``)
in user values: msgpack packs them, but the wire refuses them (see the protocol's
decoders), so a frame carrying one would be dropped whole, with every other task or
outcome in it.  The encoders refuse them naming the field, and so do the decoders, for
data that the protocol's own unpacking (which refuses every extension type) did not read.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from actorsched.errors import ProtocolError

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], list[Any]]

_DECODERS: dict[type, Decoder] = {}
_ENCODERS: dict[type, Encoder] = {}
_SCALARS = {str: "str", int: "int", bool: "bool", bytes: "bytes"}

MAX_NESTING = 100
"""How deep lists and maps may nest inside one user value (a task's args or kwargs, a result).

Deep enough for any real document (JSON in the wild rarely nests past 20 levels), and
shallow enough that a recursive walk of the value, even started deep in an actor's own
stack, stays far below Python's recursion limit (1,000 frames) and msgpack's packer
limit (511 levels), also when a reference inside args is replaced by another task's
result (at most twice this depth, see ``Assignment``)."""

RANGE = "actorsched.range"
"""Field metadata key: inclusive ``(low, high)`` bounds of a number field."""
NESTING = "actorsched.nesting"
"""Field metadata key: the nesting limit of a user-value field, instead of :data:`MAX_NESTING`."""

_NESTED = frozenset((list, dict, tuple))  # what msgpack packs as arrays and maps (tuples only on the way out)
_EXT = frozenset((msgpack.ExtType, msgpack.Timestamp))  # what msgpack packs as extension types
_CHECKED = _NESTED | _EXT  # what the walk of a user value looks into or refuses; anything else is a leaf


def bounds(low: float, high: float) -> dict[str, Any]:
    """Field metadata bounding a number field to ``low <= value <= high`` (a NaN never is)."""
    return {RANGE: (low, high)}


def nesting(limit: int) -> dict[str, Any]:
    """Field metadata giving a user-value field its own nesting limit."""
    return {NESTING: limit}


def check_depth(value: Any, limit: int = MAX_NESTING, what: str = "the value") -> None:
    """Raise ProtocolError naming ``what`` if lists and maps nest more than ``limit`` levels in ``value``,
    or if it holds a msgpack extension value (``ExtType``, ``Timestamp``), which the wire refuses.

    A scalar is 0 levels deep, ``[1, 2]`` and ``{}`` one, ``[[1]]`` two.  The walk goes one
    level at a time over a list of the containers found at that level, never recursing, so
    a value of any depth or size is checked without risk to the stack, each item once, and
    the walk stops at the first level past the limit.  Map keys are not looked at.
    """
    checked = _CHECKED
    if type(value) not in checked:
        return
    if type(value) in _EXT:
        raise _ext_error(what, value)
    level = [value]
    depth = 1
    while True:
        below = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) in checked:
                    if type(item) in _EXT:
                        raise _ext_error(what, item)
                    below.append(item)
        if not below:
            return
        depth += 1
        if depth > limit:
            raise ProtocolError(f"{what}: lists and maps nest more than {limit} levels deep, the limit; "
                                f"flatten the data or pass it by reference")
        level = below


def _ext_error(what: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{what}: holds a msgpack extension value ({type(value).__name__}), which the wire "
                         f"refuses; use plain data: None, bool, int, float, str, bytes, list, dict with str keys")


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


def _show_bound(bound: float) -> str:
    """A bound as a reader would write it: ``2**53``, ``1e+10``, ``100``."""
    if type(bound) is int:
        size = abs(bound)
        if size >= 1 << 20 and size & (size - 1) == 0:
            return f"{'-' if bound < 0 else ''}2**{size.bit_length() - 1}"
        return str(bound)
    return f"{bound:g}"


def _range_lines(var: str, where: str, rng: tuple[float, float] | None, noun: str, indent: str) -> list[str]:
    if rng is None:
        return []
    low, high = rng
    expected = f"{noun} in [{_show_bound(low)}, {_show_bound(high)}]"
    return [f"{indent}if not {low!r} <= {var} <= {high!r}: raise _bad({where!r}, {expected!r}, {var})"]


def _depth_lines(var: str, where: str, limit: int, indent: str, shape: str = "any") -> list[str]:
    """Lines checking how deep the user value ``var`` nests, and that it holds no extension value;
    ``shape``: "list", "dict" or "any".

    The first level is looped over here: most values are scalars or flat containers
    (``args=[1, 2]``), and for those even the call of :func:`check_depth` would cost more
    than the check.  Anything it must look into sends the whole value to :func:`check_depth`.
    """
    call = f"_check_depth({var}, {limit}, {where!r}); break"
    loop_list = [f"for _y in {var}:", f"    if type(_y) in _CHECKED: {call}"]
    loop_dict = [f"for _y in {var}.values():", f"    if type(_y) in _CHECKED: {call}"]
    if shape == "list":
        lines = loop_list
    elif shape == "dict":
        lines = loop_dict
    else:
        lines = [f"if type({var}) is dict:", *("    " + line for line in loop_dict),
                 f"elif type({var}) in _CHECKED:",
                 f"    if type({var}) in _EXT: _check_depth({var}, {limit}, {where!r})",  # raises
                 *("    " + line for line in loop_list)]
    return [indent + line for line in lines]


def _key_lines(var: str, where: str, limit: int, indent: str) -> list[str]:
    """Lines checking the ``dict[str, Any]`` map ``var``: every key a str (msgpack's strict_map_key lets
    bytes keys through), and its values as :func:`_depth_lines` does.

    One loop does both, so an empty map (most kwargs) costs nothing and each entry one
    more ``type() is`` test; once a value sends the map to :func:`check_depth`, the keys
    left are checked on their own.
    """
    bad_key = f"raise _bad({where + ' key'!r}, 'a str', _k)"
    return [indent + line for line in [
        f"for _k, _y in {var}.items():",
        f"    if type(_k) is not str: {bad_key}",
        "    if type(_y) in _CHECKED:",
        f"        _check_depth({var}, {limit}, {where!r})",
        f"        for _k in {var}:",
        f"            if type(_k) is not str: {bad_key}",
        "        break",
    ]]


def _check_lines(var: str, hint: Any, where: str, env: dict[str, Any], indent: str,
                 rng: tuple[float, float] | None = None, limit: int = MAX_NESTING) -> list[str]:
    """Source lines that check (and maybe convert) local ``var`` against ``hint``.

    ``rng``: inclusive bounds of a number; ``limit``: how deep a user value may nest.
    """
    hint, optional = _unwrap_optional(hint)
    if optional:
        inner = _check_lines(var, hint, where, env, indent + "    ", rng, limit)
        return [f"{indent}if {var} is not None:", *inner] if inner else []
    w = repr(where)
    if hint is Any:
        return _depth_lines(var, where, limit, indent)
    if hint in _SCALARS:
        name = _SCALARS[hint]
        env[name] = hint
        return [f"{indent}if type({var}) is not {name}: raise _bad({w}, {name!r}, {var})",
                *_range_lines(var, where, rng, "an integer", indent)]
    if hint is float:
        return [
            f"{indent}if type({var}) is not float:",
            f"{indent}    if type({var}) is int: {var} = float({var})",
            f"{indent}    else: raise _bad({w}, 'a number', {var})",
            *_range_lines(var, where, rng, "a number", indent),
        ]
    origin = typing.get_origin(hint)
    if origin is dict:
        key, value = typing.get_args(hint)
        if key is not str or value is not Any:
            raise TypeError(f"record field type {hint!r} is not supported")  # our bug, loud
        return [f"{indent}if type({var}) is not dict: raise _bad({w}, 'a map', {var})",
                *_key_lines(var, where, limit, indent)]
    if origin is list:
        (item,) = typing.get_args(hint)
        lines = [f"{indent}if type({var}) is not list: raise _bad({w}, 'a list', {var})"]
        if item is Any:
            return lines + _depth_lines(var, where, limit, indent, "list")
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
    env: dict[str, Any] = {"_cls": cls, "_bad": _bad, "_nested": _nested, "ProtocolError": ProtocolError,
                           "_CHECKED": _CHECKED, "_EXT": _EXT, "_check_depth": check_depth}
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    local = [f"_f{i}" for i in range(len(names))]
    shape = f"an array of {len(names)} fields ({', '.join(names)})"
    lines = [
        "def decode(value):",
        f"    if type(value) is not list or len(value) != {len(names)}:",
        f"        raise _bad({cls.__name__!r}, {shape!r}, value)",
        f"    {', '.join(local)}{',' if len(local) == 1 else ''} = value",
    ]
    for var, f in zip(local, fields):
        lines += _check_lines(var, hints[f.name], f"{cls.__name__}.{f.name}", env, "    ",
                              f.metadata.get(RANGE), f.metadata.get(NESTING, MAX_NESTING))
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
    env: dict[str, Any] = {"_CHECKED": _CHECKED, "_EXT": _EXT, "_check_depth": check_depth}
    parts = []
    checks = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint, optional = _unwrap_optional(hints[f.name])
        is_list = typing.get_origin(hint) is list
        inner, _ = _unwrap_optional(typing.get_args(hint)[0] if is_list else hint)
        expr = f"value.{f.name}"
        if inner is Any or typing.get_origin(hint) is dict:
            # A user value: what the receiver would refuse is refused here, naming the field.
            # (Not the keys of a dict[str, Any] field: the client checks kwargs, and the rest the
            # coordinator sends on were decoded, so checked, or built by itself; this is its hot path.)
            # A list[Any] field is a list (a tuple will do too): its items are looped over at once.
            shape = "list" if is_list and not optional else "any"
            checks += [f"    _v = {expr}", *_depth_lines("_v", f"{cls.__name__}.{f.name}",
                                                          f.metadata.get(NESTING, MAX_NESTING), "    ", shape)]
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            fn = f"_enc_{inner.__name__}"
            env[fn] = record_encoder(inner)
            expr = f"[{fn}(_x) for _x in {expr}]" if is_list else f"{fn}({expr})"
            if optional:
                expr = f"(None if value.{f.name} is None else {expr})"
        parts.append(expr)
    exec("\n".join(["def encode(value):", *checks, f"    return [{', '.join(parts)}]"]), env)  # noqa: S102
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
