from dataclasses import dataclass

from dockplug.testing.harness.checks import Check, Context

CHECKS: list[Check] = []


@dataclass
class LogContext(Context):
    pass
