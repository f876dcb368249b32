"""Watchdogs that turn a hang into a failure with every thread's stack.

pytest-timeout's signal method fails a test only when the main thread gets back to Python;
and after the last test the interpreter joins every non-daemon thread (executor workers
included), so one thread stuck for ever kept a finished run alive until CI's 90 minutes were
up. faulthandler's timer runs in C: it dumps all stacks and exits, whatever the threads do.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator

import pytest

# Beyond pytest-timeout's own limit (300 s in pyproject.toml), so that one fires first.
GRACE_PER_TEST = 180
GRACE_AT_EXIT = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    seconds = _timeout(item) + GRACE_PER_TEST
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _timeout(item: pytest.Item) -> float:
    """The limit pytest-timeout applies to ITEM: its own marker's, else the ini file's."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if value:
            return float(value)
    return float(item.config.getini("timeout") or 300)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    sys.stderr.flush()
    faulthandler.dump_traceback_later(GRACE_AT_EXIT, exit=True, file=sys.stderr)
