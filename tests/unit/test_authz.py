"""The authorization plugin without dockerd: route table, Go-faithful bodies, the request model,
policy loading and fail-closed decisions, audit, the CLI, and ``dockplug check --type authz``."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.drivers.authz import body as B
from dockplug.drivers.authz.audit import AuditLog
from dockplug.drivers.authz.driver import CedarAuthz
from dockplug.drivers.authz.model import ModelError, build, registry_of, within
from dockplug.drivers.authz.policy import PolicyError, load, schema_text
from dockplug.drivers.authz.routes import ACTIONS, ROUTES, UNKNOWN, resolve
from dockplug.protocol.authz import AuthzRequest
from dockplug.testing.pki import client_certificate, make_certificates

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "authz"


def req(method: str, uri: str, body: Any = None, raw: bytes | None = None,
        ctype: str | None = "application/json", **kw: Any) -> AuthzRequest:  # fmt: skip
    data: dict[str, Any] = {"RequestMethod": method, "RequestUri": uri, **kw}
    if ctype:
        data["RequestHeaders"] = {"Content-Type": ctype}
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if payload is not None:
        data["RequestBody"] = base64.b64encode(payload).decode()
    return AuthzRequest.model_validate(data)


# --- routes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "uri", "action", "target"),
    [
        ("POST", "/containers/buildx/start", "container.start", "buildx"),
        ("POST", "/v1.41/build", "build.run", ""),
        ("POST", "/v1.50/containers/%63reate?name=x", "container.create", ""),
        ("POST", "/containers/a%2Fb/start", "container.start", "a/b"),
        ("GET", "/v1.41/containers/json?all=1", "container.list", ""),
        ("GET", "/containers/x/../json", "container.list", ""),
        ("GET", "http://docker/v1.41/info", "system.info", ""),
        (
            "DELETE",
            "/v1.41/plugins/dockplug-authz:latest",
            "plugin.delete",
            "dockplug-authz:latest",
        ),
        ("POST", "/v1.41/containers/x/teleport", UNKNOWN, ""),
        ("get", "/containers/json", UNKNOWN, ""),
        ("HEAD", "/containers/json", UNKNOWN, ""),
        ("GET", "/services/a/b", UNKNOWN, ""),
    ],
)
def test_routes_resolve_as_dockerd_routes(method: str, uri: str, action: str, target: str) -> None:
    route = resolve(method, uri)
    assert (route.action, route.target) == (action, target)


def test_route_table_is_anchored_and_complete() -> None:
    assert resolve("POST", "/xcontainers/create").action == UNKNOWN
    assert resolve("POST", "/containers/createx").action == UNKNOWN
    assert len(ROUTES) > 120 and "plugin.disable" in ACTIONS
    assert resolve("POST", "/v1.41/build?x=1").query == {"x": ["1"]}


def test_query_reads_as_go_reads_it() -> None:
    r = resolve("POST", "/images/create?fromImage=a&fromImage=b&bad;=1&x=%zz&t=a+b")
    assert r.arg("fromImage") == "a" and "bad;" not in r.query and "x" not in r.query
    assert r.arg("t") == "a b"


def test_invalid_percent_escape_is_a_model_error() -> None:
    with pytest.raises(ModelError):
        build(req("GET", "/containers/%zz/json"), "local")


# --- bodies -----------------------------------------------------------------------------------
def test_keys_fold_and_the_last_duplicate_wins() -> None:
    raw = (
        '{"hostconfig":{"Privileged":true,"privileged":false},'
        '"HOSTCONFIG":{"Bind\u017f":["/a:/b"]}}'
    )
    got = B.decode(B.CONTAINER_CREATE, raw.encode())
    assert got["HostConfig"] == {"Privileged": False, "Binds": ["/a:/b"]}


def test_null_leaves_a_bool_alone_and_clears_a_slice() -> None:
    raw = (
        b'{"HostConfig":{"Privileged":true,"Binds":["/a:/b"]},'
        b'"HostConfig":{"Privileged":null,"Binds":null}}'
    )
    assert B.decode(B.CONTAINER_CREATE, raw)["HostConfig"] == {"Privileged": True, "Binds": None}


def test_strslice_and_type_errors() -> None:
    assert B.decode(B.CONTAINER_CREATE, b'{"HostConfig":{"CapAdd":"X"}}')["HostConfig"][
        "CapAdd"
    ] == ["X"]
    with pytest.raises(B.BodyError, match="expected bool"):
        B.decode(B.CONTAINER_CREATE, b'{"HostConfig":{"Privileged":"true"}}')


@pytest.mark.parametrize(
    "raw",
    [b'\xef\xbb\xbf{"Image":"x"}', b'{"Image":NaN}', b'{"Image":"x"} {"Image":"y"}',
     '{"HostConfig":{"Pr\u0130vileged":true}}'.encode(), b"[" * 100000],
)  # fmt: skip
def test_what_go_refuses_or_reads_differently_is_refused(raw: bytes) -> None:
    with pytest.raises(B.BodyError):
        B.decode(B.CONTAINER_CREATE, raw)


# --- model ------------------------------------------------------------------------------------
def test_container_create_model() -> None:
    body = {"Image": "x", "Env": ["TOKEN=s3cret"], "HostConfig": {
        "Binds": ["/srv/a/../b:/x", "named:/y", "/anon"], "CapAdd": ["net_admin", "CAP_CHOWN"],
        "SecurityOpt": ["seccomp={\"x\":1}", "label:disable"], "PidMode": "host",
        "Mounts": [{"Type": "volume", "Target": "/v", "VolumeOptions": {"DriverConfig": {
            "Options": {"type": "ext4", "device": "/dev/sdb"}}}}],
    }}  # fmt: skip
    ctx = build(req("POST", "/v1.41/containers/create?name=w", body), "local").context
    assert ctx["binds"] == ["/srv/b"] and "/srv" in ctx["binds_within"]
    assert ctx["cap_add"] == ["CAP_NET_ADMIN", "CAP_CHOWN"]
    assert ctx["seccomp"] == "custom" and ctx["label_disable"]
    assert ctx["host_namespaces"] == ["pid"] and ctx["volume_devices"] == ["/dev/sdb"]
    assert ctx["name"] == "w" and "s3cret" not in json.dumps(ctx)


def test_within_and_registries() -> None:
    assert within(["/srv/a", "/srv/b/c"]) == ["/", "/srv"]
    assert within([]) == []
    assert registry_of("busybox") == ("docker.io", "docker.io/library/busybox")
    assert registry_of("REG.test:5000/a/b")[0] == "reg.test:5000"
    assert registry_of("index.docker.io/x/y")[0] == "docker.io"


@pytest.mark.parametrize(
    ("r", "match"),
    [
        (req("POST", "/containers/create", ctype="application/json; charset=utf-8"), "missing"),
        (req("POST", "/images/create", ctype="application/x-www-form-urlencoded"), "form"),
        (req("GET", "/info", User="alice", UserAuthNMethod="TLS"), "without a peer"),
        (req("GET", "/info", User="alice"), "not authenticated by TLS"),
        (req("POST", "/containers/create", raw=b"%%%"), "JSON"),
    ],
)
def test_unreadable_requests_are_model_errors(r: AuthzRequest, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build(r, "local")


def test_no_local_principal_denies_socket_requests() -> None:
    with pytest.raises(ModelError, match="no local principal"):
        build(req("GET", "/info"), None)


def test_tls_principal_from_the_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    make_certificates(tmp_path)
    cert, _ = client_certificate(tmp_path, "alice")
    pem = base64.b64encode(cert.read_bytes()).decode()
    ok = build(req("GET", "/info", User="dockplug-alice", UserAuthNMethod="TLS",
                   RequestPeerCertificates=[pem]), "local")  # fmt: skip
    assert ok.principal.kind == "User" and ok.principal.id == "dockplug-alice"
    assert len(ok.principal.fingerprint) == 64
    with pytest.raises(ModelError, match="is not the certificate's CN"):
        build(req("GET", "/info", User="root", UserAuthNMethod="TLS",
                  RequestPeerCertificates=[pem]), "local")  # fmt: skip


# --- policies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("example", ["safe", "readonly", "registries"])
def test_examples_load_and_pass_their_cases(example: str) -> None:
    policy = load(EXAMPLES / example)
    assert policy.cases and policy.run_cases() == []
    assert (EXAMPLES / example / "schema.cedarschema").read_text() == schema_text()


def _folder(tmp_path: Path, text: str) -> Path:
    (tmp_path / "p.cedar").write_text(text)
    return tmp_path


def test_misspelt_attribute_is_a_load_error(tmp_path: Path) -> None:
    text = (
        '@id("x")\nforbid (principal, action == Docker::Action::"container.create", resource)'
        " when { context.privilegd };"
    )
    with pytest.raises(PolicyError, match="validation"):
        load(_folder(tmp_path, text))


def test_policy_needs_an_id_and_a_matching_schema(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="@id"):
        load(_folder(tmp_path, "permit (principal, action, resource);"))
    (tmp_path / "p.cedar").write_text('@id("a")\npermit (principal, action, resource);')
    (tmp_path / "schema.cedarschema").write_text("namespace Docker {}")
    with pytest.raises(PolicyError, match="dockplug authz schema"):
        load(tmp_path)


def test_failing_test_case_refuses_the_policy(tmp_path: Path) -> None:
    _folder(tmp_path, '@id("all")\npermit (principal, action, resource);')
    case = {"name": "no ps", "method": "GET", "uri": "/containers/json", "expect": "deny"}
    (tmp_path / "tests.json").write_text(json.dumps([case]))
    with pytest.raises(PolicyError, match="1 of 1 test cases fail"):
        load(tmp_path)


def test_an_erroring_forbid_denies(tmp_path: Path) -> None:
    """Cedar skips a forbid whose condition errors (here an overflow) and may answer Allow."""
    policy = load(_folder(tmp_path, (
        '@id("all")\npermit (principal, action, resource);\n'
        '@id("overflow")\n'
        'forbid (principal, action == Docker::Action::"container.create", resource)'
        " when { context.device_requests + 9223372036854775807 > 0 };"
    )))  # fmt: skip
    body = {"HostConfig": {"DeviceRequests": [{"Count": 1}]}}
    decision = policy.decide(build(req("POST", "/containers/create", body), "local"))
    assert not decision.allow and decision.errors and "evaluation error" in decision.reason


# --- driver -----------------------------------------------------------------------------------
def test_missing_policy_denies_with_a_reason(tmp_path: Path) -> None:
    plugin = CedarAuthz(tmp_path / "nowhere", watch_interval=0)
    reply = plugin.authz_req(req("GET", "/_ping"))
    assert not reply.allow and "no valid authorization policy" in (reply.msg or "")


def test_over_budget_and_exceptions_deny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = CedarAuthz(EXAMPLES / "safe", watch_interval=0, time_budget=0.001)
    policy = plugin.store.current
    assert policy is not None
    real = policy.decide
    monkeypatch.setattr(policy, "decide", lambda m: (time.sleep(0.01), real(m))[1])
    reply = plugin.authz_req(req("GET", "/_ping"))
    assert not reply.allow and "budget" in (reply.msg or "")
    monkeypatch.setattr(policy, "decide", lambda m: 1 / 0)
    reply = plugin.authz_req(req("GET", "/_ping"))
    assert not reply.allow and "ZeroDivisionError" in (reply.msg or "")


def test_reload_keeps_the_last_good_policy(tmp_path: Path) -> None:
    folder = _folder(tmp_path, '@id("all")\npermit (principal, action, resource);')
    plugin = CedarAuthz(folder, watch_interval=0)
    (folder / "p.cedar").write_text("permit (principal, action, resource")
    assert plugin.store.reload() is False
    assert plugin.authz_req(req("GET", "/_ping")).allow
    (folder / "p.cedar").write_text('@id("none")\nforbid (principal, action, resource);')
    assert plugin.store.reload() is True and not plugin.authz_req(req("GET", "/_ping")).allow


def test_audit_never_blocks_and_writes_every_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", queue_size=4)
    log._queue.maxsize = 4
    started = time.perf_counter()
    for i in range(1000):
        log.record({"i": i})
    assert time.perf_counter() - started < 0.5
    log.close()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) + log.dropped >= 1000 or any("audit-dropped" in x for x in lines)


def test_audit_lines_of_the_driver(tmp_path: Path) -> None:
    plugin = CedarAuthz(EXAMPLES / "safe", audit_log=tmp_path / "a.log", watch_interval=0)
    body = {"Image": "x", "Env": ["PW=s3cret"], "HostConfig": {"Privileged": True}}
    plugin.authz_req(req("POST", "/v1.41/containers/create?name=x", body))
    plugin.authz_req(req("POST", "/v1.41/build?buildargs=%7B%22PW%22%3A%22s3cret%22%7D"))
    plugin.shutdown()
    text = (tmp_path / "a.log").read_text()
    first, second = (json.loads(x) for x in text.splitlines())
    assert first["decision"] == "deny" and first["policies"] == ["no-privileged"]
    assert second["decision"] == "allow" and "s3cret" not in text


# --- CLI and conformance ----------------------------------------------------------------------
def test_cli_test_and_explain(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["authz", "test", str(EXAMPLES / "safe")])
    assert res.exit_code == 0 and "48 of 48" in res.output
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"method": "POST", "uri": "/containers/create",
                                   "body": {"HostConfig": {"Binds": ["/etc:/x"]}}}))  # fmt: skip
    res = runner.invoke(cli, ["authz", "explain", str(EXAMPLES / "safe"), str(request)])
    assert res.exit_code == 1
    assert "forbid binds-only-under-srv" in res.output and 'context.binds = ["/etc"]' in res.output


def test_conformance_passes(serve_plugin: Any, conformance: Any, tmp_path: Path) -> None:
    plugin = serve_plugin(CedarAuthz(EXAMPLES / "safe", watch_interval=0))
    report = conformance(plugin.url, kind="authz")
    assert report.ok, report.failures()


def test_decisions_and_reloads_are_counted_and_a_missing_policy_is_unhealthy(
    tmp_path: Path, short_tmp: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from dockplug.server.runner import ServeOptions
    from dockplug.testing.servers import ThreadedPlugin

    driver = CedarAuthz(EXAMPLES / "safe", watch_interval=0)
    opts = ServeOptions(name="az", socket=short_tmp / "az.sock", announce="none",
                        metrics=f"unix:{short_tmp / 'm.sock'}")  # fmt: skip
    with ThreadedPlugin(driver, opts) as plugin, plugin.client() as client:
        get = req("GET", "/v1.41/containers/json")
        ok = client.call("AuthZPlugin.AuthZReq", json.loads(get.wire()))
        bad = {"HostConfig": {"Privileged": True}}
        post = req("POST", "/v1.41/containers/create", bad)
        no = client.call("AuthZPlugin.AuthZReq", json.loads(post.wire()))
        assert ok.json["Allow"] is True and no.json["Allow"] is False
        driver.store.reload()
        text = plugin.server.metrics.exposition().decode()  # type: ignore[attr-defined]
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
        }  # fmt: skip
        allowed = (
            "dockplug_authz_decisions_total",
            (("action", "container.list"), ("result", "allow")),
        )
        denied = (
            "dockplug_authz_decisions_total",
            (("action", "container.create"), ("result", "deny")),
        )
        assert samples[allowed] == 1 and samples[denied] == 1
        assert samples[("dockplug_authz_policy_reloads_total", (("result", "ok"),))] == 1
        assert driver.health_reasons() == []
    broken = CedarAuthz(tmp_path / "missing", watch_interval=0)
    reasons = broken.health_reasons()
    assert len(reasons) == 1 and "every request is denied" in reasons[0]
