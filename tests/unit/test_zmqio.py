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
