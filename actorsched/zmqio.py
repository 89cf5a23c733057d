"""Hot-path ZeroMQ I/O: whole messages in and out without pyzmq's per-frame extras.

``Socket.send_multipart`` combines enum flags for every frame and ``recv_multipart``
asks the socket for ``RCVMORE`` after each one; a dry non-blocking receive raises
``zmq.Again``, whose construction alone costs a few microseconds.  On paths that move
every task (the transport, the worker loop, the client) these helpers do the same with
plain int flags, each frame's own ``more`` bit, and an ``EVENTS`` check instead of the
exception.  Messages stay atomic: ZeroMQ queues the parts of a message together.

A receiver that knows how many frames a message may have passes ``max_frames``: ZeroMQ
has no limit on the parts of one message, and holding a peer's million empty frames as
Python objects costs hundreds of megabytes before any length check could run.
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


def recv_frames(sock: zmq.Socket[Any], max_frames: int = 0) -> list[zmq.Frame]:
    """One multipart message as frames (metadata intact) without blocking; ``zmq.Again`` if none waits.

    With ``max_frames``, at most ``max_frames + 1`` frames are kept: a longer message is
    still read to its end, so that the next receive starts at a message boundary, but its
    surplus frames are dropped as they arrive.  A result longer than ``max_frames`` thus
    means "too many frames", whatever their number, at the memory cost of one frame.
    """
    frame = sock.recv(NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:  # the rest of a message is there once its first part is
        frame = sock.recv(NOBLOCK, copy=False)
        if max_frames and len(frames) > max_frames:
            continue  # surplus: read to stay in step with the socket, and dropped
        frames.append(frame)
    return frames


def recv_bytes(sock: zmq.Socket[Any], max_frames: int = 0) -> list[bytes]:
    """One multipart message as bytes without blocking; ``zmq.Again`` if none waits.

    ``max_frames``: as for :func:`recv_frames`.
    """
    return [frame.bytes for frame in recv_frames(sock, max_frames)]


def has_input(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting (cheaper than the ``zmq.Again`` of a dry receive)."""
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)
