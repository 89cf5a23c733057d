"""``python -m actorsched.worker``: a worker process.

The installed ``actorsched-worker`` command, ``bin/worker`` in a checkout and
:class:`~actorsched.localcluster.LocalCluster` all run this same :func:`main`.  The
worker's task processes start from a forkserver and re-import the main script of the
process; this module imports nothing heavy at the top so that those children stay light
(``python -m`` of a package's ``__main__`` is not re-run in them at all).
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run a worker with the process's own arguments; the exit status."""
    try:
        from actorsched.worker.app import main as run
    except ImportError as exc:
        print(f"worker: cannot import a dependency ({exc}); install actorsched with its dependencies "
              f"(pip install actorsched, or `make install` in a checkout)", file=sys.stderr)
        return 2
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
