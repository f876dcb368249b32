"""``dockplug doctor`` on deliberately broken bundles: each breakage yields its own finding."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.packaging import dockerd_log, doctor, libraries
from dockplug.packaging.config import config_for_driver
from dockplug.packaging.doctor import diagnose_bundle
from dockplug.packaging.elf import HOST_MACHINES, read_dynamic, read_elf
from dockplug.packaging.rootpaths import resolve_in_root

HOST = os.uname().machine
HOST_EM = min(HOST_MACHINES.get(HOST, {62}))
OTHER_EM = 183 if HOST_EM != 183 else 62  # aarch64 on x86_64 hosts, x86_64 elsewhere


def elf(machine: int, interp: str | None = None) -> bytes:
    """A minimal 64-bit little-endian ELF executable header, with PT_INTERP if interp is set."""
    phnum = 1 if interp else 0
    head = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, machine, 1, 0x400000, 64, 0, 0, 64, 56, phnum,
        0, 0, 0,
    )  # fmt: skip
    if not interp:
        return head
    data = interp.encode() + b"\0"
    ph = struct.pack("<IIQQQQQQ", 3, 4, 64 + 56, 0, 0, len(data), len(data), 1)
    return head + ph + data


def make_bundle(root: Path, entry: str = "/bin/plugin", content: bytes | None = None,
                mode: int = 0o755, **cfg: object) -> Path:  # fmt: skip
    """A bundle whose config is the local driver's, with entrypoint ENTRY holding CONTENT."""
    config = json.loads(config_for_driver("local").to_json())
    config["entrypoint"] = [entry, "serve"]
    config.update(cfg)
    (root / "rootfs/run/docker/plugins").mkdir(parents=True)
    (root / "rootfs/bin").mkdir(parents=True)
    if content is not None:
        path = root / "rootfs" / entry.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    (root / "config.json").write_text(json.dumps(config))
    return root


LOOP = "/dev/loop-control"


def _linux(caps: list[str], devices: list[str], all_devices: bool = True) -> dict[str, object]:
    return {
        "capabilities": caps,
        "allowAllDevices": all_devices,
        "devices": [{"name": Path(d).name, "path": d} for d in devices],
    }


def _state_only() -> list[object]:
    """The local driver's mounts without the host's /dev (a bundle built before -o size= was
    fixed for managed plugins)."""
    mounts = json.loads(config_for_driver("local").to_json())["mounts"]
    return [m for m in mounts if m["destination"] != "/dev"]


def _iface(socket: str) -> dict[str, object]:
    return {"types": ["docker.volumedriver/1.0"], "socket": socket}


def _with_env(root: Path) -> Path:
    (root / "rootfs/usr/bin").mkdir(parents=True)
    (root / "rootfs/usr/bin/env").write_bytes(elf(HOST_EM))
    (root / "rootfs/usr/bin/env").chmod(0o755)
    return root


def _with_sh(root: Path) -> Path:
    (root / "rootfs/bin/sh").write_bytes(elf(HOST_EM))
    (root / "rootfs/bin/sh").chmod(0o755)
    return root


LS = "/bin/ls"  # a real dynamically linked program of this host


def host_libs(binary: str = LS) -> list[str]:
    """The host paths of BINARY's libraries and loader, as the host's loader resolves them."""
    pytest.importorskip("elftools")
    if shutil.which("ldd") is None:
        pytest.skip("no ldd on this host")
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    paths = re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x", out)
    if not paths:
        pytest.skip(f"{binary} is not dynamically linked here")
    return paths


def with_ls(root: Path, entry: str = "/bin/plugin", skip: tuple[str, ...] = ()) -> Path:
    """A bundle whose entrypoint is the host's /bin/ls, with its loader and all its libraries
    except those named in SKIP copied into the rootfs at the paths the host uses."""
    libs = host_libs()
    bundle = make_bundle(root, entry, Path(LS).read_bytes())
    for lib in libs:
        if Path(lib).name in skip:
            continue
        dest = bundle / "rootfs" / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    return bundle


def loader_only(root: Path) -> Path:
    """/bin/ls with its loader (PT_INTERP) but none of its libraries."""
    libs = host_libs()
    return with_ls(root, skip=tuple(Path(lib).name for lib in libs if "ld-" not in lib))


CASES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "missing entrypoint": (lambda d: make_bundle(d), "entrypoint-missing", "does not exist"),
    "not executable": (
        lambda d: make_bundle(d, content=elf(HOST_EM), mode=0o644),
        "entrypoint-not-executable",
        "chmod +x",
    ),
    "wrong-arch ELF": (lambda d: make_bundle(d, content=elf(OTHER_EM)), "elf-arch", HOST),
    "ELF interpreter missing": (
        lambda d: make_bundle(d, content=elf(HOST_EM, "/lib/ld-missing.so.2")),
        "elf-interpreter-missing",
        "/lib/ld-missing.so.2",
    ),
    "shebang interpreter missing": (
        lambda d: make_bundle(d, content=b"#!/usr/bin/python3\nprint()\n"),
        "shebang-missing",
        "/usr/bin/python3",
    ),
    "env shebang, program missing": (
        lambda d: _with_env(make_bundle(d, content=b"#!/usr/bin/env python3\n")),
        "shebang-missing",
        "python3",
    ),
    "absolute socket path": (
        lambda d: make_bundle(d, content=elf(HOST_EM), interface=_iface("/run/p.sock")),
        "socket-absolute",
        "file name",
    ),
    "socket name too long": (
        lambda d: make_bundle(d, content=elf(HOST_EM), interface=_iface("a" * 30 + ".sock")),
        "socket-too-long",
        "107",
    ),
    "sshfs without /dev/fuse": (
        lambda d: make_bundle(
            d,
            content=elf(HOST_EM),
            args={"name": "args", "value": ["serve", "sshfs"]},
            mounts=_state_only(),
        ),
        "fuse-device",
        "/dev/fuse",
    ),
    "ELF library missing": (
        lambda d: with_ls(d, skip=("libc.so.6",)),
        "library-missing",
        "libc.so.6",
    ),
    "mounting driver without CAP_SYS_ADMIN": (
        lambda d: make_bundle(d, content=elf(HOST_EM), linux=_linux([], [LOOP])),
        "capability-missing",
        'add "CAP_SYS_ADMIN" to linux.capabilities',
    ),
    "local driver given /dev/loop-control but no /dev/loopN": (
        lambda d: make_bundle(d, content=elf(HOST_EM), mounts=_state_only()),
        "runtime-devices",
        '"destination": "/dev"',
    ),
    "local driver with the host's /dev but no allowAllDevices": (
        lambda d: make_bundle(
            d, content=elf(HOST_EM), linux=_linux(["CAP_SYS_ADMIN"], [LOOP], False)
        ),
        "runtime-devices",
        "set linux.allowAllDevices to true",
    ),
    "device absent from the host": (
        lambda d: make_bundle(
            d, content=elf(HOST_EM), linux=_linux(["CAP_SYS_ADMIN"], [LOOP, "/dev/dpt-none"])
        ),
        "host-device-missing",
        "this host has no /dev/dpt-none",
    ),
    "misspelled key": (
        lambda d: make_bundle(d, content=elf(HOST_EM), propagatedMounts="/mnt"),
        "config",
        "propagatedMounts",
    ),
}


if Path("/dev/fuse").exists():  # else the host check adds its own finding
    CASES["sshfs without CAP_SYS_ADMIN"] = (
        lambda d: make_bundle(
            d,
            content=elf(HOST_EM),
            args={"name": "args", "value": ["serve", "sshfs"]},
            linux=_linux([], ["/dev/fuse"]),
        ),
        "capability-missing",
        "the dockplug sshfs driver needs CAP_SYS_ADMIN",
    )


@pytest.mark.parametrize("case", list(CASES))
def test_broken_bundle_yields_the_right_finding(tmp_path: Path, case: str) -> None:
    make, check, words = CASES[case]
    bundle = make(tmp_path)
    findings = diagnose_bundle(bundle)
    assert [f.check for f in findings] == [check], findings
    line = str(findings[0])
    assert words in line and "fix: " in line and "\n" not in line


def test_local_driver_without_loop_devices(tmp_path: Path) -> None:
    """Neither /dev/loop-control nor the host's /dev: both the node it needs at enable and the
    ones it needs later are named."""
    b = make_bundle(
        tmp_path, content=elf(HOST_EM), linux=_linux(["CAP_SYS_ADMIN"], []), mounts=_state_only()
    )
    findings = diagnose_bundle(b)
    assert [f.check for f in findings] == ["device-missing", "runtime-devices"], findings
    assert '"path": "/dev/loop-control"' in str(findings[0])
    assert "/dev/loopN" in findings[1].message


def test_allow_all_devices_alone_makes_no_node(tmp_path: Path) -> None:
    """allowAllDevices opens the device cgroup but runc still makes only linux.devices in the
    plugin's /dev: a FUSE driver with it and without /dev/fuse is still broken."""
    b = make_bundle(
        tmp_path,
        content=elf(HOST_EM),
        args={"name": "args", "value": ["serve", "sshfs"]},
        mounts=_state_only(),
        linux=_linux(["CAP_SYS_ADMIN"], []),
    )
    assert [f.check for f in diagnose_bundle(b)] == ["fuse-device"]


def test_good_bundles_have_no_findings(tmp_path: Path) -> None:
    assert diagnose_bundle(make_bundle(tmp_path / "elf", content=elf(HOST_EM))) == []
    script = _with_sh(make_bundle(tmp_path / "sh", content=b"#!/bin/sh\nexec true\n"))
    assert diagnose_bundle(script) == []
    # relative entrypoint found on PATH; ELF loader reached through an absolute symlink
    b = make_bundle(tmp_path / "rel", "/usr/bin/plugin", elf(HOST_EM, "/lib64/ld.so"))
    (b / "rootfs/usr/lib64").mkdir(parents=True)
    (b / "rootfs/usr/lib64/ld-real.so").write_bytes(elf(HOST_EM))
    (b / "rootfs/lib64").symlink_to("/usr/lib64")
    (b / "rootfs/usr/lib64/ld.so").symlink_to("ld-real.so")
    cfg = json.loads((b / "config.json").read_text())
    cfg["entrypoint"] = ["plugin"]
    (b / "config.json").write_text(json.dumps(cfg))
    assert diagnose_bundle(b) == []


def test_missing_rootfs_and_config(tmp_path: Path) -> None:
    assert [f.check for f in diagnose_bundle(tmp_path)] == ["config"]
    b = make_bundle(tmp_path / "b")
    (b / "rootfs/run/docker/plugins").rmdir()
    os.rename(b / "rootfs", b / "elsewhere")
    assert [f.check for f in diagnose_bundle(b)] == ["rootfs-missing"]


def test_resolve_in_root_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/link").symlink_to("/../../etc/target")
    (tmp_path / "etc/target").write_text("x")
    assert resolve_in_root(tmp_path, "/etc/link") == tmp_path / "etc/target"
    assert resolve_in_root(tmp_path, "/nope") is None


def test_read_elf(tmp_path: Path) -> None:
    p = tmp_path / "e"
    p.write_bytes(elf(OTHER_EM, "/lib/ld.so"))
    info = read_elf(p)
    assert info is not None and info.machine == OTHER_EM and info.interpreter == "/lib/ld.so"
    p.write_bytes(b"#!/bin/sh\n")
    assert read_elf(p) is None


def test_cli_doctor_bundle(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = make_bundle(tmp_path / "bad", content=elf(OTHER_EM))
    res = runner.invoke(cli, ["doctor", str(bad)])
    assert res.exit_code == 1 and "[elf-arch]" in res.output and "fix:" in res.output
    good = make_bundle(tmp_path / "good", content=elf(HOST_EM))
    res = runner.invoke(cli, ["doctor", str(good)])
    assert res.exit_code == 0 and res.output.strip().endswith(": ok")


def test_create_refuses_a_broken_bundle_before_calling_dockerd(tmp_path: Path) -> None:
    from dockplug.packaging import engine, verbs

    bundle = make_bundle(tmp_path, content=elf(OTHER_EM))
    with pytest.raises(engine.EngineError, match=r"not a usable plugin bundle:\n.*\[elf-arch\]"):
        verbs.create("dpt-broken", bundle, client=object())


# -- shared libraries ------------------------------------------------------------------------


def test_one_finding_per_missing_library(tmp_path: Path) -> None:
    bundle = loader_only(tmp_path)
    info = read_dynamic(Path(LS))
    assert info is not None and info.needed
    findings = diagnose_bundle(bundle)
    assert [f.check for f in findings] == ["library-missing"] * len(info.needed), findings
    for f, name in zip(findings, info.needed, strict=True):
        line = str(f)
        assert name in line and "/bin/plugin" in line and "\n" not in line
        assert f"fix: install the package that provides {name} into the rootfs" in line


def test_libraries_found_in_the_rootfs(tmp_path: Path) -> None:
    assert diagnose_bundle(with_ls(tmp_path / "std")) == []
    # found through the rootfs's ld.so.conf (include of ld.so.conf.d/*.conf)
    b = loader_only(tmp_path / "conf")
    (b / "rootfs/opt/libs").mkdir(parents=True)
    for lib in host_libs():
        if "ld-" not in lib:
            shutil.copy2(os.path.realpath(lib), b / "rootfs/opt/libs" / Path(lib).name)
    (b / "rootfs/etc/ld.so.conf.d").mkdir(parents=True)
    (b / "rootfs/etc/ld.so.conf").write_text("# comment\ninclude ld.so.conf.d/*.conf\n")
    (b / "rootfs/etc/ld.so.conf.d/opt.conf").write_text("/opt/libs\n")
    if os.geteuid() == 0:  # the real loader reads ld.so.cache, which ldconfig makes from these
        subprocess.run(["ldconfig", "-r", str(b / "rootfs")], check=True)
    assert diagnose_bundle(b) == []
    # ... and through LD_LIBRARY_PATH in config.json's env
    (b / "rootfs/etc/ld.so.conf").unlink()
    assert {f.check for f in diagnose_bundle(b)} == {"library-missing"}
    cfg = json.loads((b / "config.json").read_text())
    cfg["env"] = [{"name": "LD_LIBRARY_PATH", "value": "/opt/libs"}]
    (b / "config.json").write_text(json.dumps(cfg))
    assert diagnose_bundle(b) == []


def test_script_interpreter_libraries(tmp_path: Path) -> None:
    b = loader_only(tmp_path)
    os.rename(b / "rootfs/bin/plugin", b / "rootfs/bin/sh")
    (b / "rootfs/bin/plugin").write_bytes(b"#!/bin/sh\nexec true\n")
    (b / "rootfs/bin/plugin").chmod(0o755)
    findings = diagnose_bundle(b)
    assert findings and {f.check for f in findings} == {"library-missing"}
    assert "interpreter /bin/sh of /bin/plugin" in str(findings[0])


def test_library_check_skipped_without_pyelftools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = loader_only(tmp_path)
    monkeypatch.setitem(sys.modules, "elftools.elf.elffile", None)
    findings = diagnose_bundle(bundle)
    assert [(f.check, f.level) for f in findings[:1]] == [("libraries-skipped", "info")]
    assert "pip install dockplug[packaging]" in str(findings[0])
    # as root the rootfs's own loader still answers, for the libraries it loads first
    rest = {f.check for f in findings[1:]}
    assert rest == ({"library-not-found"} if os.geteuid() == 0 else set()), findings


def test_the_rootfs_loader_as_a_second_opinion(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("running the rootfs's loader in a chroot needs root")
    bundle = loader_only(tmp_path / "lo")
    interp = read_elf(Path(LS))
    assert interp is not None and interp.interpreter
    needed = read_dynamic(Path(LS))
    assert needed is not None
    missing = libraries.loader_missing(bundle / "rootfs", "/bin/plugin", interp.interpreter)
    assert missing is not None and set(needed.needed) <= set(missing)
    assert libraries.loader_missing(with_ls(tmp_path / "ok") / "rootfs", "/bin/plugin",
                                 interp.interpreter) == []  # fmt: skip
    # a library pyelftools finds through ld.so.conf, but the loader would not: no ld.so.cache
    b = loader_only(tmp_path / "conf")
    (b / "rootfs/opt/libs").mkdir(parents=True)
    for lib in host_libs():
        if "ld-" not in lib:
            shutil.copy2(os.path.realpath(lib), b / "rootfs/opt/libs" / Path(lib).name)
    (b / "rootfs/etc").mkdir(parents=True)
    (b / "rootfs/etc/ld.so.conf").write_text("/opt/libs\n")
    findings = diagnose_bundle(b)
    assert findings and {f.check for f in findings} == {"library-not-found"}, findings
    line = str(findings[0])
    assert "(run in a chroot, as ldd does) reports " in line and "=> not found" in line
    assert "fix: install the package that provides" in line and "\n" not in line


# -- dockerd's log ---------------------------------------------------------------------------

PID = "a" * 64
OTHER = "b" * 64
LOG = f"""time="t1" level=info msg="starting" plugin={PID}
time="t2" level=info msg="unrelated daemon line"
time="t3" level=error msg="listen failed" plugin={OTHER}
time="t4" level=error msg="no such command" plugin={PID}
time="t5" level=info msg="prefix match only" plugin={PID}ff
"""


def test_plugin_log_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "dockerd.log"
    log.write_text(LOG)
    lines, source = dockerd_log.plugin_log_lines(PID, log)
    assert source == str(log)
    assert lines is not None and [ln.split()[0] for ln in lines] == ['time="t1"', 'time="t4"']
    lines, _ = dockerd_log.plugin_log_lines(PID, log, lines=1)
    assert lines is not None and len(lines) == 1 and "no such command" in lines[0]
    monkeypatch.setenv(dockerd_log.LOG_ENV, str(log))
    assert dockerd_log.plugin_log_lines(OTHER)[0] == [LOG.splitlines()[2]]
    lines, note = dockerd_log.plugin_log_lines(PID, tmp_path / "nope.log")
    assert lines is None and "nope.log" in note


class _Plugin:
    def __init__(self, socket: str) -> None:
        self.name, self.id = "dpt-fake:latest", PID
        config = {"Interface": {"Socket": socket}, "Entrypoint": ["/bin/plugin"]}
        self.attrs = {"Config": config, "Settings": {}, "Enabled": False}


def _fake_engine(monkeypatch: pytest.MonkeyPatch, socket: str) -> None:
    from dockplug.packaging import engine

    def no_root(client: object) -> str:
        raise OSError("no daemon")

    monkeypatch.setattr(engine, "get_plugin", lambda client, name: _Plugin(socket))
    monkeypatch.setattr(engine, "is_local", lambda client: False)
    monkeypatch.setattr(engine, "data_root", no_root)


def test_installed_plugin_shows_its_log_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_engine(monkeypatch, "p.sock")
    log = tmp_path / "dockerd.log"
    log.write_text(LOG)
    findings = doctor.diagnose_installed("dpt-fake", object(), log_path=log)
    assert [f.check for f in findings] == ["disabled", "dockerd-log", "dockerd-log"]
    assert all(f.level == "info" for f in findings[1:])
    assert "starting" in str(findings[1]) and "no such command" in str(findings[2])
    assert all("\n" not in str(f) and "fix: " in str(f) for f in findings)
    # no log: nothing added when nothing is wrong, a note saying where to look otherwise
    missing = tmp_path / "nope.log"
    assert [f.check for f in doctor.diagnose_installed("x", object(), log_path=missing)] == [
        "disabled"
    ]
    _fake_engine(monkeypatch, "/abs.sock")
    checks = [f.check for f in doctor.diagnose_installed("x", object(), log_path=missing)]
    assert checks == ["socket-absolute", "disabled", "dockerd-log"]
