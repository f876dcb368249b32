"""The conformance harness behind ``dockplug check``: dockerd's role, played against a plugin.

``run(target, kind="volume", opts={...})`` returns a :class:`Report`; ``kind`` is one of
``KINDS`` (volume, network, ipam, authz, log). See ``checks.py`` for what a check is and the
context it runs in, then one module per kind (``volume.py`` + ``robustness.py``, ``network.py``,
``ipam.py``, ``authz.py``, ``log.py``); ``report.py`` is the report, as JSON or an HTML page.
"""

from dockplug.conformance.checks import Result
from dockplug.conformance.report import CheckResult, Report
from dockplug.conformance.runner import KINDS, run

__all__ = ["KINDS", "CheckResult", "Report", "Result", "run"]
