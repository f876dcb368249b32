"""``--base`` parsing, the safe rootfs tar unpacking, and the check of what a base holds (no
dockerd: real tarballs and folders)."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dockplug.errors import ConfigError
from dockplug.packaging.bases import (
    DEBOOTSTRAP,
    Base,
    check_base,
    from_tar,
    parse_base,
    refuse_escaping_paths,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking a rootfs needs root")
QUIET = Console(stderr=True, quiet=True)


def test_parse_base(tmp_path: Path) -> None:
    assert parse_base("debootstrap") == DEBOOTSTRAP
    assert parse_base("image:debian:bookworm") == Base("image", "debian:bookworm")
    (tmp_path / "r.tar").write_bytes(b"")
    assert parse_base(f"tar:{tmp_path / 'r.tar'}").kind == "tar"
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    assert parse_base(f"dockerfile:{tmp_path}") == Base("dockerfile", str(tmp_path))
    for bad in ("docker", "image:", "image", "debootstrap:x", "oci:x"):
        with pytest.raises(ConfigError, match=r"is not one of debootstrap.*fix: e\.g\."):
            parse_base(bad)
    with pytest.raises(ConfigError, match="no file"):
        parse_base(f"tar:{tmp_path / 'missing.tar'}")
    with pytest.raises(ConfigError, match="no Dockerfile"):
        parse_base(f"dockerfile:{tmp_path / 'nope'}")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in kw.items():
        setattr(info, key, value)
    return info


@needs_root
def test_tar_keeps_what_a_rootfs_needs(tmp_path: Path) -> None:
    same: dict[str, Any] = {"mode": 0o750, "uid": 1234, "gid": 5678}  # a hard link shares it
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [
            (_info("./usr", tarfile.DIRTYPE, mode=0o755), b""),
            (_info("./usr/bin", tarfile.DIRTYPE, mode=0o755), b""),
            (_info("./usr/bin/su", mode=0o4755, uid=0, gid=0), b"su"),
            (_info("./usr/bin/tool", **same), b"tool"),
            (_info("./usr/bin/awk", tarfile.SYMTYPE, linkname="/etc/alternatives/awk"), b""),
            (_info("./usr/bin/rel", tarfile.SYMTYPE, linkname="../bin/tool"), b""),
            (_info("./usr/bin/hard", tarfile.LNKTYPE, linkname="./usr/bin/tool", **same), b""),
            (_info("./dev", tarfile.DIRTYPE, mode=0o755), b""),
            (_info("./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), b""),
        ],
    )
    dest = tmp_path / "rootfs"
    from_tar(archive, dest, QUIET)
    assert stat.S_IMODE((dest / "usr/bin/su").stat().st_mode) == 0o4755
    tool = (dest / "usr/bin/tool").stat()
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode)) == (1234, 5678, 0o750)
    assert os.readlink(dest / "usr/bin/awk") == "/etc/alternatives/awk"
    assert os.readlink(dest / "usr/bin/rel") == "../bin/tool"
    assert (dest / "usr/bin/hard").stat().st_ino == tool.st_ino
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1


@needs_root
@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_info("/etc/passwd"), "absolute path"),
        (_info("./../escape"), "climbs out of the rootfs with '..'"),
        (_info("./a/../../escape"), "climbs out"),
        (_info("./h", tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link to '/etc/passwd'"),
        (_info("./h", tarfile.LNKTYPE, linkname="../../etc/passwd"), "hard link"),
        (_info("./etc/x", tarfile.SYMTYPE, linkname="../../../../etc"), "symlink to"),
    ],
)
def test_tar_refuses_what_leaves_the_rootfs(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [(member, b"x")])
    with pytest.raises(ConfigError, match=rf"evil\.tar\.gz: refused member .*{message}"):
        from_tar(archive, tmp_path / "rootfs", QUIET)
    assert not (tmp_path / "escape").exists()


@needs_root
def test_tar_refuses_writing_through_an_absolute_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(
        tmp_path / "evil.tar.gz",
        [
            (_info("./lib", tarfile.SYMTYPE, linkname=str(outside)), b""),
            (_info("./lib/planted"), b"x"),
        ],
    )
    with pytest.raises(ConfigError, match="refused"):
        from_tar(archive, tmp_path / "rootfs", QUIET)
    assert not (outside / "planted").exists()


@needs_root
def test_tar_refuses_a_hard_link_through_a_symlink_to_a_host_file(tmp_path: Path) -> None:
    # d -> /host/dir, then h = hard link to d/victim, then a file h: the write would go to
    # the host's victim through the second name
    host = tmp_path / "host"
    host.mkdir()
    victim = host / "victim"
    victim.write_text("host data")
    archive = _tar(
        tmp_path / "evil.tar.gz",
        [
            (_info("./d", tarfile.SYMTYPE, linkname=str(host)), b""),
            (_info("./h", tarfile.LNKTYPE, linkname="d/victim"), b""),
            (_info("./h"), b"PWNED"),
        ],
    )
    with pytest.raises(ConfigError, match="hard link to 'd/victim', outside the rootfs"):
        from_tar(archive, tmp_path / "rootfs", QUIET)
    assert victim.read_text() == "host data" and victim.stat().st_nlink == 1


def test_tar_that_is_not_a_tar(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tarball at all" * 100)
    if os.geteuid() != 0:
        pytest.skip("unpacking a rootfs needs root")
    with pytest.raises(ConfigError, match="not a readable tar archive"):
        from_tar(junk, tmp_path / "rootfs", QUIET)


def _fake_rootfs(root: Path, python: bool = True) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    if python:
        v = sys.version_info
        (root / f"usr/lib/python{v.major}.{v.minor}").mkdir(parents=True)
        (root / "usr/bin/python3").symlink_to(f"python{v.major}.{v.minor}")
    return root


def test_check_base_names_everything_missing(tmp_path: Path) -> None:
    root = _fake_rootfs(tmp_path / "r", python=False)
    with pytest.raises(ConfigError) as info:
        check_base(root, Base("tar", "r.tar"), ["sshfs", "fuse3"], QUIET, run_python=False)
    text = str(info.value)
    assert text.startswith("--base tar:r.tar lacks what the plugin needs:")
    assert "there is no python3" in text and "fuse3 (no fusermount3 program)" in text
    assert "  - sshfs" in text and "apt-get install python3 fuse3 sshfs" in text

    ok = _fake_rootfs(tmp_path / "ok")
    (ok / "usr/bin/sshfs").write_text("")
    (ok / "var/lib/dpkg").mkdir(parents=True)
    (ok / "var/lib/dpkg/status").write_text(
        "Package: fuse3\nStatus: install ok installed\n\nPackage: sshfs\nStatus: deinstall ok "
        "config-files\n"
    )
    check_base(
        ok, Base("tar", "ok.tar"), ["sshfs", "fuse3"], QUIET, run_python=False
    )  # program or package


def test_check_base_links_a_usr_local_python(tmp_path: Path) -> None:
    root = tmp_path / "r"
    v = sys.version_info
    (root / "usr/local/bin").mkdir(parents=True)
    (root / f"usr/local/lib/python{v.major}.{v.minor}").mkdir(parents=True)
    (root / "usr/local/bin/python3").write_text("")
    check_base(root, Base("image", "python:slim"), [], QUIET, run_python=False)
    assert os.readlink(root / "usr/bin/python3") == "/usr/local/bin/python3"

    old = _fake_rootfs(tmp_path / "old", python=False)
    (old / "usr/lib/python3.9").mkdir(parents=True)
    (old / "usr/bin/python3").symlink_to("python3.9")
    with pytest.raises(ConfigError, match=r"it has python3 3\.9, too old"):
        check_base(old, Base("image", "old"), [], QUIET, run_python=False)


def test_cli_refuses_an_unknown_base(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dockplug.cli.main import cli

    out = tmp_path / "b"
    res = CliRunner().invoke(
        cli, ["build", "local", "--name", "x/y", "-o", str(out), "--base", "oci:z"]
    )
    assert res.exit_code == 1 and "--base 'oci:z' is not one of debootstrap" in res.output
    assert not out.exists()


def test_a_base_whose_install_folder_leads_out_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    host = tmp_path / "host-opt"
    host.mkdir()
    (root / "opt").symlink_to(host)  # fine inside the plugin, but the build runs on the host
    with pytest.raises(ConfigError, match=r"the base's /opt/dockplug/site leads out"):
        refuse_escaping_paths(root, ["/opt/dockplug/site", "usr/bin"])
    refuse_escaping_paths(root, ["usr/bin", "run/docker/plugins"])  # plain folders pass
    assert list(host.iterdir()) == []
