"""The worker process: a DEALER connection to the coordinator, a heartbeat, a child-process pool.

Modules: :mod:`~actorsched.worker.executor` (the pool of child processes and the task
allowlist), :mod:`~actorsched.worker.load` (psutil sampler),
:mod:`~actorsched.worker.connection` (the single-threaded event loop speaking the
protocol) and :mod:`~actorsched.worker.app` (``main(argv)``: flags, config, logging,
signals).  This package imports nothing heavy so that child processes stay light.
"""
