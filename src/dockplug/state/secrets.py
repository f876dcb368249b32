"""Named secrets (passwords) kept out of volume records: one JSON file, mode 0600, in a 0700
folder, replaced atomically (write, fsync, rename, fsync the folder) on every change.

Volume options refer to a secret by name (``-o secret=NAME``); the value is read when it is
needed and registered with :func:`~dockplug.observe.add_secret`, so no log line or error
reply can show it. The file is read again on every access: ``dockplug secret set`` works while
a plugin runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path

from dockplug.errors import ConfigError
from dockplug.observe import add_secret
from dockplug.state.durable import atomic_write

FILE_NAME = "secrets.json"
# names users give; drivers keep their own entries under a "kind/" prefix no user name can take
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_secret_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid secret name {name[:80]!r}: use up to 128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


class SecretStore:
    """``set``/``get``/``delete``/``names`` on a 0600 JSON file; thread-safe within a process."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{self.path}: not a valid secrets file ({exc})") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ConfigError(f"{self.path}: not a valid secrets file (expected name: value)")
        return data

    def _write(self, data: dict[str, str]) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True), mode=0o600)

    def get(self, name: str) -> str | None:
        with self._lock:
            value = self._read().get(name)
        if value is not None:
            add_secret(value)
        return value

    def set(self, name: str, value: str) -> None:
        if not name:
            raise ConfigError("a secret needs a name")
        add_secret(value)
        with self._lock:
            data = self._read()
            data[name] = value
            self._write(data)

    def delete(self, name: str) -> bool:
        """Removes ``name``; returns whether it existed."""
        with self._lock:
            data = self._read()
            if name not in data:
                return False
            del data[name]
            self._write(data)
        return True

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._read())

    def __contains__(self, name: object) -> bool:
        with self._lock, contextlib.suppress(ConfigError):
            return name in self._read()
        return False
