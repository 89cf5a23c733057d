"""Hot-path ZeroMQ I/O: whole messages in and out without pyzmq's per-frame extras.

``Socket.send_multipart`` combines enum flags for every frame and ``recv_multipart``
asks the socket for ``RCVMORE`` after each one; a dry non-blocking receive raises
``zmq.Again``, whose construction alone costs a few microseconds.  On paths that move
every task (the transport, the worker loop, the client) these helpers do the same with
plain int flags, each frame's own ``more`` bit, and an ``EVENTS`` check instead of the
exception.  Messages stay atomic: ZeroMQ queues the parts of a message together.
"""

from __future__ import annotations

from typing import Any, cast

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def send_frames(sock: zmq.Socket[Any], frames: list[bytes], block: bool = False) -> None:
    """Send one multipart message; ``zmq.Again`` if the socket's queue is full.

    Without ``block`` that is at once; with it, after the socket's ``SNDTIMEO``.
    """
    more, last = (_MORE, 0) if block else (_MORE_NOBLOCK, NOBLOCK)
    for frame in frames[:-1]:
        sock.send(frame, more)
    sock.send(frames[-1], last)


def recv_frames(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """One multipart message as frames (metadata intact) without blocking; ``zmq.Again`` if none waits."""
    frame = sock.recv(NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:  # the rest of a message is there once its first part is
        frame = sock.recv(NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def recv_bytes(sock: zmq.Socket[Any]) -> list[bytes]:
    """One multipart message as bytes without blocking; ``zmq.Again`` if none waits."""
    return [frame.bytes for frame in recv_frames(sock)]


def has_input(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting (cheaper than the ``zmq.Again`` of a dry receive)."""
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)
