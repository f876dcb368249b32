"""What a plugin tells its operators: its log lines (``events``), with secrets masked
(``redaction``). Imported by drivers, state stores and the server alike."""

from dockplug.observe.events import log_event
from dockplug.observe.redaction import MASK, add_secret, redact, redact_body

__all__ = ["MASK", "add_secret", "log_event", "redact", "redact_body"]
