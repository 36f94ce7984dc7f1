"""The one line a run logs at its start about how long it will take."""

from __future__ import annotations

import logging
import re
import time

import psutil
import pytest

from idistill.engine import eta as eta_module
from idistill.engine.eta import Eta, duration


@pytest.fixture
def clock(monkeypatch):
    """A perf_counter that advances only when told: clock[0] = seconds."""
    now = [100.0]
    monkeypatch.setattr(eta_module.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(eta_module, "_startup_said", True)  # (its own test below)
    return now


def _run(eta, clock, updates, per_update, first=0):
    for update in range(first + 1, first + updates + 1):
        clock[0] += 60.0 if update == first + 1 else per_update  # the first: compile, warm-up
        eta.after(update)


def test_the_time_left_is_logged_once_after_twenty_timed_updates(clock, caplog):
    caplog.set_level(logging.INFO, logger="idistill.engine.eta")
    _run(Eta(50_000), clock, 20, 0.3)
    assert caplog.messages == []  # 19 timed: the first update is not
    _run(Eta(50_000), clock, 21, 0.3)
    _run(Eta(50_000), clock, 200, 0.3)
    assert caplog.messages[0] == "about 4 h 10 min for 49,979 updates at 0.30 s/update"
    assert len(caplog.messages) == 2  # one line per run


def test_slow_updates_are_timed_for_thirty_seconds_at_most(clock, caplog):
    caplog.set_level(logging.INFO, logger="idistill.engine.eta")
    _run(Eta(50_000), clock, 4, 10.0, first=1000)  # resumed at update 1000: 3 timed, 30 s
    assert caplog.messages == ["about 136 h 06 min for 48,996 updates at 10.00 s/update"]


def test_durations_read_as_hours_minutes_or_seconds():
    assert [duration(s) for s in (40, 720, 11_100, 90_000)] == [
        "40 s",
        "12 min",
        "3 h 05 min",
        "25 h 00 min",
    ]


def test_the_first_run_of_a_process_says_how_long_its_start_up_took(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="idistill.engine.eta")
    monkeypatch.setattr(eta_module, "_startup_said", False)
    for run in (Eta(100), Eta(100)):  # a sweep's second job does not say it again
        run.after(1)
        run.after(2)
    (line,) = caplog.messages
    match = re.fullmatch(r"first update done ([0-9.]+) s after the process started .*", line)
    assert match and 0 < float(match[1]) < time.time() - psutil.Process().create_time() + 1
