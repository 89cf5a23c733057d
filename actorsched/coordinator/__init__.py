"""The coordinator process: pykka actors around the pure cores, a ZeroMQ transport, a journal.

Actors (one module each): TaskQueue, WorkerRegistry, Dispatcher, FailureDetector and
Transport.  They only ``tell`` each other lists of events; ``ask`` is for tests.
:mod:`actorsched.coordinator.app` wires them together.
"""
