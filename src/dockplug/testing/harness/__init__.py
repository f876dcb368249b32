"""The conformance harness behind ``dockplug check``: dockerd's role, played against a plugin.

``run(target, kind="volume", opts={...})`` returns a :class:`Report`; see ``checks.py`` for what
a check is, ``volume.py`` and ``robustness.py`` for the volume checks.
"""

from dockplug.testing.harness.checks import Result
from dockplug.testing.harness.runner import KINDS, CheckResult, Report, run

__all__ = ["KINDS", "CheckResult", "Report", "Result", "run"]
