"""``python -m actorsched``: the command-line client, the same as the installed ``actorsched`` command."""

import sys

from actorsched.cli import main

if __name__ == "__main__":
    sys.exit(main())
