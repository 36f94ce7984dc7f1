"""How long a run will take, said once at its start: a run of days on a CPU says so in its
log, not only on a progress bar nobody reads."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


_startup_said = False  # the first run of a process says how long start-up took (a sweep's later
# jobs start in a process that has been running them)


def _startup() -> None:
    global _startup_said
    if _startup_said:
        return
    _startup_said = True
    import psutil

    seconds = time.time() - psutil.Process().create_time()
    log.info("first update done %.1f s after the process started (imports, data, model, "
             "compilation, the update)", seconds)  # fmt: skip


class Eta:
    """Times the first updates of a run (not the very first, which compiles and warms up) and
    logs one line: `about 4 h 10 min for 49,979 updates at 0.30 s/update`. The first run of a
    process also logs how long after the process started its first update was done."""

    def __init__(self, total: int, updates: int = 20, seconds: float = 30.0):
        self.total, self.updates, self.seconds = total, updates, seconds
        self.since, self.timed, self.said = 0.0, 0, False

    def after(self, update: int) -> None:
        """Called after each update; logs once `updates` updates or `seconds` later."""
        now = time.perf_counter()
        if self.said or not self.since:
            if not self.since:
                _startup()
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
