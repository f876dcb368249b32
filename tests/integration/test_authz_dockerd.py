"""``dockplug serve authz`` in front of a real dockerd (``--authorization-plugin``), reached
through the docker CLI over the local socket and over TCP with TLS client certificates for two
users, and with raw requests the CLI cannot make. One dockerd and one plugin for the module.

Engine-agnostic: request paths carry the API version the engine reports.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.pki import client_certificate, make_certificates
from dockplug.testing.servers import SubprocessPlugin, free_port, wait_until

pytestmark = pytest.mark.dockerd

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "authz"
DENIED = "authorization denied by plugin"
SECRET = "hunter2-never-logged"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@dataclass
class Env:
    dockerd: Dockerd
    plugin: SubprocessPlugin
    args: list[str]
    name: str
    policy: Path
    audit: Path
    tcp: str
    certs: dict[str, Path]  # user -> DOCKER_CERT_PATH
    api: str  # "/v1.41"
    image: str

    def docker(
        self, *args: str, user: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.dockerd.env)
        if user is not None:
            env |= {"DOCKER_HOST": self.tcp, "DOCKER_TLS_VERIFY": "1",
                    "DOCKER_CERT_PATH": str(self.certs[user])}  # fmt: skip
        return subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
        sock = self.dockerd.host.removeprefix("unix://")
        conn = UnixHTTP(sock)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, reply.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def audit_lines(self) -> list[dict[str, object]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]


def _policy_dir(root: Path) -> Path:
    """The safe example for the local socket plus the read-only group for TLS users."""
    d = root / "policy"
    d.mkdir()
    shutil.copy(EXAMPLES / "safe" / "policy.cedar", d / "10-safe.cedar")
    shutil.copy(EXAMPLES / "readonly" / "policy.cedar", d / "20-readonly.cedar")
    shutil.copy(EXAMPLES / "registries" / "policy.cedar", d / "30-registries.cedar")
    (d / "groups.json").write_text(json.dumps({
        "readonly": {"users": ["dockplug-bob"]}, "admins": {"users": ["dockplug-alice"]},
    }))  # fmt: skip
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # a dockerd of its own (--authorization-plugin), whatever DOCKPLUG_DOCKER_HOST names: the
    # shared one must never be locked out by a policy under test
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    root = tmp_path_factory.mktemp("authz")
    pki = make_certificates(root / "pki")
    certs: dict[str, Path] = {}
    for user in ("alice", "bob"):
        cert, key = client_certificate(root / "pki", user)
        d = root / f"client-{user}"
        d.mkdir()
        shutil.copy(pki.ca, d / "ca.pem")
        shutil.copy(cert, d / "cert.pem")
        shutil.copy(key, d / "key.pem")
        certs[user] = d
    name = f"dpz-{uuid.uuid4().hex[:8]}"
    policy, audit = _policy_dir(root), root / "audit.log"
    args = ["serve", "authz", "--name", name, "--policy", str(policy), "--audit-log", str(audit),
            "--watch-interval", "0.2"]  # fmt: skip
    sock = Path(f"/run/docker/plugins/{name}.sock")
    plugin = SubprocessPlugin(args, wait_for=sock).start()
    port = free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    daemon = Dockerd()
    try:
        daemon.start(extra_args=(
            f"--authorization-plugin={name}", "-H", tcp, "--tlsverify",
            "--tlscacert", str(pki.ca), "--tlscert", str(pki.server_cert),
            "--tlskey", str(pki.server_key),
        ))  # fmt: skip
        image = daemon.busybox_image()
        api = "/v" + daemon.docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip()
        env = Env(daemon, plugin, args, name, policy, audit, tcp, certs, api, image)
        yield env
        plugin = env.plugin  # a test may have restarted it: stop the one running now
    finally:
        daemon.stop()
        if plugin.proc is not None and plugin.proc.poll() is None:
            plugin.stop()
        sock.unlink(missing_ok=True)


def test_local_socket_does_ordinary_work(env: Env) -> None:
    res = env.docker("run", "--rm", "--network", "none", "-v", "/srv:/srv:ro", env.image,
                     "echo", "ok")  # fmt: skip
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
    assert env.docker("ps", "-a").returncode == 0
    assert env.docker("images").returncode == 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--privileged"],
        ["-v", "/etc:/x"],
        ["-v", "/srv/../etc:/x"],
        ["--mount", "type=bind,source=/,target=/host"],
        [
            "--mount",
            "type=volume,target=/h,volume-driver=local,volume-opt=type=none,"
            "volume-opt=o=bind,volume-opt=device=/",
        ],
        ["--device", "/dev/null:/dev/x"],
        ["--cap-add", "SYS_ADMIN"],
        ["--security-opt", "seccomp=unconfined"],
        ["--security-opt", "systempaths=unconfined"],
        ["--pid", "host"],
        ["--network", "host"],
        ["--ipc", "host"],
        ["--uts", "host"],
        ["--userns", "host"],
        ["--cgroup-parent", "/evil"],
        ["--sysctl", "net.ipv4.ip_forward=1"],
        ["--volumes-from", "nonexistent"],
        ["--runtime", "io.containerd.runsc.v1"],
    ],
    ids=lambda f: " ".join(f)[:40],
)
def test_safe_denies_escapes_through_the_cli(env: Env, flags: list[str]) -> None:
    res = env.docker("create", *flags, env.image, "true")
    assert res.returncode != 0
    assert DENIED in res.stderr and env.name in res.stderr, res.stderr


def _create(env: Env, body: bytes, ctype: str | None = "application/json",
            path: str = "/containers/create") -> int:  # fmt: skip
    headers = {"Content-Type": ctype} if ctype else {}
    status, text = env.raw("POST", env.api + path, body, headers)
    if status < 300:  # an allowed create must not be left behind
        env.raw("DELETE", f"{env.api}/containers/{json.loads(text)['Id']}?force=1")
    return status


@pytest.mark.parametrize(
    ("body", "ctype", "path"),
    [
        (b'{"Image":"IMG","hostconfig":{"privileged":true}}', "application/json", None),
        (
            b'{"Image":"IMG","HostConfig":{"Privileged":false,"Privileged":true}}',
            "application/json",
            None,
        ),
        (
            b'{"Image":"IMG","HostConfig":{"Privileged":true},"HostConfig":{"Binds":null}}',
            "application/json",
            None,
        ),
        (
            '{"Image":"IMG","HostConfig":{"Bind\u017f":["/etc:/x"]}}'.encode(),
            "application/json",
            None,
        ),
        (
            b'{"Image":"IMG","HostConfig":{"Privileged":true}}',
            "application/json; charset=utf-8",
            None,
        ),
        (b'{"Image":"IMG","HostConfig":{"Privileged":true}}', None, None),
        (
            b'{"Image":"IMG","HostConfig":{"Privileged":true}}',
            "application/json",
            "/containers/%63reate",
        ),
        (b'{"Image":"IMG","HostConfig":{"CapAdd":"sys_admin"}}', "application/json", None),
        (
            b'{"Image":"IMG","HostConfig":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/x"}]}}',
            "application/json",
            None,
        ),
    ],
    ids=[
        "lower-case keys",
        "duplicate key",
        "repeated object merges",
        "long-s key",
        "charset",
        "no content type",
        "percent-encoded route",
        "cap as string",
        "Mounts bind",
    ],
)
def test_raw_spellings_of_escapes_are_denied(
    env: Env, body: bytes, ctype: str | None, path: str | None
) -> None:
    body = body.replace(b"IMG", env.image.encode())
    assert _create(env, body, ctype, path or "/containers/create") == 403
    # and the same body without the escape is allowed: the spelling itself is not refused
    plain = json.dumps(
        {"Image": env.image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    ).encode()
    assert _create(env, plain) in (200, 201)


def test_unversioned_route_is_judged_too(env: Env) -> None:
    body = json.dumps({"Image": env.image, "HostConfig": {"Privileged": True}}).encode()
    status, _ = env.raw("POST", "/containers/create", body, {"Content-Type": "application/json"})
    assert status == 403


def test_plugin_changes_denied(env: Env) -> None:
    status, text = env.raw("POST", f"{env.api}/plugins/{env.name}/disable")
    assert status == 403 and DENIED in text


def test_tls_users(env: Env) -> None:
    bob_ps = env.docker("ps", user="bob")
    assert bob_ps.returncode == 0, bob_ps.stderr
    bob_run = env.docker("create", "--network", "none", env.image, "true", user="bob")
    assert bob_run.returncode != 0 and DENIED in bob_run.stderr
    alice = env.docker("create", "--network", "none", env.image, "true", user="alice")
    assert alice.returncode == 0, alice.stderr
    assert env.docker("rm", alice.stdout.strip(), user="alice").returncode == 0
    # registries: bob may pull only from localhost:5000 (loopback: allowed, then fails)
    denied = env.docker("pull", "evil.test/x", user="bob")
    assert DENIED in denied.stderr
    allowed = env.docker("pull", "localhost:5000/x", user="bob", timeout=60)
    assert allowed.returncode != 0 and DENIED not in allowed.stderr, allowed.stderr
    principals = {line.get("principal") for line in env.audit_lines()}
    assert {"User::dockplug-alice", "User::dockplug-bob"} <= principals


def test_broken_policy_is_refused_and_the_old_one_stays(env: Env) -> None:
    bad = env.policy / "40-typo.cedar"
    bad.write_text('@id("typo")\nforbid (principal, action == Docker::Action::"container.list",'
                   " resource) when { context.privilegd };\n")  # fmt: skip
    try:
        assert wait_until(lambda: "policy refused" in env.plugin.output, 10)
        assert env.docker("ps").returncode == 0
        assert DENIED in env.docker("create", "--privileged", env.image, "true").stderr
        # a good change is taken
        bad.write_text('@id("bob-no-ps")\nforbid (principal == Docker::User::"dockplug-bob", '
                       'action == Docker::Action::"container.list", resource);\n')  # fmt: skip
        assert wait_until(lambda: DENIED in env.docker("ps", user="bob").stderr, 10)
    finally:
        bad.unlink()
        env.plugin.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_until(lambda: env.docker("ps", user="bob").returncode == 0, 10)


def test_audit_has_every_decision_and_no_secret(env: Env) -> None:
    res = env.docker("create", "--network", "none", "-e", f"TOKEN={SECRET}", "--label",
                     f"l={SECRET}", env.image, "true")  # fmt: skip
    assert res.returncode == 0, res.stderr
    env.docker("rm", res.stdout.strip())
    status, _ = env.raw("POST", f"{env.api}/build?buildargs=%7B%22P%22%3A%22{SECRET}%22%7D"
                        "&networkmode=host")  # fmt: skip
    assert status == 403
    asked = lambda: env.plugin.output.count("AuthZPlugin.AuthZReq")  # noqa: E731
    assert wait_until(lambda: len(env.audit_lines()) >= asked(), 10)
    lines = env.audit_lines()
    assert len(lines) == asked()
    assert SECRET not in env.audit.read_text()
    create = [x for x in lines if x.get("action") == "container.create"][-1]
    assert create["decision"] == "allow" and create["policies"] == ["local-ordinary-work"]
    assert "privileged" in create["attributes"]  # type: ignore[operator]


def test_dockplug_check_passes_against_the_plugin_dockerd_uses(env: Env) -> None:
    """As a user would check it: by plugin name, while this engine sends it every API call."""
    done = subprocess.run(
        [sys.executable, "-m", "dockplug", "check", "--type", "authz", env.name],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert env.docker("ps").returncode == 0  # dockerd's own calls went on meanwhile


def test_killing_the_plugin_makes_dockerd_refuse_and_a_restart_restores(env: Env) -> None:
    env.plugin.kill()
    began = time.monotonic()
    res = env.docker("ps", timeout=90)
    assert res.returncode != 0, "dockerd served a call with its authz plugin gone"
    env.plugin = SubprocessPlugin(env.args, wait_for=f"/run/docker/plugins/{env.name}.sock").start()
    assert env.docker("ps").returncode == 0
    assert env.plugin.started_in < 5, f"restart took {env.plugin.started_in:.1f}s"
    print(f"refused after {time.monotonic() - began:.1f}s")
