"""How long a run will take, said once at its start: a run of days on a CPU says so in its
log, not only on a progress bar nobody reads."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Eta:
    """Times the first updates of a run (not the very first, which compiles and warms up) and
    logs one line: `about 4 h 10 min for 49,979 updates at 0.30 s/update`."""

    def __init__(self, total: int, updates: int = 20, seconds: float = 30.0):
        self.total, self.updates, self.seconds = total, updates, seconds
        self.since, self.timed, self.said = 0.0, 0, False

    def after(self, update: int) -> None:
        """Called after each update; logs once `updates` updates or `seconds` later."""
        now = time.perf_counter()
        if self.said or not self.since:
            self.since = self.since or now
            return
        self.timed += 1
        if self.timed >= self.updates or now - self.since >= self.seconds:
            per, left = (now - self.since) / self.timed, self.total - update
            log.info("about %s for %s updates at %.2f s/update", duration(per * left),
                     f"{left:,}", per)  # fmt: skip
            self.said = True


def duration(seconds: float) -> str:
    """`3 h 05 min`, `12 min`, `40 s`."""
    if seconds < 59.5:
        return f"{round(seconds)} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
