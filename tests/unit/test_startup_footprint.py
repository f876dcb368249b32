"""What a plugin process has loaded when it first answers dockerd (issue 16).

``dockplug serve local`` answers ``Plugin.Activate`` before pydantic (~60 ms of imports, ~11
MiB) is loaded; the first call that parses a body loads it, and answers exactly as before.
Read from the serving process itself: its ``/proc/PID/maps`` shows which shared objects it has
mapped, so a module imported anywhere on the path (not only in ``dockplug``) counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dockplug.client import PluginClient
from dockplug.testing.servers import SubprocessPlugin


def _mapped(pid: int, needle: str) -> bool:
    return needle in Path(f"/proc/{pid}/maps").read_text()


def test_serve_local_answers_activate_without_pydantic_and_loads_it_on_first_use(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "fp.sock"
    plugin = SubprocessPlugin(
        [
            "serve", "local", "--name", "dockplug-footprint", "--socket", str(sock),
            "--base-dir", str(tmp_path / "vols"), "--state-dir", str(tmp_path / "state"),
            "--announce", "none", "--spec-dir", str(tmp_path / "spec"),
        ],
        wait_for=sock,
    ).start()  # fmt: skip
    try:
        assert plugin.proc is not None
        pid = plugin.proc.pid
        with PluginClient(str(sock), timeout=10) as client:
            assert client.call("Plugin.Activate").json == {"Implements": ["VolumeDriver"]}
            assert not _mapped(pid, "_pydantic_core"), "pydantic loaded before any call"
            assert _mapped(pid, "uvloop")  # the check reads the real process's maps
            missing = client.call("VolumeDriver.Get", {"Nam": "v"})
            assert missing.status == 400
            assert (
                missing.error == "invalid VolumeDriver.Get request: missing required field 'Name'"
            )
            assert _mapped(pid, "_pydantic_core")
            assert client.call("VolumeDriver.Create", {"Name": "v", "Opts": None}).error is None
            got = client.call("VolumeDriver.Get", {"Name": "v"}).json
            assert got["Volume"]["Name"] == "v"
            assert got["Volume"]["Mountpoint"] == str(tmp_path / "vols" / "v")
            assert client.call("VolumeDriver.Capabilities", {}).json == {
                "Capabilities": {"Scope": "local"}
            }
    finally:
        plugin.stop()


def test_importing_the_serve_path_loads_no_wire_model() -> None:
    """Every module ``dockplug serve local`` imports before it listens, in a fresh interpreter:
    none of them may define a wire model at import (that is what loads pydantic)."""
    code = (
        "import sys\n"
        "import dockplug.cli.main, dockplug.cli.serve, dockplug.protocol.volume\n"
        "from dockplug.drivers.registry import BUILTINS\n"
        "BUILTINS['local'].load()\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('pydantic', 'dockplug.state.kv')))\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""
