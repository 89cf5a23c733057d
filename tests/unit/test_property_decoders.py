"""Issue 9, "keep it tried": every decoder, fed anything, gives a decoded value or its one documented error.

Decoders and their one documented error:

* :class:`actorsched.protocol.Codec` for each of the four directions (the coordinator's
  client and worker endpoints, the worker's and the client's side): a message of an
  accepted kind, or :class:`~actorsched.errors.ProtocolError`.
* :func:`actorsched.recordcodec.record_decoder` of every record: the record, or ProtocolError.
* The journal row (:mod:`actorsched.coordinator.journal`): the spec blob through
  :func:`actorsched.protocol.unpack_record` (a TaskSpec or ProtocolError); a whole stored
  row, damaged blobs and state included, through :meth:`Journal.rows` (a ``JournalRow`` or
  a ``RowProblem``) and the replay's row decoder (``task_queue._record_from_row``: a
  ``TaskRecord`` whose fields have their types, or the reason to quarantine it).  A row
  written is read back the same.
* The worker's child pipe (:mod:`actorsched.worker.executor`): the parent turns any reply
  into exactly one :class:`~actorsched.protocol.TaskOutcome` (a ``ResultNotSerializable``
  failure when msgpack refuses the reply, ``ChildReplyInvalid`` when it reads but is not
  a child's reply) that the coordinator accepts; it never raises.

Inputs: arbitrary bytes and frame lists, msgpack of the right shape with wrong types,
wrong field counts, huge ints, extension types, non-string keys, nesting up to and past
msgpack's own limit, and byte-level mutations of valid messages.  A message that does
decode must also conform to its annotations and survive re-encoding.

Tests marked ``xfail(strict=True)`` document a bug found here (see each reason); they
flip to XPASS, and so fail, once it is fixed: then drop the mark.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
import types
import typing
from collections.abc import Iterator
from multiprocessing.connection import wait
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from actorsched import protocol as p
from actorsched import recordcodec
from actorsched.coordinator.journal import Journal, JournalRow
from actorsched.errors import ProtocolError
from actorsched.recordcodec import record_decoder, record_encoder
from actorsched.worker import executor as ex

# Bounded example counts, no deadline (a 2-core machine shared with other test runs), and
# no example database in the working tree.
FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
SLOW = settings(FAST, max_examples=30)

MAX_ERROR_TEXT = 4096
MSGPACK_MAX_DEPTH = 1024  # the C unpacker's stack; the packer's limit is the same
# Field limits the decoders may declare in field metadata (see actorsched.recordcodec): checked when present.
RANGE_KEY = getattr(recordcodec, "RANGE", None)
NESTING_KEY = getattr(recordcodec, "NESTING", None)
MAX_NESTING: int | None = getattr(recordcodec, "MAX_NESTING", None)

CODECS: dict[str, tuple[type[p.Message], ...]] = {
    "coordinator-client-endpoint": p.CLIENT_MESSAGES,
    "coordinator-worker-endpoint": p.WORKER_MESSAGES,
    "worker-side": p.TO_WORKER_MESSAGES,
    "client-side": p.TO_CLIENT_MESSAGES,
}
ALL_MESSAGES: list[type[p.Message]] = sorted(
    {cls for kinds in CODECS.values() for cls in kinds}, key=lambda cls: cls.KIND)
RECORDS: list[type] = sorted(
    (cls for cls in vars(p).values()
     if isinstance(cls, type) and dataclasses.is_dataclass(cls) and not issubclass(cls, p.Message)),
    key=lambda cls: cls.__name__)


# --------------------------------------------------------------------------- strategies

MSGPACK_INTS = st.one_of(st.integers(-5, 300), st.integers(-(2**63), 2**64 - 1),
                         st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**31) - 1]))
SCALARS = st.one_of(st.none(), st.booleans(), MSGPACK_INTS, st.floats(), st.text(max_size=12), st.binary(max_size=12))
EXT = st.one_of(st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
             st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)))
# What a strict decoder may hand back: plain data with str keys.
PLAIN = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)), max_leaves=12)
# What a hostile peer may pack: any key type, extension types, timestamps.
HOSTILE_KEYS = st.one_of(st.text(max_size=6), st.binary(max_size=6), MSGPACK_INTS, st.booleans(), st.none(),
                         st.floats(allow_nan=False))
HOSTILE = st.recursive(st.one_of(SCALARS, EXT), lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(HOSTILE_KEYS, kids, max_size=4)), max_leaves=12)


def nest(depth: int, kind: str, leaf: Any = None) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


# Values nested deep, but packable inside a message (msgpack packs and unpacks at most 1,024 levels).
DEEP = st.builds(nest, st.one_of(st.integers(0, 60), st.integers(90, 110),  # around recordcodec.MAX_NESTING
                                 st.integers(MSGPACK_MAX_DEPTH - 40, MSGPACK_MAX_DEPTH - 8)),
                 st.sampled_from(["list", "map"]), st.one_of(st.none(), MSGPACK_INTS, st.text(max_size=4)))
# Bodies nested past what msgpack unpacks, written by hand (the packer refuses to build them).
DEEP_BYTES = st.builds(lambda n, head: head * n + b"\xc0", st.integers(MSGPACK_MAX_DEPTH - 4, MSGPACK_MAX_DEPTH + 80),
                       st.sampled_from([b"\x91", b"\x81\xa1k", b"\x92\x01", b"\x93\xa1t"]))


def _unwrap(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return members[0], True
    return hint, False


def _well_typed(hint: Any, depth: int) -> st.SearchStrategy[Any]:
    """Values of the wire form of ``hint`` (records as arrays)."""
    hint, optional = _unwrap(hint)
    if hint is Any:
        base: st.SearchStrategy[Any] = PLAIN
    elif hint is str:
        base = st.one_of(st.text(max_size=12), st.sampled_from(["actorsched.tasks:noop", "t-1", "SUCCEEDED", ""]))
    elif hint is bool:
        base = st.booleans()
    elif hint is int:
        base = MSGPACK_INTS
    elif hint is float:
        base = st.one_of(st.floats(), MSGPACK_INTS)
    elif hint is bytes:
        base = st.binary(max_size=12)
    elif typing.get_origin(hint) is dict:
        base = st.dictionaries(st.text(max_size=6), PLAIN, max_size=3)
    elif typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        base = st.lists(_field(item, depth + 1), max_size=3)
    elif dataclasses.is_dataclass(hint):
        base = shaped(hint, depth + 1) if depth < 4 else st.just([])
    else:
        raise TypeError(f"no strategy for {hint!r}")
    return st.one_of(st.none(), base) if optional else base


def _field(hint: Any, depth: int) -> st.SearchStrategy[Any]:
    """Mostly a well-typed value, sometimes anything at all (a wrong type, an ext, a deep nest)."""
    right = _well_typed(hint, depth)
    return st.one_of(right, right, right, right, right, right, HOSTILE, DEEP)


@st.composite
def shaped(draw: st.DrawFn, cls: type, depth: int = 0) -> list[Any]:
    """The array form of ``cls``, sometimes with a field missing, one too many, or one replaced."""
    hints = typing.get_type_hints(cls)
    out = [draw(_field(hints[f.name], depth)) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    change = draw(st.sampled_from(["none"] * 5 + ["drop", "add", "replace", "truncate"]))
    where = draw(st.integers(0, max(0, len(out) - 1)))
    if change == "drop" and out:
        del out[where]
    elif change == "add":
        out.insert(where, draw(HOSTILE))
    elif change == "replace" and out:
        out[where] = draw(st.one_of(HOSTILE, DEEP))
    elif change == "truncate":
        out = out[:where]
    return out


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted, or cut off."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC4, 0xCF, 0xD3, 0xD4, 0xDC,
                                            0xDD, 0xDE, 0xDF, 0xFF]))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete" and buf:
            del buf[at:at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del buf[at:]
    return bytes(buf)


def bodies(cls: type) -> st.SearchStrategy[bytes]:
    """Bodies for kind ``cls``: well-shaped or wrong arrays, any msgpack value, raw bytes, mutations."""
    structured = shaped(cls).map(packb)
    return st.one_of(
        structured, structured, structured,
        st.one_of(HOSTILE, DEEP).map(packb),
        st.binary(max_size=64),
        DEEP_BYTES,
        structured.flatmap(mutated),
    )


def frames_for(accepts: tuple[type[p.Message], ...]) -> st.SearchStrategy[list[bytes]]:
    own = st.sampled_from(list(accepts))
    other = st.sampled_from(ALL_MESSAGES)
    versions = st.one_of(st.just(p.VERSION), st.just(p.VERSION), st.just(p.VERSION),
                         st.sampled_from([b"AS2", b"AS1", b"as3", b"", b"AS3\x00", b"AS33"]), st.binary(max_size=8))
    right_kind = own.flatmap(lambda cls: st.tuples(versions, st.just(cls.KIND), bodies(cls)))
    wrong_kind = other.flatmap(lambda cls: st.tuples(versions, st.just(cls.KIND), bodies(cls)))
    odd_kind = st.tuples(versions, st.binary(max_size=40), st.binary(max_size=40))
    return st.one_of(
        right_kind.map(list), right_kind.map(list), right_kind.map(list), wrong_kind.map(list), odd_kind.map(list),
        st.lists(st.binary(max_size=24), max_size=6),  # any frame count
        right_kind.map(lambda t: [*t, b""]), right_kind.map(lambda t: list(t[:2])),
    )


# --------------------------------------------------------------------------- checks


def _depth(value: Any) -> int:
    """How deep lists and maps nest in ``value`` (iterative: safe at any depth)."""
    depth, level = 0, [value]
    while True:
        below = [x for c in level if isinstance(c, list | dict) for x in (c.values() if isinstance(c, dict) else c)]
        if not any(isinstance(c, list | dict) for c in level):
            return depth
        depth += 1
        level = below


def conforms(value: Any, hint: Any, where: str, check_keys: bool = False,
             rng: tuple[float, float] | None = None, limit: int | None = None) -> None:
    """Assert ``value`` matches annotation ``hint``, and any bounds or nesting limit its field declares."""
    hint, optional = _unwrap(hint)
    if optional and value is None:
        return
    if hint is Any:
        if limit is not None:
            assert _depth(value) <= limit, f"{where}: nests {_depth(value)} levels, over its limit of {limit}"
        return
    if hint in (str, int, bool, bytes, float):
        assert type(value) is hint, f"{where}: {type(value).__name__} is not {hint.__name__}"
        if rng is not None:
            assert rng[0] <= value <= rng[1], f"{where}: {value!r} outside its bounds {rng}"
        return
    origin = typing.get_origin(hint)
    if origin is dict:
        assert type(value) is dict, f"{where}: {type(value).__name__} is not a dict"
        if check_keys:
            bad = [k for k in value if type(k) is not str]
            assert not bad, f"{where}: non-str keys {bad[:3]!r}"
        if limit is not None:
            assert _depth(value) <= limit, f"{where}: nests {_depth(value)} levels, over its limit of {limit}"
        return
    if origin is list:
        assert type(value) is list, f"{where}: {type(value).__name__} is not a list"
        (item,) = typing.get_args(hint)
        if item is Any and limit is not None:
            assert _depth(value) <= limit, f"{where}: nests {_depth(value)} levels, over its limit of {limit}"
            return
        for i, x in enumerate(value):
            conforms(x, item, f"{where}[{i}]", check_keys)
        return
    assert dataclasses.is_dataclass(hint), hint
    assert type(value) is hint, f"{where}: {type(value).__name__} is not {hint.__name__}"
    hints = typing.get_type_hints(hint)
    for f in dataclasses.fields(hint):
        conforms(getattr(value, f.name), hints[f.name], f"{where}.{f.name}", check_keys, *_limits(f))


def _limits(f: dataclasses.Field[Any]) -> tuple[tuple[float, float] | None, int | None]:
    """The bounds and nesting limit field ``f`` declares for its decoder, if this version declares any."""
    rng = f.metadata.get(RANGE_KEY) if RANGE_KEY else None
    limit = f.metadata.get(NESTING_KEY, MAX_NESTING) if NESTING_KEY else MAX_NESTING
    return rng, limit


def decode_or_protocol_error(codec: p.Codec, accepts: tuple[type[p.Message], ...],
                             frames: list[bytes]) -> p.Message | None:
    """The property: a conforming, re-encodable message of an accepted kind, or a short ProtocolError."""
    try:
        message = codec.decode(frames)
    except ProtocolError as exc:
        assert len(str(exc)) < MAX_ERROR_TEXT, f"error text of {len(str(exc))} chars"
        return None
    assert type(message) in accepts
    conforms(message, type(message), type(message).__name__)
    again = codec.decode(p.encode(message))  # what we decoded we can send on, unchanged
    assert packb(record_encoder(type(again))(again)) == packb(record_encoder(type(message))(message))
    return message


def codec_of(cls: type[p.Message]) -> tuple[type[p.Message], ...]:
    return next(kinds for kinds in CODECS.values() if cls in kinds)


# --------------------------------------------------------------------------- the wire codecs


@pytest.mark.parametrize("name", list(CODECS))
@FAST
@given(data=st.data())
def test_any_frames_decode_to_an_accepted_message_or_a_protocol_error(name: str, data: st.DataObject) -> None:
    accepts = CODECS[name]
    frames = data.draw(frames_for(accepts))
    decode_or_protocol_error(p.Codec(accepts), accepts, frames)


@SLOW
@given(data=st.data())
def test_every_field_nested_to_msgpacks_limit_is_a_message_or_a_protocol_error(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(ALL_MESSAGES))
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    value = data.draw(_valid_instance(cls))
    array = record_encoder(cls)(value)
    at = data.draw(st.integers(0, len(fields) - 1))
    depth = data.draw(st.integers(MSGPACK_MAX_DEPTH - 8, MSGPACK_MAX_DEPTH + 2))
    array[at] = nest(depth, data.draw(st.sampled_from(["list", "map"])))
    try:
        body = packb(array)
    except ValueError:  # deeper than the packer goes: build the bytes by hand
        body = b"\x91" * depth + b"\xc0"
    accepts = codec_of(cls)
    decode_or_protocol_error(p.Codec(accepts), accepts, [p.VERSION, cls.KIND, body])


@FAST
@given(data=st.data(), limit=st.integers(0, 200))
def test_a_body_over_max_message_bytes_is_a_protocol_error(data: st.DataObject, limit: int) -> None:
    cls = data.draw(st.sampled_from(ALL_MESSAGES))
    accepts = codec_of(cls)
    body = data.draw(bodies(cls))
    codec = p.Codec(accepts, max_message_bytes=limit)
    if len(body) > limit:
        with pytest.raises(ProtocolError, match="exceeds max_message_bytes"):
            codec.decode([p.VERSION, cls.KIND, body])
    else:
        decode_or_protocol_error(codec, accepts, [p.VERSION, cls.KIND, body])


@FAST
@given(data=st.data())
def test_mutations_of_a_valid_message_decode_or_are_a_protocol_error(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(ALL_MESSAGES))
    accepts = codec_of(cls)
    frames = p.encode(data.draw(_valid_instance(cls)))
    assert decode_or_protocol_error(p.Codec(accepts), accepts, frames) is not None  # a valid one decodes
    decode_or_protocol_error(p.Codec(accepts), accepts, [frames[0], frames[1], data.draw(mutated(frames[2]))])


def _in_bounds(hint: Any, rng: tuple[float, float] | None) -> st.SearchStrategy[Any]:
    if hint is int:
        return MSGPACK_INTS if rng is None else st.integers(int(rng[0]), int(rng[1]))
    if rng is None:
        return st.floats()
    return st.floats(float(rng[0]), float(rng[1]), allow_nan=False, allow_infinity=False)


def _valid_instance(cls: type) -> st.SearchStrategy[Any]:
    """Real, well-typed instances of record or message ``cls``, within the bounds its fields declare."""
    hints = typing.get_type_hints(cls)

    def of(hint: Any, rng: tuple[float, float] | None) -> st.SearchStrategy[Any]:
        hint, optional = _unwrap(hint)
        if dataclasses.is_dataclass(hint):
            base = _valid_instance(hint)
        elif typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            base = st.lists(PLAIN if item is Any else of(item, None), max_size=3)
        elif hint in (int, float):
            base = _in_bounds(hint, rng)
        else:
            base = _well_typed(hint, 0)
        return st.one_of(st.none(), base) if optional else base

    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return st.builds(cls, **{f.name: of(hints[f.name], _limits(f)[0]) for f in fields})


@SLOW
@example(kwargs={b"k": 1})
@given(kwargs=st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)), PLAIN, max_size=3))
def test_a_map_field_with_non_string_keys_is_a_protocol_error(kwargs: dict[Any, Any]) -> None:
    spec = [["t-1", "actorsched.tasks:echo", [], kwargs, 0, [], None, None, [], [], ""]]
    frames = [p.VERSION, p.Submit.KIND, packb([1, spec, False])]
    try:
        message = p.Codec(p.CLIENT_MESSAGES).decode(frames)
    except ProtocolError:
        return
    conforms(message, p.Submit, "Submit", check_keys=True)


@FAST
@example(body=b"\xdc\x00\x03\xcf\xff\xff\xff\xff\xff\xff\xff\xff")
@given(body=st.one_of(st.binary(max_size=24), st.sampled_from(ALL_MESSAGES).flatmap(bodies),
                      st.tuples(HOSTILE, HOSTILE).map(lambda t: packb(list(t)))))
def test_peeking_a_request_id_gives_a_bounded_id_or_none(body: bytes) -> None:
    peek = getattr(p, "peek_request_id", None)
    if peek is None:
        pytest.skip("this protocol version has no peek_request_id")
    request_id = peek(body)
    assert request_id is None or (type(request_id) is int and request_id >= 0)


# --------------------------------------------------------------------------- every record decoder


@FAST
@given(data=st.data())
def test_every_record_decoder_gives_the_record_or_a_protocol_error(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(RECORDS))
    value = data.draw(st.one_of(shaped(cls), shaped(cls), PLAIN, DEEP))
    # Only what msgpack can hand a decoder: pass the value through it first.
    try:
        value = msgpack.unpackb(packb(value), raw=False, strict_map_key=False)
    except ValueError:
        return
    try:
        record = record_decoder(cls)(value)
    except ProtocolError as exc:
        assert len(str(exc)) < MAX_ERROR_TEXT
        return
    conforms(record, cls, cls.__name__)


@FAST
@given(data=st.data())
def test_every_record_round_trips(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(RECORDS))
    record = data.draw(_valid_instance(cls))
    again = record_decoder(cls)(msgpack.unpackb(packb(record_encoder(cls)(record)), raw=False))
    assert packb(record_encoder(cls)(again)) == packb(record_encoder(cls)(record))


# --------------------------------------------------------------------------- the journal row


@FAST
@example(blob=b"\x91" * 1100 + b"\xc0")
@given(blob=st.one_of(bodies(p.TaskSpec), st.binary(max_size=64)))
def test_a_stored_spec_blob_unpacks_to_a_task_spec_or_a_protocol_error(blob: bytes) -> None:
    try:
        spec = p.unpack_record(p.TaskSpec, blob)
    except ProtocolError as exc:
        assert len(str(exc)) < MAX_ERROR_TEXT
        return
    conforms(spec, p.TaskSpec, "TaskSpec")


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journal]:
    opened = Journal(tmp_path_factory.mktemp("journal"), fsync=False)
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


def _stored(journal: Journal, result: bytes | None, spec: bytes, state: str = "FAILED") -> list[Any]:
    """Store one task row with these blobs (as a damaged or older file might hold them); read every row back."""
    db = sqlite3.connect(journal.path)
    try:
        db.execute("DELETE FROM tasks")
        db.execute("INSERT INTO tasks(task_id, seq, state, attempt, epoch, deaths, finished_at, spec, result) "
                   "VALUES ('t-1', 1, ?, 1, 1, 0, 1.0, ?, ?)", (state, spec, result))
        db.commit()
    finally:
        db.close()
    return list(journal.rows())


SPEC_BLOB = p.pack_record(p.TaskSpec("t-1", "actorsched.tasks:echo", [1], {}))
HISTORY_ITEM = st.tuples(st.integers(1, 50), st.text(max_size=6), st.text(max_size=6),
                         st.one_of(st.none(), st.lists(st.text(max_size=4), min_size=3, max_size=3)),
                         st.floats(0, 2e9), st.floats(0, 2e9)).map(list)
RESULT_BLOBS = st.one_of(
    st.binary(max_size=48),
    HOSTILE.map(packb),
    DEEP_BYTES,
    st.tuples(PLAIN, HOSTILE, HOSTILE).map(lambda t: packb(list(t))),  # [value, error?, history?]
    st.tuples(PLAIN, st.one_of(st.none(), st.lists(HOSTILE, min_size=3, max_size=3)),
              st.lists(st.one_of(HISTORY_ITEM, st.lists(HOSTILE, min_size=6, max_size=6)), max_size=2)).map(
        lambda t: packb(list(t))),
    st.tuples(PLAIN, st.none(), st.lists(HISTORY_ITEM, max_size=2)).map(lambda t: packb(list(t))).flatmap(mutated),
)


STATES = st.one_of(st.sampled_from(["QUEUED", "FAILED", "SUCCEEDED", "CANCELLED", "RETRYING"]), st.text(max_size=8))


def _replayed(journal: Journal, blob: bytes | None, spec: bytes, state: str) -> Any:
    """Journal.rows() and the replay's row decoder on one stored row: a TaskRecord, or why it cannot be one."""
    from actorsched.coordinator.journal import RowProblem  # the replay's own names: here, so a rename fails these
    from actorsched.coordinator.task_queue import _record_from_row

    rows = _stored(journal, blob, spec, state)
    assert len(rows) == 1
    (row,) = rows
    assert isinstance(row, JournalRow | RowProblem) and row.task_id == "t-1"
    record = _record_from_row(row, 100.0, time.time())
    if isinstance(record, str):
        assert record and len(record) < MAX_ERROR_TEXT
    else:
        assert type(record).__name__ == "TaskRecord"
    return record


@FAST
@example(blob=b"\x05", spec=SPEC_BLOB, state="FAILED")
@example(blob=b"\xc1", spec=SPEC_BLOB, state="FAILED")
@example(blob=b"\x93\xc0\xc0\x05", spec=SPEC_BLOB, state="FAILED")  # history=5
@example(blob=None, spec=b"\x91" * 1100 + b"\xc0", state="QUEUED")
@given(blob=st.one_of(st.none(), RESULT_BLOBS), spec=st.one_of(st.just(SPEC_BLOB), bodies(p.TaskSpec)), state=STATES)
def test_a_stored_row_replays_to_a_task_or_a_quarantine_reason_never_an_exception(
        journal: Journal, blob: bytes | None, spec: bytes, state: str) -> None:
    _replayed(journal, blob, spec, state)


@FAST
@example(blob=b"\x93\xc0\x93\x01\x02\x03\x90", spec=SPEC_BLOB, state="FAILED")  # error=[1, 2, 3]
@given(blob=st.one_of(st.none(), RESULT_BLOBS), spec=st.just(SPEC_BLOB), state=STATES)
def test_a_stored_row_replays_to_a_well_typed_task_or_a_quarantine_reason(
        journal: Journal, blob: bytes | None, spec: bytes, state: str) -> None:
    record = _replayed(journal, blob, spec, state)
    if isinstance(record, str):
        return
    conforms(record.spec, p.TaskSpec, "record.spec")
    conforms(record.error, p.ErrorInfo | None, "record.error")
    conforms(record.history, list[p.AttemptRecord], "record.history")
    conforms(record.worker_id, str, "record.worker_id")


@FAST
@given(value=PLAIN, error=st.one_of(st.none(), st.lists(st.text(max_size=8), min_size=3, max_size=3)),
       history=st.lists(HISTORY_ITEM, max_size=3))
def test_a_written_journal_row_reads_back_the_same(journal: Journal, value: Any, error: list[str] | None,
                                                     history: list[Any]) -> None:
    spec = p.TaskSpec("t-1", "actorsched.tasks:echo", [value], {})
    row = JournalRow("t-1", 1, "SUCCEEDED", 1, journal.epoch, 0, 1.0, p.pack_record(spec), value, error, history)
    journal.write([row], deleted=[])
    (back,) = list(journal.rows())
    assert isinstance(back, JournalRow), back
    assert back.spec is not None
    assert p.pack_record(p.unpack_record(p.TaskSpec, back.spec)) == p.pack_record(spec)  # NaN-safe equality
    assert packb([back.value, back.error, back.history]) == packb([value, error, history])
    journal.write([], deleted=["t-1"])


# --------------------------------------------------------------------------- the worker's child pipe


def _parent_reads(reply: bytes) -> p.TaskOutcome:
    """What the worker's parent makes of one child reply for a running job (Executor._finish)."""
    pool = ex.Executor(1, start_method="fork")  # never started: no child
    slot = ex._Slot(0, None, None, None, -1, -1)  # type: ignore[arg-type]
    job = ex.Job("t-1", 7, 2, "actorsched.tasks:echo", [], {})
    slot.jobs.append(job)
    pool._running[job.task_id] = slot
    return pool._finish(slot, reply, 10.0)


def _accepted_by_the_coordinator(outcome: p.TaskOutcome) -> None:
    """The outcome travels: what the worker can encode, the coordinator's worker endpoint decodes.

    An outcome the worker cannot encode is fine: its ``_send_results`` then sends a
    ``ResultNotSerializable`` failure in its place.  One it encodes and the coordinator
    refuses is not: the whole Results frame, with every outcome in it, is dropped.
    """
    assert type(outcome) is p.TaskOutcome
    assert (outcome.task_id, outcome.epoch, outcome.attempt) == ("t-1", 7, 2)
    try:
        frames = p.encode(p.Results([outcome]))
    except ProtocolError:
        return
    message = p.Codec(p.WORKER_MESSAGES).decode(frames)
    assert isinstance(message, p.Results) and len(message.outcomes) == 1


def _reply(*fields: Any) -> bytes:
    return packb(list(fields))


OUTPUT = st.one_of(st.just(()), st.tuples(st.text(max_size=20)))  # the optional 7th field: captured output
GOOD_REPLIES = st.one_of(
    st.builds(lambda v, d, out: _reply(True, v, "", "", "", d, *out), PLAIN, st.floats(0, 1e6), OUTPUT),
    st.builds(lambda t, m, tb, d, out: _reply(False, None, t, m, tb, d, *out), st.text(max_size=8),
              st.text(max_size=8), st.text(max_size=8), st.floats(0, 1e6), OUTPUT),
)


def _fails_unpack(data: bytes) -> bool:
    try:
        msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        return True
    return False


@FAST
@given(reply=GOOD_REPLIES)
def test_a_well_formed_child_reply_is_one_outcome_the_coordinator_accepts(reply: bytes) -> None:
    outcome = _parent_reads(reply)
    _accepted_by_the_coordinator(outcome)


@FAST
@example(reply=b"")
@example(reply=b"\xc1")
@given(reply=st.one_of(st.binary(max_size=32).map(lambda b: b"\xc1" + b),
                       GOOD_REPLIES.flatmap(mutated).filter(_fails_unpack)))
def test_an_unreadable_child_reply_is_a_result_not_serializable_outcome(reply: bytes) -> None:
    outcome = _parent_reads(reply)
    _accepted_by_the_coordinator(outcome)
    assert outcome.error is not None and outcome.error.type == "ResultNotSerializable"


@FAST
@example(reply=b"\x05")
@example(reply=b"\xa6abcdef")
@given(reply=st.one_of(HOSTILE.map(packb), st.binary(max_size=32),
                       st.tuples(HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE).map(lambda t: packb(list(t)))))
def test_any_child_reply_is_exactly_one_outcome_the_coordinator_accepts(reply: bytes) -> None:
    _accepted_by_the_coordinator(_parent_reads(reply))


@pytest.mark.parametrize("reply", [
    b"\x05",  # a scalar: was a TypeError out of collect(), stopping the worker's loop
    b"\xa6abcdef",  # a 6-character string: was ok='a', duration_s='f'
    packb([False, None, 5, None, [], "x"]),  # was ErrorInfo(type=5, ...)
    packb([True, 1, "", "", "", float("nan")]),  # a duration the coordinator refuses
    packb([True, 1, "", "", "", 0.5, b"output as bytes"]),
    packb([True, 1, "", "", "", 0.5, "", "one field too many"]),
], ids=["scalar", "string", "error-type-int", "nan-duration", "bytes-output", "eight-fields"])
def test_a_reply_that_is_not_a_childs_reply_is_a_child_reply_invalid_failure(reply: bytes) -> None:
    outcome = _parent_reads(reply)
    _accepted_by_the_coordinator(outcome)
    assert not outcome.ok and outcome.error is not None and outcome.error.type == "ChildReplyInvalid", outcome
    assert "actorsched.tasks:echo" in outcome.error.message and len(outcome.error.message) < 400


@pytest.fixture(scope="module")
def pool() -> Iterator[ex.Executor]:
    executor = ex.Executor(1)  # forkserver, like the worker
    executor.start()
    try:
        yield executor
    finally:
        executor.stop()


def _run(pool: ex.Executor, job: ex.Job, timeout_s: float = 20.0) -> p.TaskOutcome:
    """Run one job through real children, the way the worker's loop does."""
    pool.submit(job)
    outcomes: list[p.TaskOutcome] = []
    deadline = time.monotonic() + timeout_s
    while not outcomes:
        now = time.monotonic()
        assert now < deadline, f"no outcome for {job.task_id} within {timeout_s} s"
        pool.dispatch(now)
        ready = wait(pool.fds(), timeout=0.2)
        outcomes += pool.collect(time.monotonic(), [r if isinstance(r, int) else r.fileno() for r in ready])
    (outcome,) = outcomes
    return outcome


@SLOW
@given(args=st.lists(st.one_of(PLAIN, st.builds(nest, st.integers(0, 90), st.sampled_from(["list", "map"]))),
                     max_size=3),
       kwargs=st.dictionaries(st.from_regex(r"[a-z]\w{0,5}", fullmatch=True), PLAIN, max_size=3))
def test_a_job_crosses_the_child_pipe_and_back_unchanged(pool: ex.Executor, args: list[Any],
                                                         kwargs: dict[str, Any]) -> None:
    outcome = _run(pool, ex.Job("t-1", 7, 2, "actorsched.tasks:echo", args, kwargs))
    assert outcome.ok, outcome.error
    (back,) = p.Codec(p.WORKER_MESSAGES).decode(p.encode(p.Results([outcome]))).outcomes  # type: ignore[attr-defined]
    assert packb(back.value) == packb(outcome.value)
    expected = args[0] if len(args) == 1 and not kwargs else [args, kwargs]
    assert packb(outcome.value) == packb(expected)


@SLOW
@example(value=msgpack.ExtType(1, b"x"))
@given(value=st.one_of(EXT, st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
                       st.lists(EXT, min_size=1, max_size=2)))
def test_a_task_value_the_wire_refuses_becomes_a_failure_not_a_poisoned_results_frame(
        pool: ex.Executor, value: Any) -> None:
    # The job's argument reaches the child as given (the parent packs it); echo returns it.
    outcome = _run(pool, ex.Job("t-1", 7, 2, "actorsched.tasks:echo", [value], {}))
    _accepted_by_the_coordinator(outcome)
    assert outcome.error is not None and outcome.error.type == "ResultNotSerializable", outcome


@FAST
@given(data=st.binary(max_size=96), limit=st.integers(0, 64))
def test_the_pipe_framing_reads_a_message_or_refuses_it(data: bytes, limit: int) -> None:
    """Framing (parent side, with a limit): bytes, or EOFError / _ReplyTooLarge / OSError; nothing else."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
        os.close(write_fd)
        write_fd = -1
        try:
            message = ex._read_message(read_fd, limit)
        except (EOFError, ex._ReplyTooLarge, OSError):
            return
        assert len(message) <= limit
    finally:
        os.close(read_fd)
        if write_fd != -1:
            os.close(write_fd)

