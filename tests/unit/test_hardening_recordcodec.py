"""Issue 9 #1 and #5: a peer's value of any depth, size or magnitude gives a short ProtocolError.

Never a RecursionError later, nor a number that breaks sums, placement or encoding: user
values (args, kwargs, results) nest at most MAX_NESTING levels, and every number field
has bounds, both checked by the decoders.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgpack
import pytest

from actorsched import protocol as p
from actorsched.errors import ProtocolError
from actorsched.recordcodec import MAX_NESTING, RANGE, check_depth

MSGPACK_MAX_DEPTH = 1024
"""The C unpacker's fixed stack: 1,024 nested containers decode, 1,025 raise StackError."""


def _deep(kind: str, depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def _decode_submit(request_id: Any) -> p.Message:
    body = msgpack.packb([request_id, [], False], use_bin_type=True)
    return p.Codec(p.CLIENT_MESSAGES).decode([p.VERSION, p.Submit.KIND, body])


@pytest.mark.parametrize("kind", ["list", "map"])
def test_a_wrong_value_nested_past_the_recursion_limit_is_a_short_protocol_error(kind: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        _decode_submit(_deep(kind, MSGPACK_MAX_DEPTH - 1))
    assert str(caught.value).startswith("Submit.request_id: expected int")
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("value", ["x" * 10_000_000, b"\xff" * 10_000_000, [0] * 1_000_000])
def test_a_huge_wrong_value_is_shown_cut_short(value: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        _decode_submit(value)
    assert len(str(caught.value)) < 200


def test_msgpack_refuses_nesting_past_its_stack_as_invalid_msgpack() -> None:
    body = b"\x93" + b"\x91" * MSGPACK_MAX_DEPTH + b"\xc0\x90\xc2"  # [deep, [], False], one level too deep
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        p.Codec(p.CLIENT_MESSAGES).decode([p.VERSION, p.Submit.KIND, body])


# ----------------------------------------------------------------- nesting of user values (issue 9 #1)


def _spec_body(args: Any = None, kwargs: Any = None) -> list[Any]:
    return ["t-1", "m:f", [] if args is None else args, {} if kwargs is None else kwargs, 0, [], None, None, [], [],
            ""]


def test_check_depth_counts_levels_of_lists_and_maps() -> None:
    check_depth(7, 0)
    check_depth("x" * 1000, 0)
    check_depth([], 1)
    check_depth([1, {"a": 2}], 2)
    with pytest.raises(ProtocolError):
        check_depth([1, {"a": 2}], 1)
    check_depth(_deep("map", MAX_NESTING), MAX_NESTING)
    with pytest.raises(ProtocolError, match=rf"^args: lists and maps nest more than {MAX_NESTING} levels deep"):
        check_depth(_deep("list", MAX_NESTING + 1), what="args")


def test_check_depth_never_recurses_whatever_the_depth() -> None:
    value = _deep("list", 200_000)  # far past Python's recursion limit and msgpack's stack
    with pytest.raises(ProtocolError, match="more than 100 levels"):
        check_depth(value, 100)
    check_depth(value, 200_001)


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("field", ["args", "kwargs"])
def test_task_arguments_nested_past_the_limit_are_refused_naming_the_field_and_limit(kind: str, field: str) -> None:
    deep = _deep(kind, MAX_NESTING)  # one more level inside args / kwargs: MAX_NESTING + 1 in all
    body = _spec_body(args=[deep]) if field == "args" else _spec_body(kwargs={"k": deep})
    with pytest.raises(p.BadRequest) as caught:
        p.Codec(p.CLIENT_MESSAGES).decode([p.VERSION, p.Submit.KIND, msgpack.packb([41, [body], False])])
    assert caught.value.request_id == 41  # so the coordinator can answer the client instead of leaving it waiting
    assert str(caught.value).startswith(f"Submit.tasks: TaskSpec.{field}: lists and maps nest more than "
                                        f"{MAX_NESTING} levels deep")


def test_task_arguments_at_the_limit_decode() -> None:
    deep = _deep("list", MAX_NESTING - 1)
    message = p.Codec(p.CLIENT_MESSAGES).decode(
        [p.VERSION, p.Submit.KIND, msgpack.packb([1, [_spec_body(args=[deep], kwargs={"k": deep})], False])])
    assert isinstance(message, p.Submit) and message.tasks[0].args == [deep]


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 1000])
def test_a_result_value_nested_past_the_limit_is_refused(depth: int) -> None:
    outcome = ["t-1", 1, 1, True, _deep("map", depth), None, 0.5, ""]
    with pytest.raises(ProtocolError, match=rf"TaskOutcome.value: lists and maps nest more than {MAX_NESTING}"):
        p.Codec(p.WORKER_MESSAGES).decode([p.VERSION, p.Results.KIND, msgpack.packb([[outcome]])])


def test_an_assignment_may_nest_twice_as_deep_for_resolved_references() -> None:
    """A reference inside args is replaced by the referenced result, itself up to MAX_NESTING deep."""
    resolved = [_deep("list", 2 * MAX_NESTING - 1)]
    assign = p.Assign([p.Assignment("t-1", "m:f", resolved, {}, 1, 1, None)])
    assert p.Codec(p.TO_WORKER_MESSAGES).decode(p.encode(assign)) == assign
    with pytest.raises(ProtocolError, match=f"Assignment.args: lists and maps nest more than {2 * MAX_NESTING}"):
        p.encode(p.Assign([p.Assignment("t-1", "m:f", [resolved], {}, 1, 1, None)]))


@pytest.mark.parametrize("message", [
    p.Submit(1, [p.TaskSpec("t-1", "m:f", [_deep("list", MAX_NESTING)])]),
    p.Submit(1, [p.TaskSpec("t-1", "m:f", [], {"k": _deep("map", MAX_NESTING)})]),
    p.Results([p.TaskOutcome("t-1", 1, 1, True, _deep("list", MAX_NESTING + 1), None, 0.0)]),
    p.TasksDone(1, [p.TaskInfo("t-1", "SUCCEEDED", value=(_deep("list", MAX_NESTING + 1)))]),
], ids=["args", "kwargs", "result", "tasks-done"])
def test_a_sender_refuses_to_encode_what_the_receiver_would_refuse(message: p.Message) -> None:
    """The worker turns this into a ResultNotSerializable failure; the client into InvalidTask before sending."""
    with pytest.raises(ProtocolError, match=f"cannot encode {type(message).__name__}: .*more than {MAX_NESTING}"):
        p.encode(message)


def test_check_packable_names_what_nests_too_deep() -> None:
    with pytest.raises(ProtocolError, match=f"^args of task 't-1': lists and maps nest more than {MAX_NESTING}"):
        p.check_packable([_deep("list", MAX_NESTING)], "args of task 't-1'")


def test_a_stored_spec_nested_too_deep_is_the_decode_error_for_the_journal_to_quarantine() -> None:
    row = msgpack.packb(_spec_body(args=[_deep("list", 1000)]))
    with pytest.raises(ProtocolError, match="TaskSpec.args: lists and maps nest more than"):
        p.unpack_record(p.TaskSpec, row)


# ----------------------------------------------------------------- keys of dict[str, Any] fields


@pytest.mark.parametrize("kwargs", [{b"k": 1}, {"a": 1, b"k": 1}, {"a": [1, [2]], b"k": 1}, {"a": {"b": 1}, b"": 2}],
                         ids=["bytes-key", "after-a-str-key", "after-a-nested-value", "empty-bytes"])
def test_a_bytes_key_in_kwargs_is_refused_at_decode_naming_the_field(kwargs: dict[Any, Any]) -> None:
    """msgpack's strict_map_key lets bytes keys through; such a Submit used to be queued, journaled, and then
    fail in the worker's child (keywords must be strings).  Its request_id can be read, so it is answered."""
    body = msgpack.packb([7, [_spec_body(kwargs=kwargs)], False], use_bin_type=True)
    with pytest.raises(p.BadRequest, match="^Submit.tasks: TaskSpec.kwargs key: expected a str, got bytes") as caught:
        p.Codec(p.CLIENT_MESSAGES).decode([p.VERSION, p.Submit.KIND, body])
    assert caught.value.request_id == 7


def test_bytes_keys_are_refused_in_every_str_keyed_map_field_and_nested_maps_keep_theirs() -> None:
    assign = [[["t-1", "m:f", [], {b"k": 1}, 1, 1, None, 0, False, ""]]]
    with pytest.raises(ProtocolError, match="Assignment.kwargs key"):
        p.Codec(p.TO_WORKER_MESSAGES).decode([p.VERSION, p.Assign.KIND, msgpack.packb(assign, use_bin_type=True)])
    with pytest.raises(ProtocolError, match="StatsReply.stats key"):
        p.Codec(p.TO_CLIENT_MESSAGES).decode([p.VERSION, p.StatsReply.KIND,
                                              msgpack.packb([1, {b"tasks": 1}], use_bin_type=True)])
    # Inside a user value, a map is the user's own: bytes keys are plain data there.
    spec = p.TaskSpec("t-1", "m:f", [{b"raw": 1}], {"table": {b"raw": 2}})
    assert p.Codec(p.CLIENT_MESSAGES).decode(p.encode(p.Submit(1, [spec]))) == p.Submit(1, [spec])


# ----------------------------------------------------------------- bounds on numbers (issue 9 #5)

INF, NAN = float("inf"), float("nan")
REGISTER = ["w-1", "host", 1234, 4, [], [], 64]
HEARTBEAT = [10.0, 20.0, []]
OUTCOME = ["t-1", 1, 1, True, None, None, 0.5, ""]


def _with(body: list[Any], index: int, value: Any) -> list[Any]:
    return [*body[:index], value, *body[index + 1:]]


OUT_OF_RANGE = [
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 3, 2**64 - 1), "Register.slots", "[1, 1024]"),
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 3, 0), "Register.slots", "[1, 1024]"),
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 3, 1025), "Register.slots", "[1, 1024]"),
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 6, 2**63), "Register.prefetch", "[0, 65536]"),
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 6, -1), "Register.prefetch", "[0, 65536]"),
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 2, -5), "Register.pid", "[0, 4294967295]"),
    (p.WORKER_MESSAGES, p.Register.KIND, _with(REGISTER, 5, [["t-1", -1, 1]]), "AttemptRef.epoch", "[0, 2**53]"),
    (p.WORKER_MESSAGES, p.Heartbeat.KIND, _with(HEARTBEAT, 0, NAN), "Heartbeat.cpu_percent", "[0, 100]"),
    (p.WORKER_MESSAGES, p.Heartbeat.KIND, _with(HEARTBEAT, 1, INF), "Heartbeat.memory_percent", "[0, 100]"),
    (p.WORKER_MESSAGES, p.Heartbeat.KIND, _with(HEARTBEAT, 0, -1.0), "Heartbeat.cpu_percent", "[0, 100]"),
    (p.WORKER_MESSAGES, p.Results.KIND, [[_with(OUTCOME, 6, NAN)]], "TaskOutcome.duration_s", "[0, 1e+10]"),
    (p.WORKER_MESSAGES, p.Results.KIND, [[_with(OUTCOME, 6, -INF)]], "TaskOutcome.duration_s", "[0, 1e+10]"),
    (p.WORKER_MESSAGES, p.Results.KIND, [[_with(OUTCOME, 2, 2**53 + 1)]], "TaskOutcome.attempt", "[0, 2**53]"),
    (p.WORKER_MESSAGES, p.Started.KIND, [[["t-1", 2**64 - 1, 1]]], "AttemptRef.epoch", "[0, 2**53]"),
    (p.CLIENT_MESSAGES, p.Submit.KIND, [1, [_with(_spec_body(), 6, INF)], False], "TaskSpec.timeout_s", "[0, 1e+10]"),
    (p.CLIENT_MESSAGES, p.Submit.KIND, [1, [_with(_spec_body(), 4, 2**63)], False], "TaskSpec.priority",
     "[-2**53, 2**53]"),
    (p.CLIENT_MESSAGES, p.Submit.KIND, [-1, [], False], "Submit.request_id", "[0, 2**53]"),
    (p.CLIENT_MESSAGES, p.Purge.KIND, [1, NAN], "Purge.older_than_s", "[0, 1e+10]"),
    (p.TO_WORKER_MESSAGES, p.Welcome.KIND, ["w-1", 1, INF], "Welcome.heartbeat_interval_s", "[0, 1e+10]"),
]


@pytest.mark.parametrize(("accepts", "kind", "body", "field", "bounds"), OUT_OF_RANGE,
                         ids=[f"{case[3]}={case[2]!r:.40}" for case in OUT_OF_RANGE])
def test_a_number_out_of_its_bounds_is_refused_naming_the_field_and_range(
        accepts: tuple[type[p.Message], ...], kind: bytes, body: list[Any], field: str, bounds: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.Codec(accepts).decode([p.VERSION, kind, msgpack.packb(body)])
    assert f"{field}: expected " in str(caught.value) and f"in {bounds}, got" in str(caught.value)


def test_numbers_at_their_bounds_are_accepted() -> None:
    register = p.Codec(p.WORKER_MESSAGES).decode(
        [p.VERSION, p.Register.KIND, msgpack.packb(["w-1", "h", 0, p.MAX_SLOTS, [], [["t", 0, p.MAX_COUNT]],
                                                   p.MAX_PREFETCH])])
    assert isinstance(register, p.Register) and register.slots == 1024 and register.prefetch == 65536
    beat = p.Codec(p.WORKER_MESSAGES).decode([p.VERSION, p.Heartbeat.KIND, msgpack.packb([0, 100, []])])
    assert beat == p.Heartbeat(0.0, 100.0, [])


def test_every_number_field_of_every_record_declares_its_bounds() -> None:
    """A field added later must say its range too: unbounded numbers from peers are issue 9 #5."""
    records = [cls for cls in vars(p).values() if isinstance(cls, type) and dataclasses.is_dataclass(cls)]
    unbounded = []
    for cls in records:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if hint in (int, float, int | None, float | None) and RANGE not in f.metadata:
                unbounded.append(f"{cls.__name__}.{f.name}")
    assert not unbounded
