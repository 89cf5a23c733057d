"""The wire protocol: every kind round-trips, and every malformed frame is a ProtocolError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from actorsched import protocol as p
from actorsched.errors import ProtocolError

SPEC = p.TaskSpec(
    "t-1", "actorsched.tasks:add", [1, 2.5, "x", None, [True, b"raw"]], {"k": {"nested": [1, 2]}},
    priority=-3, deps=["t-0"], timeout_s=2.5, max_attempts=3, retry_on=["ValueError"], tags=["gpu", "big"],
)
SPEC_DEFAULTS = p.TaskSpec("t-2", "actorsched.tasks:noop")
ASSIGNMENT = p.Assignment("t-1", "actorsched.tasks:add", [1, 2], {"a": 1}, epoch=7, attempt=2, timeout_s=None)
ERROR = p.ErrorInfo("ValueError", "bad value", "Traceback (most recent call last): ...")
OUTCOME_OK = p.TaskOutcome("t-1", 7, 2, True, {"sum": [3, 4.5]}, None, 0.25)
OUTCOME_FAILED = p.TaskOutcome("t-2", 7, 1, False, None, ERROR, 1.0, "…[12 bytes cut]\nlast words\n")
REF = p.AttemptRef("t-1", 7, 2)
INFO = p.TaskInfo(
    "t-1", "FAILED", "actorsched.tasks:add", 5, 2, "w-1", None, ERROR,
    [p.AttemptRecord(1, "w-1", "worker lost", p.ErrorInfo("WorkerLost", "gone")),
     p.AttemptRecord(2, "w-2", "failed", ERROR)],
    "printed\n", 1767225600.5,
)
INFO_NOT_FOUND = p.TaskInfo("nope", "NOT_FOUND")
WORKER_INFO = p.WorkerInfo("w-1", "host-a", 1234, 8, 3, 0.42, 12.5, 40.0, "ALIVE", ["gpu"], 0.3, 17, "closed")

SAMPLES: dict[type[p.Message], p.Message] = {
    p.Register: p.Register("w-1", "host-a", 1234, 4, ["gpu"], [REF, p.AttemptRef("t-9", 6, 1)], 16),
    p.Heartbeat: p.Heartbeat(12.5, 40.0, ["t-1", "t-2"]),
    p.Started: p.Started([REF]),
    p.Release: p.Release([REF]),
    p.Released: p.Released([REF, p.AttemptRef("t-8", 6, 2)]),
    p.Results: p.Results([OUTCOME_OK, OUTCOME_FAILED]),
    p.Draining: p.Draining("SIGTERM"),
    p.Goodbye: p.Goodbye("bye"),
    p.Welcome: p.Welcome("w-1", 7, 1.0),
    p.Assign: p.Assign([ASSIGNMENT, p.Assignment("t-3", "m:f", [], {}, 7, 1, 3.0)]),
    p.CancelTasks: p.CancelTasks([REF]),
    p.Reregister: p.Reregister("unknown worker"),
    p.Shutdown: p.Shutdown("superseded"),
    p.Refused: p.Refused("version"),
    p.NotLeader: p.NotLeader(7, "tcp://10.0.0.2:7700", 3),
    p.Submit: p.Submit(1, [SPEC, SPEC_DEFAULTS]),
    p.Cancel: p.Cancel(2, ["t-1", "t-2"], True),
    p.Query: p.Query(3, ["t-1"]),
    p.Watch: p.Watch(4, ["t-1", "t-2"]),
    p.Unwatch: p.Unwatch(4),
    p.ListWorkers: p.ListWorkers(5),
    p.GetStats: p.GetStats(6),
    p.SubmitReply: p.SubmitReply(1, ["t-1", "t-2"]),
    p.CancelReply: p.CancelReply(2, ["t-1"]),
    p.QueryReply: p.QueryReply(3, [INFO, INFO_NOT_FOUND]),
    p.TasksDone: p.TasksDone(4, [INFO, p.TaskInfo("t-5", "SUCCEEDED", "m:f", 0, 1, "w-2", {"v": [1, "two"]})]),
    p.WorkersReply: p.WorkersReply(5, [WORKER_INFO]),
    p.StatsReply: p.StatsReply(6, {"tasks": 10, "states": {"QUEUED": 2}, "ratio": 0.5}),
    p.Purge: p.Purge(9, 3600.0),
    p.PurgeReply: p.PurgeReply(9, 12),
    p.ErrorReply: p.ErrorReply(7, "queue-full", "queue full; retry later"),
    p.ListTasks: p.ListTasks(10, "FAILED", "*:add", None, "t-", 50),
    p.TaskList: p.TaskList(10, [p.TaskInfo("t-1", "FAILED", "m:add", 0, 2, "w-1", None, p.ErrorInfo("E", "m"))],
                           True),
}

DIRECTIONS = {
    "worker": p.WORKER_MESSAGES,
    "client": p.CLIENT_MESSAGES,
    "to_worker": p.TO_WORKER_MESSAGES,
    "to_client": p.TO_CLIENT_MESSAGES,
}
ALL_CASES = [(direction, cls) for direction, kinds in DIRECTIONS.items() for cls in kinds]


def body_of(message: p.Message) -> list:  # type: ignore[type-arg]
    return msgpack.unpackb(p.encode(message)[2], raw=False)  # type: ignore[no-any-return]


def frames(kind: bytes, body: object) -> list[bytes]:
    return [p.VERSION, kind, msgpack.packb(body, use_bin_type=True)]


# ----------------------------------------------------------------- round trips


def test_every_message_kind_has_a_sample_so_no_kind_goes_untested() -> None:
    every_kind = {cls for kinds in DIRECTIONS.values() for cls in kinds}
    assert every_kind == set(SAMPLES)


def test_message_kinds_are_unique_per_direction() -> None:
    for kinds in DIRECTIONS.values():
        tags = [cls.KIND for cls in kinds]
        assert len(tags) == len(set(tags))


@pytest.mark.parametrize(("direction", "cls"), ALL_CASES, ids=lambda v: getattr(v, "__name__", v))
def test_every_message_kind_survives_an_encode_decode_round_trip(direction: str, cls: type[p.Message]) -> None:
    message = SAMPLES[cls]
    encoded = p.encode(message)
    assert encoded[0] == p.VERSION and encoded[1] == cls.KIND and len(encoded) == 3
    decoded = p.Codec(DIRECTIONS[direction]).decode(encoded)
    assert type(decoded) is cls
    assert decoded == message


def test_nested_records_come_back_as_records_not_lists() -> None:
    query = p.Codec(p.TO_CLIENT_MESSAGES).decode(p.encode(SAMPLES[p.QueryReply]))
    assert isinstance(query, p.QueryReply)
    info = query.tasks[0]
    assert isinstance(info, p.TaskInfo) and isinstance(info.error, p.ErrorInfo)
    assert all(isinstance(h, p.AttemptRecord) for h in info.history)
    assert isinstance(info.history[0].error, p.ErrorInfo)
    results = p.Codec(p.WORKER_MESSAGES).decode(p.encode(SAMPLES[p.Results]))
    assert isinstance(results, p.Results)
    assert results.outcomes[1].error == ERROR and results.outcomes[0].error is None


def test_an_integer_arriving_for_a_float_field_is_accepted_as_a_float() -> None:
    decoded = p.Codec(p.WORKER_MESSAGES).decode(frames(b"heartbeat", [12, 40, []]))
    assert decoded == p.Heartbeat(12.0, 40.0, [])
    assert type(decoded.cpu_percent) is float  # type: ignore[attr-defined]


def test_the_decoder_accepts_a_kind_frame_given_as_a_bytearray() -> None:
    encoded = p.encode(p.Goodbye("bye"))
    decoded = p.Codec(p.WORKER_MESSAGES).decode([p.VERSION, bytearray(encoded[1]), encoded[2]])  # type: ignore[list-item]
    assert decoded == p.Goodbye("bye")


# ----------------------------------------------------------------- rejections


@pytest.mark.parametrize("count", [0, 1, 2, 4, 5])
def test_a_message_with_the_wrong_frame_count_is_rejected(count: int) -> None:
    good = p.encode(p.Goodbye("bye"))
    bad = (good + [b"extra", b"more"])[:count]
    with pytest.raises(ProtocolError, match="frames"):
        p.Codec(p.WORKER_MESSAGES).decode(bad)


def test_a_message_of_another_protocol_version_is_rejected_naming_both_versions() -> None:
    good = p.encode(p.Goodbye("bye"))
    with pytest.raises(ProtocolError) as caught:
        p.Codec(p.WORKER_MESSAGES).decode([b"AS0", good[1], good[2]])
    assert "AS0" in str(caught.value) and p.VERSION.decode() in str(caught.value)


def test_an_unknown_kind_is_rejected_naming_the_kind() -> None:
    with pytest.raises(ProtocolError, match="no-such-kind"):
        p.Codec(p.WORKER_MESSAGES).decode(frames(b"no-such-kind", ["x"]))


@pytest.mark.parametrize(("direction", "cls"), [
    ("worker", p.Submit), ("worker", p.Welcome), ("client", p.Register), ("client", p.Results),
    ("to_worker", p.SubmitReply), ("to_client", p.Assign),
])
def test_a_kind_valid_only_in_another_direction_is_rejected(direction: str, cls: type[p.Message]) -> None:
    with pytest.raises(ProtocolError, match="unknown message kind"):
        p.Codec(DIRECTIONS[direction]).decode(p.encode(SAMPLES[cls]))


@pytest.mark.parametrize("body", [b"\xc1", b"\x92\x01", b"\xdb\x00\x00\x00\x10abc", b"\x91\xa1x\x01"])
def test_a_body_that_is_not_msgpack_is_rejected(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.Codec(p.WORKER_MESSAGES).decode([p.VERSION, b"goodbye", body])


@pytest.mark.parametrize("body", [[], ["a", "b"], "bye", {"reason": "bye"}, None])
def test_a_body_with_the_wrong_shape_or_field_count_is_rejected(body: object) -> None:
    with pytest.raises(ProtocolError, match="Goodbye"):
        p.Codec(p.WORKER_MESSAGES).decode(frames(b"goodbye", body))


def test_a_field_count_error_names_the_expected_fields() -> None:
    with pytest.raises(ProtocolError) as caught:
        p.Codec(p.TO_WORKER_MESSAGES).decode(frames(b"welcome", ["w-1", 7]))
    assert "worker_id" in str(caught.value) and "epoch" in str(caught.value) and "3" in str(caught.value)


@pytest.mark.parametrize(("codec", "kind", "body", "field"), [
    # a bool is not an int
    (p.CLIENT_MESSAGES, b"unwatch", [True], "request_id"),
    (p.TO_WORKER_MESSAGES, b"welcome", ["w-1", False, 1.0], "epoch"),
    # a str where a list is expected
    (p.CLIENT_MESSAGES, b"query", [1, "t-1"], "task_ids"),
    (p.WORKER_MESSAGES, b"heartbeat", [1.0, 2.0, "t-1"], "running"),
    # a list of the wrong item type
    (p.CLIENT_MESSAGES, b"query", [1, ["t-1", 2]], "task_ids"),
    # a str where an int or a bool is expected
    (p.CLIENT_MESSAGES, b"cancel", ["1", ["t-1"], True], "request_id"),
    (p.CLIENT_MESSAGES, b"cancel", [1, ["t-1"], 1], "cascade"),
    # a float where an int is expected
    (p.CLIENT_MESSAGES, b"get-stats", [1.5], "request_id"),
    # a bool where a float is expected
    (p.WORKER_MESSAGES, b"heartbeat", [True, 2.0, []], "cpu_percent"),
    # a map where a list is expected, and a list where a map is expected
    (p.TO_CLIENT_MESSAGES, b"stats-reply", [1, []], "stats"),
])
def test_a_field_of_the_wrong_type_is_rejected_naming_the_field(
    codec: tuple[type[p.Message], ...], kind: bytes, body: list[object], field: str,
) -> None:
    with pytest.raises(ProtocolError, match=field):
        p.Codec(codec).decode(frames(kind, body))


@pytest.mark.parametrize("spec_body", [
    ["t-1", "m:f"],  # too few fields
    ["t-1", "m:f", [], {}, "high", [], None, None, [], [], ""],  # priority not an int
    ["t-1", "m:f", [], {}, 0, "t-0", None, None, [], [], ""],  # deps not a list
    ["t-1", "m:f", [], {}, 0, [], "1.0", None, [], [], ""],  # timeout not a number
    ["t-1", "m:f", [], {}, 0, [], None, True, [], [], ""],  # max_attempts a bool
    ["t-1", "m:f", {}, {}, 0, [], None, None, [], [], ""],  # args a map
    ["t-1", "m:f", [], [], 0, [], None, None, [], [], ""],  # kwargs a list
    {"task_id": "t-1"},  # a map instead of an array
])
def test_a_nested_record_of_the_wrong_shape_is_rejected(spec_body: object) -> None:
    with pytest.raises(ProtocolError, match="TaskSpec"):
        p.Codec(p.CLIENT_MESSAGES).decode(frames(b"submit", [1, [spec_body], False]))


def test_a_nested_error_record_of_the_wrong_shape_is_rejected() -> None:
    outcome = ["t-1", 7, 1, False, None, ["ValueError"], 0.1, ""]  # ErrorInfo with one field of three
    with pytest.raises(ProtocolError, match="ErrorInfo"):
        p.Codec(p.WORKER_MESSAGES).decode(frames(b"results", [[outcome]]))
    outcome = ["t-1", 7, 1, False, None, "ValueError: boom", 0.1, ""]  # a str instead of a record
    with pytest.raises(ProtocolError):
        p.Codec(p.WORKER_MESSAGES).decode(frames(b"results", [[outcome]]))


def test_a_body_larger_than_max_message_bytes_is_rejected() -> None:
    encoded = p.encode(p.Goodbye("x" * 200))
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        p.Codec(p.WORKER_MESSAGES, max_message_bytes=64).decode(encoded)
    assert p.Codec(p.WORKER_MESSAGES, max_message_bytes=len(encoded[2])).decode(encoded) == p.Goodbye("x" * 200)


def test_msgpack_extension_types_are_rejected() -> None:
    body = msgpack.packb(["bye", msgpack.ExtType(5, b"\x00\x01")], use_bin_type=True)
    with pytest.raises(ProtocolError, match="extension"):
        p.Codec(p.CLIENT_MESSAGES).decode([p.VERSION, b"submit", msgpack.packb([1, [
            ["t-1", "m:f", [msgpack.ExtType(5, b"\x00")], {}, 0, [], None, None, [], [], ""]]], use_bin_type=True)])
    with pytest.raises(ProtocolError, match="extension"):
        p.Codec(p.WORKER_MESSAGES).decode([p.VERSION, b"goodbye", body])


@pytest.mark.parametrize("value", [msgpack.Timestamp(1), msgpack.Timestamp(2**40, 5), msgpack.ExtType(5, b""),
                                   msgpack.ExtType(5, b"data")], ids=["timestamp32", "timestamp96", "empty", "ext"])
def test_every_extension_type_is_refused_timestamps_too_and_a_request_is_answered(value: object) -> None:
    """msgpack decodes timestamps itself, past ext_hook: one used to reach the coordinator's actors and journal."""
    spec = ["t-1", "m:f", [value], {}, 0, [], None, None, [], [], ""]
    with pytest.raises(p.BadRequest, match="extension type") as caught:  # its request_id can be read: answered
        p.Codec(p.CLIENT_MESSAGES).decode([p.VERSION, b"submit", msgpack.packb([9, [spec], False])])
    assert caught.value.request_id == 9
    outcome = ["t-1", 1, 1, True, {"when": value}, None, 0.5, ""]
    with pytest.raises(ProtocolError, match="extension type"):
        p.Codec(p.WORKER_MESSAGES).decode([p.VERSION, b"results", msgpack.packb([[outcome]])])
    with pytest.raises(ProtocolError, match="extension type"):
        p.unpack_record(p.TaskSpec, msgpack.packb(spec))


@pytest.mark.parametrize("value", [msgpack.ExtType(1, b"x"), msgpack.Timestamp(1), [1, {"a": msgpack.ExtType(2, b"")}]],
                         ids=["ext", "timestamp", "nested"])
def test_encoding_a_msgpack_extension_value_raises_protocol_error_naming_the_field(value: object) -> None:
    """msgpack packs them, but every receiver refuses them: the whole frame, every outcome in it, would be lost."""
    with pytest.raises(ProtocolError, match="cannot encode Results: TaskOutcome.value: .*extension value"):
        p.encode(p.Results([p.TaskOutcome("t-1", 1, 1, True, value, None, 0.5)]))
    with pytest.raises(ProtocolError, match="cannot encode Submit: TaskSpec.args: .*extension value"):
        p.encode(p.Submit(1, [p.TaskSpec("t-1", "m:f", [value])]))
    with pytest.raises(ProtocolError, match="^the task's args: .*extension value"):
        p.check_packable([value], "the task's args")


def test_a_map_with_non_string_keys_is_rejected() -> None:
    body = msgpack.packb([1, {1: "x"}], use_bin_type=True)
    with pytest.raises(ProtocolError):
        p.Codec(p.TO_CLIENT_MESSAGES).decode([p.VERSION, b"stats-reply", body])


# ----------------------------------------------------------------- encoding and records


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**70, {"k": lambda: None}])
def test_encoding_a_value_msgpack_cannot_carry_raises_protocol_error(value: object) -> None:
    spec = p.TaskSpec("t-1", "m:f", args=[value])
    with pytest.raises(ProtocolError, match="Submit"):
        p.encode(p.Submit(1, [spec]))


def test_check_packable_accepts_plain_data() -> None:
    p.check_packable({"a": [1, 2.5, None, True, "s", b"b", {"n": []}]}, "args")


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**70, [lambda: None]])
def test_check_packable_rejects_unpackable_values_naming_what(value: object) -> None:
    with pytest.raises(ProtocolError, match="the task's args"):
        p.check_packable(value, "the task's args")


@pytest.mark.parametrize("spec", [SPEC, SPEC_DEFAULTS], ids=["full", "defaults"])
def test_a_task_spec_survives_pack_record_and_unpack_record(spec: p.TaskSpec) -> None:
    assert p.unpack_record(p.TaskSpec, p.pack_record(spec)) == spec


def test_pack_record_uses_the_wire_layout_of_an_array_in_field_order() -> None:
    packed = msgpack.unpackb(p.pack_record(SPEC), raw=False)
    assert packed == [getattr(SPEC, f.name) for f in dataclasses.fields(p.TaskSpec)]


@pytest.mark.parametrize("data", [b"\xc1", msgpack.packb(["t-1"]), msgpack.packb({"a": 1})])
def test_unpack_record_rejects_bad_stored_data(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.unpack_record(p.TaskSpec, data)


# ----------------------------------------------------------------- answering bad requests (issue 9)


def test_a_bad_request_with_a_readable_request_id_is_a_bad_request_carrying_it() -> None:
    with pytest.raises(p.BadRequest) as caught:
        p.Codec(p.CLIENT_MESSAGES).decode(frames(b"query", [17, ["t-1", 2]]))
    assert caught.value.request_id == 17 and "Query.task_ids" in str(caught.value)


@pytest.mark.parametrize(("codec", "kind", "body"), [
    (p.CLIENT_MESSAGES, b"query", ["17", ["t-1"]]),  # the id itself is bad
    (p.CLIENT_MESSAGES, b"query", [-3, [1]]),  # out of its bounds
    (p.WORKER_MESSAGES, b"heartbeat", [1, "x", []]),  # not a request: nothing to answer
])
def test_a_bad_message_without_a_usable_request_id_is_a_plain_protocol_error(
        codec: tuple[type[p.Message], ...], kind: bytes, body: list[object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.Codec(codec).decode(frames(kind, body))
    assert not isinstance(caught.value, p.BadRequest)


@pytest.mark.parametrize(("body", "expected"), [
    (msgpack.packb([2**40, ["t"] * 1000]), 2**40),
    (msgpack.packb([0]), 0),
    (msgpack.packb([-1, 2]), None),
    (msgpack.packb(["x", 1]), None),
    (msgpack.packb({"request_id": 1}), None),
    (b"\xc1\xc1", None),
    (b"", None),
])
def test_peek_request_id_reads_only_the_head_of_a_body(body: bytes, expected: int | None) -> None:
    assert p.peek_request_id(body) == expected
    assert p.peek_request_id(memoryview(body + b"\x00" * 100)) == expected
