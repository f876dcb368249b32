"""A plugin not written in Python, packaged by ``dockplug build --dockerfile/--image`` on a real
dockerd with no registry: Debian's rclone (Go) with fuse3's fusermount3, in an image made here
with ``docker import`` of the host's binaries and the libraries they load; a Dockerfile FROM it
sets the entrypoint ``rclone serve docker ...``. The plugin is created and enabled, a volume
made with ``-o type=local -o path=...`` and written by a container shows up where rclone put it,
and ``dockplug check`` runs against it. Then the seed's silent failures, explained: a socket the
program never creates (a real failed enable) and FUSE without /dev/fuse (refused at create)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.testing.dockerd import Dockerd

pytestmark = [pytest.mark.dockerd, pytest.mark.timeout(300)]

PROGRAMS = ("/usr/bin/rclone", "/usr/bin/fusermount3")
ENTRYPOINT = ["rclone", "serve", "docker", "--base-dir", "/mnt", "--config", "/data/rclone.conf",
              "--cache-dir", "/data/cache", "-v"]  # fmt: skip


def _libraries(program: str) -> list[str]:
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    return re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x", out)


@pytest.fixture(scope="module")
def rclone_image(dockerd: Dockerd) -> Iterator[str]:
    """A local image holding Debian's rclone and fusermount3 with their loader and libc (no
    shell, no package manager: a plugin image as small as a Go plugin's usually is)."""
    missing = [p for p in PROGRAMS if not os.path.exists(p)]
    if missing or shutil.which("ldd") is None:
        pytest.skip(f"needs {', '.join(missing) or 'ldd'} (apt-get install rclone fuse3)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host (modprobe fuse)")
    ref = f"dpt-rclone:{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="dpt-rclone-") as tmp:
        root = Path(tmp)
        for d in ("usr/bin", "etc", "tmp", "root", "data"):
            (root / d).mkdir(parents=True)
        for program in PROGRAMS:
            shutil.copy2(program, root / program.lstrip("/"))
            for lib in _libraries(program):
                dest = root / lib.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(lib), dest)
        (root / "usr/bin/fusermount").symlink_to("fusermount3")
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        tar = subprocess.Popen(["tar", "-C", tmp, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", ref], stdin=tar.stdout, env=dockerd.env,
                       check=True, capture_output=True)  # fmt: skip
        assert tar.wait() == 0
    yield ref
    dockerd.docker("image", "rm", "-f", ref, check=False)


@pytest.fixture
def env(dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """DOCKER_HOST (and dockerd's log, when it is ours) for the commands under test."""
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    log = dockerd.log_path
    if log is None and dockerd.host.startswith("unix://"):
        log = (
            Path(dockerd.host.removeprefix("unix://")).parent / "dockerd.log"
        )  # scripts/dockerd.sh
    if log is not None and log.exists():
        monkeypatch.setenv("DOCKPLUG_DOCKERD_LOG", str(log))
    return {"DOCKER_HOST": dockerd.host}


def dockplug(*args: str) -> Any:
    res = CliRunner().invoke(cli, list(args))
    print(f"$ dockplug {' '.join(args)}\n{res.output}")
    return res


@pytest.fixture
def cleanup(dockerd: Dockerd, docker_client: Any) -> Iterator[list[str]]:
    """Plugin names to remove at the end, with their volumes and socket folders."""
    names: list[str] = []
    yield names
    for name in names:
        for v in docker_client.volumes.list(filters={"driver": name}):
            v.remove(force=True)
        try:
            pid = docker_client.plugins.get(name).id
        except Exception:
            continue
        dockerd.docker("plugin", "rm", "-f", name, check=False)
        shutil.rmtree(Path("/run/docker/plugins") / pid, ignore_errors=True)


def test_rclone_from_a_dockerfile_enabled_and_used(
    dockerd: Dockerd,
    docker_client: Any,
    env: dict[str, str],
    rclone_image: str,
    busybox_image: str,
    plugin_name: str,
    tmp_path: Path,
    cleanup: list[str],
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {rclone_image}\nENTRYPOINT {json.dumps(ENTRYPOINT)}\n")
    data = Path(tempfile.mkdtemp(prefix="dpt-rdata-"))
    name = f"{plugin_name}:1"
    cleanup.append(name)
    tags_before = {t for i in docker_client.images.list() for t in i.tags}
    try:
        res = dockplug(
            "build", "--dockerfile", str(ctx), "--name", name, "-o", str(tmp_path / "bundle"),
            "--type", "volume", "--socket", "rclone.sock", "--cap", "CAP_SYS_ADMIN",
            "--device", "/dev/fuse", "--mount", f"data={data}:/data", "--propagated-mount",
            "/mnt", "--env", "RCLONE_VERBOSE=0:settable", "--enable",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert re.search(r"enabled \S+; socket ready at /run/docker/plugins/\w{64}/rclone.sock",
                         res.output)  # fmt: skip
        assert "doctor: ok; the program must create /run/docker/plugins/rclone.sock" in res.output
        # the entrypoint is the built image's; the build's tag and the export container are gone
        config = json.loads((tmp_path / "bundle/config.json").read_text())
        assert config["entrypoint"] == ENTRYPOINT
        assert not (tmp_path / "bundle/rootfs/.dockerenv").exists()
        assert {t for i in docker_client.images.list() for t in i.tags} == tags_before
        assert not docker_client.containers.list(all=True, filters={"name": "dockplug-base-"})

        (data / "vol").mkdir()
        vol = f"rv-{uuid.uuid4().hex[:6]}"
        dockerd.docker("volume", "create", "-d", name, "-o", "type=local", "-o",
                       "path=/data/vol", vol)  # fmt: skip
        dockerd.docker("run", "--rm", "-v", f"{vol}:/x", busybox_image,
                       "sh", "-c", "echo written-through-rclone > /x/hello.txt")  # fmt: skip
        assert (data / "vol/hello.txt").read_text() == "written-through-rclone\n"
        dockerd.docker("volume", "rm", vol)

        (data / "chk").mkdir()
        report = tmp_path / "report.json"
        res = dockplug("check", name, "-o", "type=local", "-o", "path=/data/chk",
                       "--report", str(report))  # fmt: skip
        assert f"volume checks on {name}:" in res.output, res.output
        by_id = {r["id"]: r["result"] for r in json.loads(report.read_text())["results"]}
        for check_id in ("V01", "V03", "V04", "V07", "V08", "V11", "V14", "V17"):
            assert by_id[check_id] == "pass", (check_id, by_id)
    finally:
        subprocess.run(["umount", "-R", "-l", str(data)], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_a_socket_the_program_never_creates(
    docker_client: Any, env: dict[str, str], busybox_image: str, plugin_name: str,
    tmp_path: Path, cleanup: list[str],
) -> None:  # fmt: skip
    """The seed's enable that fails with no reason: here the error says which socket was
    expected, where, and shows the program's own output from dockerd's log when found."""
    name = f"{plugin_name}:1"
    cleanup.append(name)
    loop = "trap 'exit 0' TERM; echo listening nowhere; while :; do sleep 1; done"
    entry = json.dumps(["sh", "-c", loop])
    res = dockplug(
        "build", "--image", busybox_image, "--name", name, "-o", str(tmp_path / "b"),
        "--type", "volume", "--socket", "never.sock", "--entrypoint", entry,
        "--enable",
    )  # fmt: skip
    assert res.exit_code != 0
    pid = docker_client.plugins.get(name).id
    line = next(ln for ln in res.output.splitlines() if "[socket-never-created]" in ln)
    assert line.startswith("error: [socket-never-created]")
    assert (
        f"expected /run/docker/plugins/never.sock inside the plugin, which is "
        f"/run/docker/plugins/{pid}/never.sock on the host"
    ) in line
    assert "fix: make the program listen on /run/docker/plugins/never.sock" in line
    if os.environ.get("DOCKPLUG_DOCKERD_LOG"):
        assert "listening nowhere" in res.output
    assert not docker_client.plugins.get(name).enabled  # created, left disabled


def test_fuse_without_dev_fuse_is_refused_at_create(
    docker_client: Any, env: dict[str, str], rclone_image: str, plugin_name: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A hand-written config.json, as in the seed, that forgets /dev/fuse: the doctor says so
    in one line and nothing is created."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "description": "rclone", "entrypoint": ENTRYPOINT, "propagatedMount": "/mnt",
        "interface": {"types": ["docker.volumedriver/1.0"], "socket": "rclone.sock"},
        "linux": {"capabilities": ["CAP_SYS_ADMIN"]},
    }))  # fmt: skip
    name = f"{plugin_name}:1"
    res = dockplug("build", "--image", rclone_image, "--config", str(cfg), "--name", name,
                   "-o", str(tmp_path / "b"), "--create")  # fmt: skip
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: [fuse-device]")]
    assert len(lines) == 1, res.output
    assert "rclone (FUSE mounts of its volumes) needs the device /dev/fuse" in lines[0]
    assert 'fix: add {"name": "fuse", "path": "/dev/fuse"} to linux.devices' in lines[0]
    assert name not in [p.name for p in docker_client.plugins.list()]
