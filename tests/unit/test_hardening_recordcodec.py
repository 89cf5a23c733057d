"""Issue 9 #1: a peer's value of any depth or size gives a short ProtocolError, never a RecursionError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from actorsched import protocol as p
from actorsched.errors import ProtocolError

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
