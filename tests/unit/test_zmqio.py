"""The hot-path send/receive helpers against real ZeroMQ sockets (inproc)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from actorsched.zmqio import has_input, recv_bytes, recv_frames, send_frames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://zmqio")
    b.connect("inproc://zmqio")
    yield a, b
    a.close(0)
    b.close(0)
    context.term()


def test_a_multipart_message_arrives_whole_and_in_order(pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    a, b = pair
    assert not has_input(b)
    send_frames(a, [b"AS1", b"kind", b"x" * 100_000])
    send_frames(a, [b"second"], block=True)
    assert b.poll(5000)
    assert has_input(b)
    assert [f.bytes for f in recv_frames(b)] == [b"AS1", b"kind", b"x" * 100_000]
    assert recv_bytes(b) == [b"second"]
    assert not has_input(b)


def test_receiving_with_nothing_waiting_raises_again(pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    _, b = pair
    with pytest.raises(zmq.Again):
        recv_frames(b)


def test_a_full_queue_raises_again_instead_of_blocking() -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)  # no peer: nowhere to queue
    try:
        with pytest.raises(zmq.Again):
            send_frames(sock, [b"a", b"b"])
    finally:
        sock.close(0)
        context.term()


def test_frames_past_max_frames_are_read_and_dropped_and_the_next_message_is_whole(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    """Issue 9 #4: a message of 100,000 frames yields max_frames + 1 of them, and the socket stays in step."""
    a, b = pair
    a.send_multipart([b"AS1", b"kind", *([b""] * 100_000)])
    send_frames(a, [b"AS1", b"next", b"body"])
    assert b.poll(5000)
    first = recv_frames(b, max_frames=3)
    assert [f.bytes for f in first] == [b"AS1", b"kind", b"", b""]  # 4 > 3: "too many", whatever the count
    assert recv_bytes(b, max_frames=3) == [b"AS1", b"next", b"body"]
    assert not has_input(b)


def test_a_message_within_max_frames_is_returned_whole(pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    a, b = pair
    send_frames(a, [b"1", b"2", b"3"])
    assert b.poll(5000)
    assert recv_bytes(b, max_frames=3) == [b"1", b"2", b"3"]
