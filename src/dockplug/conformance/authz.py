"""Authorization plugin checks (plugin-protocol.md §6): the AuthZReq/AuthZRes pairs dockerd sends
around API calls, with its reading of the verdict: only ``Allow`` on a 200 reply counts (``Err``
there is ignored), anything else denies (fail-closed).

The harness does not know the plugin's policy: it checks the shape of every verdict, that denials
carry a reason, and that garbage is never allowed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from dockplug.client import Reply
from dockplug.conformance.checks import (
    Check,
    Context,
    Outcome,
    Skip,
    announces,
    check,
    concurrently,
    connection_failures,
    describe,
    failed,
    passed,
    reply_format,
    reply_json,
    warned,
)
from dockplug.conformance.robustness import reject_garbage
from dockplug.conformance.shapes import casing_problems

CHECKS: list[Check] = []
REQ, RES = "AuthZPlugin.AuthZReq", "AuthZPlugin.AuthZRes"
# dockerd 20.10's API version, as the docker CLI sends it; RequestUri carries the version the
# client negotiated (/v1.45 on 26, /v1.50 on 28, recorded), so policies must not pin it
API = "/v1.41"
CLIENT = {"User-Agent": "Docker-Client/20.10.24+dfsg1 (linux)"}
CREATE: dict[str, Any] = {
    "Image": "busybox",
    "Cmd": ["true"],
    "HostConfig": {"Privileged": False, "Binds": None, "NetworkMode": "default"},
}


def _b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode() + b"\n"
    return base64.b64encode(raw).decode()


def request(
    method: str, uri: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An AuthZReq body as dockerd builds it: omitempty fields, flattened headers, base64 body
    only for JSON requests."""
    req: dict[str, Any] = {"RequestMethod": method, "RequestUri": uri}
    hdrs = dict(CLIENT) if headers is None else dict(headers)
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        req["RequestBody"] = _b64(body)
    if hdrs:
        req["RequestHeaders"] = hdrs
    return req


@dataclass
class AuthzContext(Context):
    def error(self, reply: Reply) -> str | None:
        """dockerd's authz reading: non-200 or an undecodable body fails the API call (500);
        ``Err`` on a 200 reply is ignored."""
        if reply.status != 200:
            data = reply_json(reply)
            if isinstance(data, dict) and data.get("Err"):
                return str(data["Err"])
            return reply.raw.decode("utf-8", "replace") or f"HTTP {reply.status}"
        if not isinstance(reply_json(reply), dict):
            return f"HTTP 200 with a body that is not a JSON object: {reply.raw[:80]!r}"
        return None

    def ask(self, endpoint: str, body: dict[str, Any], what: str) -> tuple[bool | None, str]:
        """Sends one request; returns (allowed, evidence) where allowed is None when the reply
        is malformed (evidence says why). Verdicts are kept for the Msg check."""
        reply = self.call(endpoint, body, expect_ok=True)
        allowed, problems = verdict(self, reply)
        if reply.status != 200:
            problems.append(f"{describe(reply)}: dockerd fails the API call (HTTP 500)")
        self.state.setdefault("verdicts", []).append((what, allowed, reply))
        if problems:
            return None, f"{what}: " + "; ".join(problems)
        word = "allowed" if allowed else "denied"
        return allowed, f"{what}: {word} ({describe(reply)})"


def verdict(ctx: AuthzContext, reply: Reply) -> tuple[bool, list[str]]:
    """What dockerd decides (True: allow) and what is wrong with the reply."""
    if (err := ctx.error(reply)) is not None:
        return False, ([] if reply.status != 200 else [err])
    data: dict[str, Any] = reply_json(reply)
    problems = casing_problems(data, ("Allow", "Msg", "Err"), "reply")
    low = {k.lower(): v for k, v in data.items()}
    allow = low.get("allow")
    if "allow" not in low:
        problems.append('no "Allow" key: dockerd reads it as a denial')
    elif not isinstance(allow, bool):
        problems.append(f"Allow is {allow!r:.40}, not a boolean (Go fails to decode: HTTP 500)")
        allow = False
    msg = low.get("msg")
    if msg is not None and not isinstance(msg, str):
        problems.append(f"Msg is {msg!r:.40}, not a string")
    if low.get("err") and allow is True:
        problems.append(
            f'"Allow": true with "Err" {low["err"]!r:.60}: dockerd ignores Err on a 200 reply '
            'and ALLOWS the call; deny with "Allow": false and the reason in Msg'
        )
    return allow is True, problems


def _one(ctx: AuthzContext, endpoint: str, body: dict[str, Any], what: str) -> Outcome:
    allowed, evidence = ctx.ask(endpoint, body, what)
    return failed(evidence) if allowed is None else passed(evidence)


@check(CHECKS, "Z01", "Activate announces authz (lower case)", "protocol §2, §6.1")
def activate(ctx: AuthzContext) -> Outcome:
    return announces(ctx, "authz")


@check(CHECKS, "Z02", "AuthZReq for HEAD /_ping: a boolean Allow", "protocol §6.2-6.3")
def ping(ctx: AuthzContext) -> Outcome:
    allowed, evidence = ctx.ask(REQ, request("HEAD", "/_ping"), "HEAD /_ping")
    if allowed is None:
        return failed(evidence)
    if not allowed:
        return warned(f"{evidence}: the docker CLI pings before every command")
    return passed(evidence)


@check(CHECKS, "Z03", "AuthZReq for GET /version (no body)", "protocol §6.2")
def version(ctx: AuthzContext) -> Outcome:
    return _one(ctx, REQ, request("GET", f"{API}/version"), f"GET {API}/version")


@check(CHECKS, "Z04", "AuthZReq for containers/create: base64 JSON body", "protocol §6.2")
def create(ctx: AuthzContext) -> Outcome:
    uri = f"{API}/containers/create?name={ctx.name('c')}"
    privileged = CREATE | {"HostConfig": CREATE["HostConfig"] | {"Privileged": True}}
    evidence = []
    for body, what in ((CREATE, "plain"), (privileged, "--privileged")):
        allowed, ev = ctx.ask(REQ, request("POST", uri, body), f"POST containers/create {what}")
        if allowed is None:
            return failed(ev)
        evidence.append(ev)
    return passed("; ".join(evidence))


@check(CHECKS, "Z05", "AuthZRes with status, headers and base64 body", "protocol §6.2-6.3")
def response(ctx: AuthzContext) -> Outcome:
    body = request("POST", f"{API}/containers/create?name={ctx.name('c')}", CREATE)
    body |= {
        "ResponseStatusCode": 201,
        "ResponseHeaders": {"Content-Type": "application/json", "Api-Version": "1.41"},
        "ResponseBody": _b64({"Id": "0" * 64, "Warnings": []}),
    }
    return _one(ctx, RES, body, "AuthZRes containers/create")


@check(CHECKS, "Z06", "Absent optional fields and a TLS user are handled", "protocol §6.2")
def optional_fields(ctx: AuthzContext) -> Outcome:
    minimal = {"RequestMethod": "GET", "RequestUri": f"{API}/info"}
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    tls = request("GET", f"{API}/containers/json?all=1") | {
        "User": "alice",
        "UserAuthNMethod": "TLS",
        "RequestPeerCertificates": [base64.b64encode(pem).decode()],
    }
    res_minimal = {"RequestMethod": "GET", "RequestUri": f"{API}/info", "ResponseStatusCode": 200}
    evidence: list[str] = []
    for endpoint, body, what in (
        (REQ, minimal, "no headers"),
        (REQ, tls, "TLS user"),
        (RES, res_minimal, "AuthZRes without body"),
    ):
        allowed, ev = ctx.ask(endpoint, body, what)
        if allowed is None:
            return failed(ev)
        evidence.append(ev.split(" (", 1)[0])
    return passed("; ".join(evidence))


@check(CHECKS, "Z07", "A denial carries a reason (Msg)", "protocol §6.3")
def reasons(ctx: AuthzContext) -> Outcome:
    verdicts: list[tuple[str, bool | None, Reply]] = ctx.state.get("verdicts", [])
    if not verdicts:
        raise Skip("no verdicts recorded")
    denied = [(w, r) for w, allowed, r in verdicts if allowed is False and r.status == 200]
    silent = [w for w, r in denied if not str((reply_json(r) or {}).get("Msg") or "").strip()]
    if silent:
        return warned(
            f"denied without Msg: {silent[:3]}; the client only sees "
            "'authorization denied by plugin NAME: '"
        )
    if not denied:
        return passed(f"none of the {len(verdicts)} requests was denied")
    return passed(f"{len(denied)} denials, each with a Msg")


@check(CHECKS, "Z08", "20 AuthZReq calls at once all get a verdict", "protocol §1.9, §6")
def parallel(ctx: AuthzContext) -> Outcome:
    results = concurrently(ctx, REQ, request("GET", f"{API}/containers/json"))
    if (lost := connection_failures(results)) is not None:
        return failed(lost)
    outcomes = [verdict(ctx, r) for r in results if isinstance(r, Reply)]
    bad = [p for _, problems in outcomes for p in problems]
    if bad:
        return failed(f"{len(bad)} malformed verdicts, e.g. {bad[0]}")
    decisions = {allowed for allowed, _ in outcomes}
    if len(decisions) > 1:
        return failed("the same request got different verdicts when sent concurrently")
    return passed(f"20 verdicts, all {'allow' if decisions.pop() else 'deny'}")


@check(CHECKS, "Z09", "Undecodable bodies are never allowed (fail-closed)", "protocol §6.3")
def garbage(ctx: AuthzContext) -> Outcome:
    def allowed(_: str, reply: Reply) -> bool:
        return verdict(ctx, reply)[0]

    fields = {
        "RequestMethod": "str",
        "RequestUri": "str",
        "RequestBody": "str",
        "RequestHeaders": "map",
        "RequestPeerCertificates": "list",
        "User": "str",
    }
    res = fields | {"ResponseStatusCode": "int", "ResponseBody": "str", "ResponseHeaders": "map"}
    outcome = reject_garbage(ctx, {REQ: (True, fields), RES: (True, res)}, allowed)
    if outcome.result.value == "fail":
        return outcome
    # JSON that decodes but carries a body dockerd would never send
    odd = [
        request("POST", f"{API}/containers/create") | {"RequestBody": "%%% not base64 %%%"},
        request("POST", f"{API}/containers/create", b'{"HostConfig": {"Privileged": tru'),
    ]
    lenient = []
    for body in odd:
        reply = ctx.call(REQ, body, expect_ok=False)
        if verdict(ctx, reply)[0]:
            lenient.append(f"{str(body.get('RequestBody'))[:24]!r} -> {describe(reply)}")
    if lenient:
        return warned(
            f"{outcome.evidence}; but a body the plugin cannot read is allowed: {lenient[0]}"
        )
    return outcome


@check(CHECKS, "Z10", "Replies: exactly 200 + JSON, Err only on non-200", "protocol §1.6, §6.3")
def replies(ctx: AuthzContext) -> Outcome:
    return reply_format(ctx, err_on_200=False)  # Allow:true + Err is Z02-Z06's finding
