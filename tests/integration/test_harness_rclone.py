"""``dockplug check`` against a third-party plugin: rclone's ``serve docker`` (Go).

rclone needs no dockerd, but it FUSE-mounts a volume on Mount, which needs root and /dev/fuse.
The run must complete with a report; the findings are printed (``pytest -s``) for the issue.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockplug.conformance import Result, run
from dockplug.testing.servers import SubprocessPlugin

RCLONE = shutil.which("rclone")

pytestmark = [
    pytest.mark.skipif(RCLONE is None, reason="rclone is not installed (apt install rclone)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rclone mounts volumes with FUSE: needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]


@pytest.fixture
def rclone(short_tmp: Path) -> Iterator[tuple[Path, Path]]:
    """``rclone serve docker`` on a temporary socket; yields (socket, data folder)."""
    assert RCLONE is not None
    (short_tmp / "rclone.conf").touch()
    data = short_tmp / "rdata"
    data.mkdir()
    sock = short_tmp / "rclone.sock"
    args = [
        "serve", "docker", "--base-dir", str(short_tmp / "rvols"), "--socket-addr", str(sock),
        "--config", str(short_tmp / "rclone.conf"), "--cache-dir", str(short_tmp / "cache"),
    ]  # fmt: skip
    with SubprocessPlugin(args, wait_for=sock, cmd=[RCLONE]) as proc:
        yield sock, data
        assert proc.proc is not None and proc.proc.poll() is None, proc.output


def test_harness_reports_on_rclone(rclone: tuple[Path, Path], tmp_path: Path) -> None:
    sock, data = rclone
    report = run(str(sock), "volume", opts={"type": "local", "path": str(data)}, timeout=30)
    out = tmp_path / "rclone-report.json"
    report.write(out)

    print(f"\n{report.summary()} ({report.calls} calls)")
    for r in report.results:
        if r.result is not Result.PASS:
            print(f"  {r.id} {r.result.value.upper()} {r.title}: {r.evidence}")

    saved = json.loads(out.read_text())
    ids = [r["id"] for r in saved["results"]]
    tail = ["R01", "R02", "R03", "R04", "P01", "P02", "P03", "P04"]
    assert ids == [f"V{i:02d}" for i in range(1, 19)] + tail
    by_id = report.by_id()
    # what any working volume plugin gets right, rclone included
    for check_id in ("V01", "V03", "V04", "V07", "V08", "V11", "V14", "V17"):
        assert by_id[check_id].result is Result.PASS, (check_id, by_id[check_id].evidence)
    # and it survives the whole run, bad input included
    assert by_id["R04"].result is not Result.FAIL, by_id["R04"].evidence
