"""A managed plugin's own output, as dockerd logs it: each line the plugin writes becomes a log
line of dockerd's tagged ``plugin=<id>`` (stdout at level=info, stderr at level=error), so that
is where to read why a plugin exited. Read from a file, or from the journal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

LOG_ENV = "DOCKPLUG_DOCKERD_LOG"
LOG_LINES = 20
JOURNAL_CMD = ("journalctl", "-u", "docker", "--no-pager", "-n", "200")
LOG_HINT = (
    "dockerd's log (journalctl -u docker, /var/log/docker.log, or where dockerd's stderr goes)"
)


def plugin_log_lines(
    plugin_id: str, log_path: str | Path | None = None, lines: int = LOG_LINES
) -> tuple[list[str] | None, str]:
    """The last LINES lines dockerd logged with ``plugin=<PLUGIN_ID>`` (a managed plugin's
    stdout at info level, its stderr at error level) and where they came from: LOG_PATH, else
    $DOCKPLUG_DOCKERD_LOG, else ``journalctl -u docker``. (None, hint) if no log was found."""
    pattern = re.compile(rf"\bplugin={re.escape(plugin_id)}\b")
    path = log_path or os.environ.get(LOG_ENV)
    text: str | None = None
    source = ""
    if path:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 4 * 1024 * 1024))  # the tail is enough
                text = f.read().decode(errors="replace")
            source = str(path)
        except OSError as exc:
            return None, f"cannot read {path} ({exc.strerror}); look in {LOG_HINT}"
    elif shutil.which(JOURNAL_CMD[0]):
        try:
            res = subprocess.run(JOURNAL_CMD, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            res = None
        body = [] if res is None else [ln for ln in res.stdout.splitlines() if ln.strip()]
        if res is not None and res.returncode == 0 and body and body != ["-- No entries --"]:
            text = res.stdout
            source = " ".join(JOURNAL_CMD)
    if text is None:
        return None, f"no dockerd log found (set {LOG_ENV}); look in {LOG_HINT}"
    found = [ln.strip() for ln in text.splitlines() if pattern.search(ln)]
    return found[-lines:] if lines > 0 else [], source
