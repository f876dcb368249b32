"""The sshfs driver without an ssh server (issue 5): option parsing and validation, the ssh
config and command line it would run, where passwords go (the secrets store, never a record, a
reply or a log line), the secrets store itself and ``dockplug secret``."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.client import PluginClient
from dockplug.drivers.volume.sshfs import SSHFS_OPTIONS, SshfsDriver
from dockplug.drivers.volume.sshfs.mounting import explain, plan_mount
from dockplug.drivers.volume.sshfs.options import parse_host_key, parse_sshcmd
from dockplug.errors import ConfigError
from dockplug.observe import MASK, add_secret
from dockplug.state.secrets import SecretStore
from dockplug.testing.servers import ThreadedPlugin

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG80x9bQR6r+jrtfRrjYiKxayxjUp8ltVqfNTKnZm5bc"
PASSWORD = "unit-Pa55word-that-must-never-show"
SSHCMD = "alice@127.0.0.1:/srv/data"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@files.example.com:/srv/data", "alice@files.example.com:/srv/data"),
        ("host:", "host:"),
        ("host:relative/dir", "host:relative/dir"),
        ("bob@10.0.0.5:/", "bob@10.0.0.5:/"),
        ("carol@[::1]:/x", "carol@[::1]:/x"),
        ("dave@host:/with:colon", "dave@host:/with:colon"),
    ],
)
def test_sshcmd_accepts_user_host_path(text: str, expected: str) -> None:
    assert parse_sshcmd(text) == expected


@pytest.mark.parametrize(
    "text",
    ["host", "-oProxyCommand=touch /tmp/x:/", "alice@-host:/x", "a b@host:/x", "@host:/x",
     "alice@ho st:/x", "host:/a\nb", "", "alice@:/x"],
)  # fmt: skip
def test_sshcmd_refuses_what_ssh_would_misread(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sshcmd(text)


def test_host_key_takes_a_key_or_a_known_hosts_line() -> None:
    assert parse_host_key(HOST_KEY) == HOST_KEY
    assert parse_host_key(f"{HOST_KEY} root@server") == HOST_KEY
    assert parse_host_key(f"[10.0.0.5]:2222 {HOST_KEY}") == HOST_KEY
    assert parse_host_key(f"|1|abc=|def= {HOST_KEY} comment") == HOST_KEY
    with pytest.raises(ValueError, match="not valid base64"):
        parse_host_key("ssh-ed25519 not*base64")
    with pytest.raises(ValueError, match="not a ssh-rsa key"):
        parse_host_key("ssh-rsa " + HOST_KEY.split()[1])
    with pytest.raises(ValueError, match="cert-authority"):
        parse_host_key(f"@cert-authority * {HOST_KEY}")
    with pytest.raises(ValueError, match="expected a public host key"):
        parse_host_key("hello")


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Callable[..., SshfsDriver]]:
    made: list[SshfsDriver] = []

    def make(**kw: Any) -> SshfsDriver:
        lines: list[str] = []
        d = SshfsDriver(base_dir=tmp_path / "base", state_dir=tmp_path / "state",
                        log=lines.append, **kw)  # fmt: skip
        d.lines = lines  # type: ignore[attr-defined]
        made.append(d)
        return d

    yield make
    for d in made:
        d.shutdown()


@pytest.fixture
def served(
    driver: Callable[..., SshfsDriver], serve_plugin: Callable[..., ThreadedPlugin]
) -> Callable[..., tuple[SshfsDriver, PluginClient]]:
    def start(**kw: Any) -> tuple[SshfsDriver, PluginClient]:
        d = driver(**kw)
        return d, serve_plugin(d).client()

    return start


def _create(client: PluginClient, name: str, **opts: str) -> tuple[int, str | None]:
    reply = client.call("VolumeDriver.Create", {"Name": name, "Opts": opts})
    return reply.status, reply.error


def test_unknown_and_dangerous_options_are_refused_listing_the_accepted(
    served: Callable[..., tuple[SshfsDriver, PluginClient]],
) -> None:
    _, client = served()
    for key in ("ssh_command", "ProxyCommand", "colour", "sftp_server"):
        status, error = _create(client, "v", sshcmd=SSHCMD, **{key: "x"})
        assert status == 400 and error is not None
        assert f"unknown option {key!r}" in error
        assert "accepted: allow_other, ciphers," in error and "sshcmd" in error
    assert client.call("VolumeDriver.List", {}).json["Volumes"] == []


def test_help_prints_the_table_instead_of_creating(
    served: Callable[..., tuple[SshfsDriver, PluginClient]],
) -> None:
    _, client = served()
    status, error = _create(client, "v", help="")
    assert status == 400 and error is not None
    assert error.startswith("options of the sshfs volume driver")
    for name in SSHFS_OPTIONS.options:
        assert f"  {name}" in error
    assert client.call("VolumeDriver.List", {}).json["Volumes"] == []


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        ({}, "option sshcmd is required"),
        ({"sshcmd": "nohost"}, "expected [user@]host:[/path]"),
        ({"sshcmd": SSHCMD, "port": "70000"}, "option port='70000'"),
        ({"sshcmd": SSHCMD, "identity_file": "relative/key"}, "absolute path"),
        ({"sshcmd": SSHCMD, "identity_file": "/with space/key"}, "may not hold spaces"),
        ({"sshcmd": SSHCMD, "identity_file": "/etc/%d/key"}, "'%'"),
        ({"sshcmd": SSHCMD, "identity_file": "/nonexistent/key"}, "no such file"),
        ({"sshcmd": SSHCMD, "secret": "nope"}, "dockplug secret set nope"),
        ({"sshcmd": SSHCMD, "secret": "a", "password_file": "/etc/hostname"}, "exclude each"),
        ({"sshcmd": SSHCMD, "host_key": HOST_KEY, "insecure_ignore_host_key": "true"},
         "host_key and insecure_ignore_host_key exclude each other"),
        ({"sshcmd": SSHCMD, "ciphers": "aes128-ctr;touch"}, "cipher names"),
        ({"sshcmd": SSHCMD, "idmap": "file"}, "none or user"),
        ({"sshcmd": SSHCMD, "readonly": "maybe"}, "true or false"),
    ],
)  # fmt: skip
def test_bad_options_get_a_clear_error(
    served: Callable[..., tuple[SshfsDriver, PluginClient]], opts: dict[str, str], expected: str
) -> None:
    _, client = served()
    status, error = _create(client, "v", **opts)
    assert status != 200 and error is not None
    assert expected in error
    assert client.call("VolumeDriver.List", {}).json["Volumes"] == []


def test_inline_password_is_refused_unless_allowed_without_echoing_it(
    served: Callable[..., tuple[SshfsDriver, PluginClient]],
) -> None:
    d, client = served()
    status, error = _create(client, "v", sshcmd=SSHCMD, password=PASSWORD)
    assert status == 400 and error is not None
    assert "--allow-inline-secrets" in error and "dockplug secret set" in error
    assert PASSWORD not in error
    assert d.volumes == {}
    assert not d.secrets.path.exists()


def test_inline_password_lives_only_in_the_secrets_store(
    served: Callable[..., tuple[SshfsDriver, PluginClient]], tmp_path: Path
) -> None:
    d, client = served(allow_inline_secrets=True)
    assert _create(client, "v", sshcmd=SSHCMD, port="2222", password=PASSWORD) == (200, None)
    assert _create(client, "v", sshcmd=SSHCMD, port="2222", password=PASSWORD) == (200, None)
    volume = client.call("VolumeDriver.Get", {"Name": "v"}).json["Volume"]
    assert volume["Status"] == {
        "Options": {"port": 2222, "sshcmd": SSHCMD}, "Mounts": 0, "Consumers": 0,
        "Remote": SSHCMD, "Port": 2222, "State": "unmounted",
    }  # fmt: skip
    listed = client.call("VolumeDriver.List", {}).raw.decode()
    assert PASSWORD not in json.dumps(volume) and PASSWORD not in listed
    state = tmp_path / "state"
    assert PASSWORD.encode() not in (state / "volumes.db").read_bytes()
    for wal in state.glob("volumes.db-*"):
        assert PASSWORD.encode() not in wal.read_bytes()
    assert d.secrets.get("volume/v") == PASSWORD
    assert stat.S_IMODE(d.secrets.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert not any(PASSWORD in line for line in d.lines)  # type: ignore[attr-defined]
    # dockerd keeps the Create options and `docker volume inspect` shows them: each such
    # Create is logged as a warning pointing at secrets by name
    warnings = [line for line in d.lines if "inline password" in line]  # type: ignore[attr-defined]
    assert len(warnings) == 2 and "docker volume inspect" in warnings[0]
    assert "dockplug secret set" in warnings[0]
    # Create again with another password replaces it (a changed password is not ignored)
    assert _create(client, "v", sshcmd=SSHCMD, port="2222", password="new-" + PASSWORD)[0] == 200
    assert d.secrets.get("volume/v") == "new-" + PASSWORD
    # other options still conflict, and the message shows no password
    status, error = _create(client, "v", sshcmd=SSHCMD, password=PASSWORD)
    assert status != 200 and error is not None
    assert "already exists" in error and PASSWORD not in error
    assert client.call("VolumeDriver.Remove", {"Name": "v"}).status == 200
    assert d.secrets.names() == []


def test_secret_by_name_must_exist_and_is_read_from_the_store(
    served: Callable[..., tuple[SshfsDriver, PluginClient]],
) -> None:
    d, client = served()
    d.secrets.set("files-pw", PASSWORD)
    assert _create(client, "v", sshcmd=SSHCMD, secret="files-pw") == (200, None)
    assert d._password(d.record("v")) == PASSWORD
    d.secrets.delete("files-pw")
    with pytest.raises(Exception, match="dockplug secret set files-pw"):
        d._password(d.record("v"))


def _plan(opts: dict[str, Any], password: str | None = None, known: Path | None = None) -> Any:
    parsed = SSHFS_OPTIONS.parse(opts)
    return plan_mount(parsed, Path("/mnt/v"), Path("/state/run/v.ssh_config"), known, password)


def test_key_auth_plan_never_prompts_and_checks_host_keys_strictly() -> None:
    plan = _plan({"sshcmd": SSHCMD, "identity_file": "/keys/id", "port": "2222"},
                 known=Path("/state/known_hosts/v"))  # fmt: skip
    assert plan.argv[:4] == ["sshfs", "-f", "-F", "/state/run/v.ssh_config"]
    assert plan.argv[-2:] == [SSHCMD, "/mnt/v"]
    config = plan.ssh_config.splitlines()
    for line in ("BatchMode yes", "StrictHostKeyChecking yes", "Port 2222",
                 "UserKnownHostsFile /state/known_hosts/v", "IdentityFile /keys/id",
                 "IdentitiesOnly yes", "PasswordAuthentication no", "ServerAliveInterval 15",
                 "ServerAliveCountMax 3"):  # fmt: skip
        assert f"  {line}" in config
    assert "reconnect" in plan.fuse_options and "password_stdin" not in plan.fuse_options


def test_password_plan_feeds_stdin_and_keeps_the_password_off_argv_and_config() -> None:
    plan = _plan({"sshcmd": SSHCMD, "readonly": "true", "uid": "1000", "umask": "022",
                  "allow_other": "1", "reconnect": "false", "compression": "no"},
                 password=PASSWORD)  # fmt: skip
    assert plan.password == PASSWORD
    assert PASSWORD not in " ".join(plan.argv) and PASSWORD not in plan.ssh_config
    assert "  BatchMode no" in plan.ssh_config and "  NumberOfPasswordPrompts 1" in plan.ssh_config
    assert "  Compression no" in plan.ssh_config
    assert "ServerAlive" not in plan.ssh_config
    assert plan.fuse_options == [
        "ro", "allow_other", "uid=1000", "idmap=user", "umask=0022", "password_stdin",
    ]  # fmt: skip


def test_insecure_opt_out_is_explicit() -> None:
    plan = _plan({"sshcmd": SSHCMD, "insecure_ignore_host_key": "true"})
    assert "  StrictHostKeyChecking no" in plan.ssh_config
    plan = _plan({"sshcmd": SSHCMD, "known_hosts_file": "/etc/ssh/kh"})
    assert "  StrictHostKeyChecking yes" in plan.ssh_config
    assert "  UserKnownHostsFile /etc/ssh/kh" in plan.ssh_config


def test_sshfs_errors_are_explained_and_cleaned_of_secrets() -> None:
    add_secret(PASSWORD)
    opts = SSHFS_OPTIONS.parse({"sshcmd": SSHCMD, "port": "2222"})
    banner = "@@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n"
    text = explain(banner + "Host key verification failed.\nread: Connection reset by peer\n", opts)
    assert text.startswith("Host key verification failed.") and "host_key" in text
    text = explain(f"alice@127.0.0.1: Permission denied ({PASSWORD}).\n", opts)
    assert PASSWORD not in text and MASK in text and "authentication failed" in text
    text = explain("ssh: connect to host 127.0.0.1 port 2222: Connection refused\n", opts)
    assert "no ssh server reachable at 127.0.0.1 port 2222" in text


# --- the secrets store and its CLI ------------------------------------------------------------


def test_secret_store_round_trip_modes_and_atomic_writes(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "st" / "secrets.json")
    assert store.names() == [] and store.get("a") is None and not store.delete("a")
    store.set("a", "one")
    store.set("b", "two")
    assert store.get("a") == "one" and store.names() == ["a", "b"] and "b" in store
    assert store.delete("a") and store.names() == ["b"]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["secrets.json"]
    store.path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a valid secrets file"):
        store.names()


def test_secret_cli_set_ls_rm(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    res = runner.invoke(cli, ["secret", "set", "files-pw", *state], input=PASSWORD + "\n")
    assert res.exit_code == 0, res.output
    assert PASSWORD not in res.output
    assert SecretStore(tmp_path / "secrets.json").get("files-pw") == PASSWORD
    res = runner.invoke(cli, ["secret", "ls", *state])
    assert res.exit_code == 0 and res.output == "files-pw\n"
    res = runner.invoke(cli, ["secret", "set", "../bad", *state], input="x\n")
    assert res.exit_code == 1 and "invalid secret name" in res.output
    res = runner.invoke(cli, ["secret", "set", "empty", *state], input="")
    assert res.exit_code == 1 and "empty value" in res.output
    res = runner.invoke(cli, ["secret", "rm", "files-pw", *state])
    assert res.exit_code == 0 and SecretStore(tmp_path / "secrets.json").names() == []
    res = runner.invoke(cli, ["secret", "rm", "files-pw", *state])
    assert res.exit_code == 1 and "no secret 'files-pw'" in res.output


def test_serve_sshfs_is_a_builtin() -> None:
    res = CliRunner().invoke(cli, ["serve", "sshfs", "--help"])
    assert res.exit_code == 0, res.output
    for flag in ("--allow-inline-secrets", "--mount-timeout", "--base-dir", "--state-dir"):
        assert flag in res.output
    assert "dockplug-sshfs" in res.output
