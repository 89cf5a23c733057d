"""What happens when one of our own actors fails: the whole coordinator stops, loudly.

A pykka actor whose ``on_receive`` raises is stopped by pykka while the others run
on, which would leave a coordinator that accepts connections but never answers.  Our
own bugs must be loud instead: every actor (and the transport and journal threads)
reports an unexpected exception here, the coordinator process exits with status 1, and
whoever supervises it restarts it; the journal makes that restart lose nothing.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self.failed = threading.Event()
        self.reason = ""

    def fatal(self, where: str, error: BaseException | None) -> None:
        if not self.failed.is_set():
            self.reason = f"{where}: {type(error).__name__}: {error}" if error is not None else where
            log.critical("coordinator failing: %s", self.reason)
        self.failed.set()


class SupervisedActor:
    """Mixin for pykka actors: an unhandled exception fails the coordinator."""

    supervisor: Supervisor | None = None

    def on_failure(self, exception_type: type[BaseException] | None, exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        if self.supervisor is not None:
            self.supervisor.fatal(type(self).__name__, exception_value)
