"""``dockplug build --image/--dockerfile/--rootfs``: config.json generated from flags (and the
image's runtime config), validated before anything is made with errors naming the flag; the
config file found beside a Dockerfile or rootfs/; --rootfs copied through the tar filter; and the
doctor's one-line findings for the seed's failures in plugins that are not dockplug's."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from dockplug.cli.main import cli
from dockplug.errors import ConfigError
from dockplug.packaging.anyplugin import (
    Declared,
    Source,
    build_any,
    config_file,
    generate_config,
    parse_env,
    parse_mount,
    source_of,
)
from dockplug.packaging.doctor import check_socket_argv, diagnose_bundle
from dockplug.packaging.elf import HOST_MACHINES

HOST_EM = min(HOST_MACHINES.get(os.uname().machine, {62}))
OTHER_EM = 183 if HOST_EM != 183 else 62
RCLONE = shutil.which("rclone")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking a rootfs keeps owners: root")


def rclone_decl(**kw: object) -> Declared:
    base: dict[str, object] = {
        "types": ["volume"],
        "socket": "rclone.sock",
        "capabilities": ["CAP_SYS_ADMIN"],
        "devices": ["/dev/fuse"],
        "propagated_mount": "/mnt",
        "mounts": ["data=/srv/rclone:/data"],
        "env": ["RCLONE_VERBOSE=0:settable", "RCLONE_CONFIG=/data/rclone.conf"],
    }
    base.update(kw)
    return Declared(**base)  # type: ignore[arg-type]


def test_config_generated_from_flags_and_the_image() -> None:
    image = {
        "Entrypoint": ["rclone", "serve", "docker"],
        "Cmd": ["--base-dir", "/mnt"],
        "Env": ["PATH=/usr/local/bin:/usr/bin", "HOME=/root"],
        "WorkingDir": "/data",
    }
    cfg = json.loads(generate_config(rclone_decl(), image, "--image rclone:1").to_json())
    assert cfg["entrypoint"] == ["rclone", "serve", "docker", "--base-dir", "/mnt"]
    assert cfg["workdir"] == "/data"
    assert cfg["interface"] == {
        "types": ["docker.volumedriver/1.0"],
        "socket": "rclone.sock",
        "protocolscheme": "",
    }
    env = {e["name"]: e for e in cfg["env"]}
    assert env["PATH"]["value"] == "/usr/local/bin:/usr/bin" and env["HOME"]["value"] == "/root"
    assert env["RCLONE_VERBOSE"]["settable"] == ["value"] and env["RCLONE_VERBOSE"]["value"] == "0"
    assert env["RCLONE_CONFIG"]["settable"] == []
    assert cfg["propagatedMount"] == "/mnt"
    assert cfg["mounts"] == [
        {
            "name": "data",
            "description": "bind mount of a host folder at /data",
            "settable": ["source"],
            "source": "/srv/rclone",
            "destination": "/data",
            "type": "bind",
            "options": ["rbind", "rw"],
        }
    ]
    assert cfg["linux"]["capabilities"] == ["CAP_SYS_ADMIN"]
    assert cfg["linux"]["devices"] == [
        {"name": "fuse", "description": "", "settable": ["path"], "path": "/dev/fuse"}
    ]
    assert cfg["args"]["settable"] == ["value"] and cfg["args"]["value"] == []
    # --entrypoint wins over the image's, as shell words or a JSON array
    cfg2 = generate_config(rclone_decl(entrypoint="/bin/p --x 'a b'"), image, "--image r")
    assert cfg2.entrypoint == ["/bin/p", "--x", "a b"]
    cfg3 = generate_config(rclone_decl(entrypoint='["/bin/p", "a b"]'), None, "--rootfs d")
    assert cfg3.entrypoint == ["/bin/p", "a b"]


@pytest.mark.parametrize(
    ("decl", "image", "words"),
    [
        (Declared(types=["volume"]), {"Cmd": ["x"]}, "no --socket to generate one"),
        (Declared(socket="p.sock"), {"Cmd": ["x"]}, "no --type to generate one"),
        (rclone_decl(socket="/run/docker/plugins/r.sock"), {"Cmd": ["x"]},
         "--socket (config.json: interface.socket: '/run/docker/plugins/r.sock' is an absolute"),
        (rclone_decl(socket="a" * 30 + ".sock"), {"Cmd": ["x"]}, "--socket (config.json: "),
        (rclone_decl(capabilities=["sys_admin"]), {"Cmd": ["x"]},
         "--cap (config.json: linux.capabilities: 'SYS_ADMIN' is not a capability name; fix: "
         "write it like 'CAP_SYS_ADMIN'"),
        (rclone_decl(devices=["fuse"]), {"Cmd": ["x"]},
         "--device (config.json: linux.devices[0].path: 'fuse' is not a device path"),
        (rclone_decl(propagated_mount="mnt"), {"Cmd": ["x"]},
         "--propagated-mount (config.json: propagatedMount: 'mnt' is not an absolute path"),
        (rclone_decl(mounts=["/srv:data"]), {"Cmd": ["x"]},
         "--mount (config.json: mounts[0].destination: 'data' is not an absolute path"),
        (rclone_decl(mounts=["srv"]), {"Cmd": ["x"]}, "--mount 'srv' is not [NAME=]SOURCE:DEST"),
        (rclone_decl(env=["1X=2"]), {"Cmd": ["x"]}, "--env '1X=2' is not NAME=VALUE"),
        (rclone_decl(types=["volumes"]), {"Cmd": ["x"]}, "--type 'volumes' is not a plugin type"),
        (rclone_decl(), {"Env": []}, "has neither Entrypoint nor Cmd; fix: --entrypoint"),
        (rclone_decl(), None, "no image to take the entrypoint from; fix: --entrypoint"),
        (rclone_decl(entrypoint="'unbalanced"), None, "fix: balance the quotes"),
    ],
)  # fmt: skip
def test_flag_errors_name_the_flag_and_the_fix(
    decl: Declared, image: dict[str, object] | None, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        generate_config(decl, image, "--image x:1")
    assert words in str(info.value)
    assert "fix:" in str(info.value)


def test_env_and_mount_forms() -> None:
    assert parse_env("A=b:c").value == "b:c" and parse_env("A=b:c").settable == []
    assert parse_env("A=:settable").value == "" and parse_env("A=:settable").settable == ["value"]
    m = parse_mount("/var/lib/p:/state", 0)
    assert (m.name, m.source, m.destination) == ("state", "/var/lib/p", "/state")


def test_sources_and_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of --image REF"):
        source_of(None, None, None)
    with pytest.raises(ConfigError, match=r"got --image a, --rootfs b"):
        source_of("a", None, "b")
    with pytest.raises(ConfigError, match="no Dockerfile there"):
        source_of(None, str(tmp_path), None)
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    src = source_of(None, str(tmp_path), None)
    assert config_file(src, None) is None
    (tmp_path / "config.json").write_text("{}")
    assert config_file(src, None) == tmp_path / "config.json"
    # the seed's layout: myplugin/config.json beside myplugin/rootfs
    bundle = tmp_path / "myplugin"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    for given in (bundle, bundle / "rootfs"):
        assert config_file(Source("rootfs", str(given)), None) == bundle / "config.json"
    assert config_file(Source("rootfs", str(tmp_path)), None) is None


def test_a_config_file_and_flags_clash(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--socket generate config.json, but .* fix: edit"):
        build_any(Source("dockerfile", str(tmp_path)), "a/b", tmp_path / "out",
                  declared=Declared(socket="x.sock"))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_bad_config_file_stops_before_anything_is_made(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM dpt-never-built:1\n")
    (tmp_path / "config.json").write_text(
        json.dumps({"entrypoint": ["/p"], "interface": {"types": ["docker.volumedriver/1.0"],
                    "socket": "/abs.sock"}, "capabilites": []})
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        # no dockerd is asked: validation comes first
        build_any(Source("dockerfile", str(tmp_path)), "a/b", tmp_path / "out")
    text = str(info.value)
    assert "interface.socket: '/abs.sock' is an absolute path" in text
    assert "capabilites: unknown key (dockerd would silently ignore it)" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["local", "--image", "x"], "give either DRIVER (local) or --image"),
        (["--image", "x", "--base", "debootstrap"], "--base is for dockplug's own drivers"),
        (["local", "--socket", "p.sock"], "--socket describe a plugin built from --image"),
        ([], "nothing to build; fix: give a DRIVER"),
    ],
)
def test_cli_refuses_mixed_forms(args: list[str], words: str) -> None:
    res = CliRunner().invoke(cli, ["build", "--name", "a/b", *args])
    assert res.exit_code != 0
    assert words in res.output


def _console() -> Console:
    return Console(stderr=True, force_terminal=False)


@pytest.mark.root
@root_only
def test_rootfs_folder_with_its_config_json(tmp_path: Path) -> None:
    """The seed's myplugin/{config.json,rootfs}, copied with owners, modes and links."""
    bundle = tmp_path / "myplugin"
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    prog = rootfs / "bin/plugin"
    prog.write_bytes(Path("/bin/true").read_bytes())
    os.chown(prog, 123, 456)
    prog.chmod(0o4755)  # after chown, which clears setuid
    (rootfs / "bin/alias").symlink_to("/bin/plugin")
    cfg = {"entrypoint": ["/bin/plugin"],
           "interface": {"types": ["docker.volumedriver/1.0"], "socket": "p.sock"}}  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(cfg))
    built = build_any(Source("rootfs", str(bundle)), "a/p:1", tmp_path / "out", console=_console())
    out = built.result.path
    assert built.config_from == str(bundle / "config.json")
    copied = out / "rootfs/bin/plugin"
    st = copied.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4755, 123, 456)
    assert os.readlink(out / "rootfs/bin/alias") == "/bin/plugin"
    assert (out / "rootfs/run/docker/plugins").is_dir()
    assert json.loads((out / "config.json").read_text())["interface"]["socket"] == "p.sock"


@pytest.mark.root
@root_only
def test_rootfs_folder_escaping_is_refused(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin/out").symlink_to("../../../../etc/passwd")
    with pytest.raises(ConfigError, match=r"refused member './bin/out'.*climbs out"):
        decl = Declared(types=["volume"], socket="p.sock", entrypoint="/bin/p")
        build_any(Source("rootfs", str(rootfs)), "a/p:1", tmp_path / "o", declared=decl)
    assert not (tmp_path / "o").exists()


# --- the doctor on plugins that are not dockplug's --------------------------------------------


def elf(machine: int) -> bytes:
    """A minimal static 64-bit ELF header for MACHINE."""
    return struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, machine, 1, 0x400000, 64, 0, 0, 64, 56, 0,
        0, 0, 0,
    )  # fmt: skip


def host_libs(binary: str) -> list[str]:
    """BINARY's loader and libraries as the host's loader resolves them (ldd)."""
    if shutil.which("ldd") is None:
        pytest.skip("no ldd on this host")
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x", out)


def go_bundle(root: Path, program: bytes | None = None, name: str = "rclone", libs: bool = True,
              skip: tuple[str, ...] = (), **cfg: object) -> Path:  # fmt: skip
    """A bundle like the rclone plugin's: /usr/bin/NAME (the host's rclone, or PROGRAM) with its
    loader and libraries (none unless LIBS, not those in SKIP), entrypoint NAME serve docker."""
    rootfs = root / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "run/docker/plugins").mkdir(parents=True)
    if program is None:
        if RCLONE is None:
            pytest.skip("rclone is not installed (apt-get install rclone)")
        program = Path(RCLONE).read_bytes()
        if libs:
            for lib in host_libs(RCLONE):
                if Path(lib).name in skip:
                    continue
                dest = rootfs / lib.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(lib), dest)
    (rootfs / "usr/bin" / name).write_bytes(program)
    (rootfs / "usr/bin" / name).chmod(0o755)
    config: dict[str, object] = {
        "entrypoint": [name, "serve", "docker"],
        "interface": {"types": ["docker.volumedriver/1.0"], "socket": "rclone.sock"},
        "propagatedMount": "/mnt",
        "linux": {"capabilities": ["CAP_SYS_ADMIN"],
                  "devices": [{"name": "fuse", "path": "/dev/fuse"}]},
    }  # fmt: skip
    config.update(cfg)
    (root / "config.json").write_text(json.dumps(config))
    return root


VOLUME = "docker.volumedriver/1.0"
NETLINK = b"github.com/vishvananda/netlink.LinkAdd"
NO_FUSE = {"capabilities": ["CAP_SYS_ADMIN"], "devices": []}
NO_CAP = {"capabilities": [], "devices": [{"name": "fuse", "path": "/dev/fuse"}]}
SEED: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "entrypoint for another architecture": (
        lambda d: go_bundle(d, elf(OTHER_EM)),
        "elf-arch",
        f"this host is {os.uname().machine} ('exec format error')",
    ),
    "entrypoint needs a library the rootfs lacks": (
        lambda d: go_bundle(d, skip=("libc.so.6",)),
        "library-missing",
        "entrypoint rclone needs the shared library libc.so.6, which the loader would not find",
    ),
    "socket declared that the program never creates": (
        lambda d: go_bundle(d, interface={"types": [VOLUME], "socket": "plugin.sock"}),
        "socket-mismatch",
        "'rclone serve docker' listens by default on /run/docker/plugins/rclone.sock",
    ),
    "socket named in the arguments differs": (
        lambda d: go_bundle(
            d,
            elf(HOST_EM),
            entrypoint=[
                "rclone",
                "serve",
                "docker",
                "--socket-addr=/run/docker/plugins/other.sock",
            ],
        ),
        "socket-mismatch",
        "its arguments name /run/docker/plugins/other.sock",
    ),
    "FUSE without /dev/fuse": (
        lambda d: go_bundle(d, elf(HOST_EM), linux=NO_FUSE),
        "fuse-device",
        "rclone (FUSE mounts of its volumes) needs the device /dev/fuse",
    ),
    "FUSE without CAP_SYS_ADMIN": (
        lambda d: go_bundle(d, elf(HOST_EM), linux=NO_CAP),
        "capability-missing",
        "rclone (FUSE mounts of its volumes) needs CAP_SYS_ADMIN",
    ),
    "a FUSE program of another name": (
        lambda d: go_bundle(d, elf(HOST_EM) + b"\0fusermount3\0", name="volplug", linux=NO_FUSE),
        "fuse-device",
        "entrypoint volplug probably uses FUSE: it holds 'fusermount'",
    ),
    "a netlink program without CAP_NET_ADMIN": (
        lambda d: go_bundle(d, elf(HOST_EM) + NETLINK, name="netplug", linux={}),
        "capability-missing",
        "uses netlink (network interfaces and routes): it holds 'vishvananda/netlink'",
    ),
}
if not Path("/dev/fuse").exists():  # the host check adds its own finding then
    SEED = {k: v for k, v in SEED.items() if "FUSE" not in k}


@pytest.mark.parametrize("case", list(SEED))
def test_the_seeds_failures_in_one_line_each(tmp_path: Path, case: str) -> None:
    make, check, words = SEED[case]
    findings = diagnose_bundle(make(tmp_path))
    assert [f.check for f in findings] == [check], findings
    line = str(findings[0])
    assert words in line and "fix: " in line and "\n" not in line, line


def test_the_rclone_bundle_is_clean(tmp_path: Path) -> None:
    """The real rclone with its loader and libc, declared as it needs: nothing to say; the
    same program undeclared is told what FUSE needs."""
    assert diagnose_bundle(go_bundle(tmp_path / "ok")) == []
    bad = diagnose_bundle(go_bundle(tmp_path / "bad", linux={}))
    assert {f.check for f in bad} == {"fuse-device", "capability-missing"}, bad


def test_socket_argv_only_for_a_usable_socket() -> None:
    cfg = {"entrypoint": ["x", "--socket", "/run/docker/plugins/a.sock"],
           "interface": {"socket": "/abs.sock"}}  # fmt: skip
    assert check_socket_argv(cfg) == []  # check_socket reports the absolute path
    cfg["interface"] = {"socket": "a.sock"}
    assert check_socket_argv(cfg) == []
    # the settings' args (docker plugin set NAME args=...) count too
    cfg["entrypoint"] = ["x"]
    found = check_socket_argv(cfg, ["--socket", "/run/docker/plugins/b.sock"])
    assert [f.check for f in found] == ["socket-mismatch"]
