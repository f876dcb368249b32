"""Volume names are file names on the host, so they are checked before anything touches a disk."""

from __future__ import annotations

import re

from dockplug.errors import InvalidRequest
from dockplug.facts import NAME_MAX

# Docker's own rule for local volume names, plus a length limit that fits a file name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name: str) -> str:
    """Returns ``name`` if it is a plain volume name; raises naming the rule otherwise."""
    if not name:
        raise InvalidRequest("volume name is empty")
    if len(name.encode()) > NAME_MAX:
        raise InvalidRequest(f"volume name is longer than {NAME_MAX} bytes")
    if not _NAME.fullmatch(name):
        shown = name.encode("unicode_escape").decode()[:80]
        raise InvalidRequest(
            f"invalid volume name {shown!r}: use letters, digits, '_', '.', '-', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name
