"""``python -m actorsched.coordinator``: the coordinator process.

The installed ``actorsched-coordinator`` command, ``bin/coordinator`` in a checkout and
:class:`~actorsched.localcluster.LocalCluster` all run this same :func:`main`.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run the coordinator with the process's own arguments; the exit status."""
    try:
        from actorsched.coordinator.app import main as run
    except ImportError as exc:
        print(f"coordinator: cannot import a dependency ({exc}); install actorsched with its dependencies "
              f"(pip install actorsched, or `make install` in a checkout)", file=sys.stderr)
        return 2
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
