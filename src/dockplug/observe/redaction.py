"""Redaction of secrets from everything a plugin prints or replies.

dockerd forwards a managed plugin's stdout into its own log, where many people can read it, so
a password must never reach a line: drivers register secret values with :func:`add_secret`,
and option names that hold secrets are masked wherever bodies are shown. Drivers, state stores
and the server all import this module; it imports nothing of dockplug.
"""

from __future__ import annotations

import re
import threading
from typing import Any

SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|private|credential|key$|^key", re.I)
MASK = "********"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str) -> None:
    """Never print ``value``: every log line and error reply replaces it with a mask."""
    if value and len(value) >= 3:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not _secrets:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_body(value: Any) -> Any:
    """A JSON value with the values of secret-looking keys masked, recursively."""
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and SECRET_KEY.search(k) and v else redact_body(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_body(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value
