"""Pure scheduling logic: events and ``now`` in, commands out.

Nothing in this package may import pykka, zmq, threading, socket or time; a unit test
(tests/unit/test_core_purity.py) enforces it.  The coordinator's actors are thin shells
that feed these objects and carry out the commands they return.
"""
