"""Cedar policies: the schema dockplug's request model follows, loading (validated against that
schema), the policy folder's own test cases, and one decision.

Cedar denies by default and a ``forbid`` beats any ``permit``; but a policy whose condition
errors is skipped, and the answer may still be Allow. So any diagnostic error denies here.
Validation at load turns a misspelt attribute into a load error instead of a silent allow.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from dockplug.drivers.authz.model import (
    COMMON,
    NAMESPACE,
    SHAPES,
    ModelError,
    Modelled,
    Principal,
    build_for,
)
from dockplug.drivers.authz.routes import ACTIONS, ROUTES, UNKNOWN
from dockplug.errors import ConfigError
from dockplug.protocol.authz import AuthzRequest

RESOURCE = f'{NAMESPACE}::Engine::"docker"'
#: GET routes that are not "read": the swarm unlock key is a secret
_NOT_READ = {"swarm.unlockkey"}


def _read_actions() -> set[str]:
    methods: dict[str, set[str]] = {}
    for method, _, action in ROUTES:
        methods.setdefault(action, set()).add(method)
    return {a for a, ms in methods.items() if ms <= {"GET", "HEAD"} and a not in _NOT_READ}


READ_ACTIONS = _read_actions()
GROUPS = sorted({a.split(".", 1)[0] for a in ACTIONS if a != UNKNOWN})


def _record(attrs: dict[str, str]) -> str:
    return "{\n" + "".join(f'    "{k}": {t},\n' for k, t in attrs.items()) + "  }"


def schema_text() -> str:
    """The Cedar schema of dockplug's request model (``dockplug authz schema`` prints it)."""
    lines = [
        "// dockplug's request model (dockplug authz schema): every attribute is always set",
        f"namespace {NAMESPACE} {{",
        "  entity Group;",
        "  entity User in [Group] { cn: String, sans: Set<String>, fingerprint: String };",
        "  entity Local in [Group];",
        "  entity Engine;",
        f"  type Request = {_record(COMMON)};",
    ]
    types: dict[str, dict[str, str]] = {}
    for _, (type_name, attrs, _) in SHAPES.items():
        types[type_name] = {**COMMON, **attrs}
    for name, attrs in types.items():
        lines.append(f"  type {name} = {_record(attrs)};")
    lines.append("  action " + ", ".join(f'"{g}"' for g in ["read", *GROUPS]) + ";")
    for action in ACTIONS:
        parents = []
        if action in READ_ACTIONS:
            parents.append('Action::"read"')
        if action != UNKNOWN:
            parents.append(f'Action::"{action.split(".", 1)[0]}"')
        member = f" in [{', '.join(parents)}]" if parents else ""
        context = SHAPES[action][0] if action in SHAPES else "Request"
        lines.append(
            f'  action "{action}"{member} appliesTo {{ principal: [User, Local], '
            f"resource: Engine, context: {context} }};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _action_entities() -> list[dict[str, Any]]:
    """The action hierarchy as entities (``action in Action::"read"`` needs them)."""
    out = []
    for action in ["read", *GROUPS, *ACTIONS]:
        parents = []
        if action in READ_ACTIONS:
            parents.append({"type": f"{NAMESPACE}::Action", "id": "read"})
        if "." in action:
            parents.append({"type": f"{NAMESPACE}::Action", "id": action.split(".", 1)[0]})
        out.append(
            {"uid": {"type": f"{NAMESPACE}::Action", "id": action}, "attrs": {}, "parents": parents}
        )
    return out


class PolicyError(ConfigError):
    """A policy that cannot be loaded: it is refused (the last good one stays)."""


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str  # for the client (Msg) and the audit log
    policies: tuple[str, ...]  # the @id of each policy that decided
    errors: tuple[str, ...] = ()
    seconds: float = 0.0


@dataclass(frozen=True)
class Case:
    """One test case of a policy folder (``tests.json``)."""

    name: str
    principal: Principal
    request: AuthzRequest
    expect: bool
    policy: str | None  # the @id expected among the deciding policies


@dataclass
class Policy:
    source: str  # where it came from
    text: str
    ids: dict[str, str]  # cedar's policy0... -> @id
    annotations: dict[str, dict[str, str]]  # @id -> annotations
    groups: dict[str, list[str]]  # principal uid -> group ids
    cases: list[Case] = field(default_factory=list)
    local: str | None = "local"
    self_name: str = ""
    _policies: Any = None
    _schema: Any = None
    _entities: Any = None
    _actions: list[dict[str, Any]] = field(default_factory=list)
    _cache: dict[Principal, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._policies = cedarpy.PolicySet.from_str(self.text)
        self._schema = cedarpy.Schema.from_str(schema_text())
        self._actions = _action_entities()

    def entities(self, principal: Principal) -> list[dict[str, Any]]:
        attrs: dict[str, Any] = {}
        if principal.kind == "User":
            attrs = {"cn": principal.cn, "sans": list(principal.sans),
                     "fingerprint": principal.fingerprint}  # fmt: skip
        parents = [
            {"type": f"{NAMESPACE}::Group", "id": g} for g in self.groups.get(principal.uid, [])
        ]
        uid = {"type": f"{NAMESPACE}::{principal.kind}", "id": principal.id}
        return [*self._actions, {"uid": uid, "attrs": attrs, "parents": parents}]

    def _entities_for(self, principal: Principal) -> Any:
        """Parsed once per principal: parsing ~150 entities per call would cost more than
        the decision itself."""
        handle = self._cache.get(principal)
        if handle is None:
            if len(self._cache) >= 1024:
                self._cache.clear()
            handle = cedarpy.Entities.from_json_str(json.dumps(self.entities(principal)))
            self._cache[principal] = handle
        return handle

    def decide(self, m: Modelled) -> Decision:
        """Cedar's answer for one modelled request; Allow only without any diagnostic error."""
        started = time.perf_counter()
        request = {
            "principal": m.principal.uid,
            "action": f'{NAMESPACE}::Action::"{m.action}"',
            "resource": RESOURCE,
            "context": m.context,
        }
        result = cedarpy.is_authorized(
            request, self._policies, self._entities_for(m.principal), schema=self._schema
        )
        seconds = time.perf_counter() - started
        ids = tuple(self.ids.get(p, p) for p in result.diagnostics.reasons)
        errors = tuple(str(e) for e in result.diagnostics.errors)
        if errors:
            return Decision(False, f"policy evaluation error: {errors[0]}", ids, errors, seconds)
        if result.allowed:
            return Decision(True, "", ids, (), seconds)
        if ids:
            notes = [self.annotations.get(i, {}).get("reason") or i for i in ids]
            return Decision(False, "denied by policy: " + "; ".join(notes), ids, (), seconds)
        who = f"{m.principal.kind}::{m.principal.id}"
        return Decision(False, f"no policy permits {m.action} for {who}", (), (), seconds)

    def run_cases(self) -> list[str]:
        """The failures of this policy's own test cases (empty: all pass)."""
        failures = []
        for case in self.cases:
            try:
                decision = self.decide(build_for(case.principal, case.request, self.self_name))
                allow, ids, reason = decision.allow, decision.policies, decision.reason
            except ModelError as exc:
                allow, ids, reason = False, (), str(exc)
            want = "allow" if case.expect else "deny"
            got = "allow" if allow else "deny"
            if allow != case.expect:
                failures.append(f"{case.name}: expected {want}, got {got} ({reason or 'allowed'})")
            elif case.policy and case.policy not in ids:
                failures.append(
                    f"{case.name}: {got} as expected, but by {list(ids) or 'default deny'}, "
                    f"not {case.policy!r}"
                )
        return failures


_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.cedar"))
        if not files:
            raise PolicyError(f"{path}: no *.cedar policy files; fix: add policy.cedar")
        return files
    if path.is_file():
        return [path]
    raise PolicyError(f"{path}: no such policy file or folder; fix: --policy DIR|FILE")


def _groups(path: Path) -> dict[str, list[str]]:
    """``groups.json``: {"GROUP": {"users": [CN...], "local": [NAME...]}}."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise PolicyError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f'{path}: expected {{"GROUP": {{"users": [...], "local": [...]}}}}')
    out: dict[str, list[str]] = {}
    for group, members in data.items():
        if not isinstance(members, dict) or set(members) - {"users", "local"}:
            raise PolicyError(
                f'{path}: group {group!r}: expected {{"users": [...], "local": [...]}}'
            )
        for key, kind in (("users", "User"), ("local", "Local")):
            names = members.get(key, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise PolicyError(f"{path}: group {group!r}.{key}: expected a list of names")
            for n in names:
                out.setdefault(f'{NAMESPACE}::{kind}::"{n}"', []).append(group)
    return out


def case_request(data: dict[str, Any], where: str) -> tuple[Principal, AuthzRequest]:
    """A test case's request: ``method``, ``uri``, ``body`` (JSON) or ``body_raw`` (text),
    ``headers``; ``user`` (a TLS CN) or ``local`` (a local principal name)."""
    if not isinstance(data.get("method"), str) or not isinstance(data.get("uri"), str):
        raise PolicyError(f'{where}: needs "method" and "uri" strings')
    headers = dict(data.get("headers") or {})
    raw: bytes | None = None
    if "body_raw" in data:
        raw = str(data["body_raw"]).encode()
    elif "body" in data:
        raw = json.dumps(data["body"]).encode()
    if raw is not None:
        headers.setdefault("Content-Type", "application/json")
    user = data.get("user")
    if user:
        principal = Principal("User", str(user), str(user))
    else:
        principal = Principal("Local", str(data.get("local") or "local"))
    req = AuthzRequest.model_validate(
        {
            "RequestMethod": data["method"],
            "RequestUri": data["uri"],
            "RequestHeaders": headers,
            **({"RequestBody": base64.b64encode(raw).decode()} if raw is not None else {}),
        }
    )
    return principal, req


def load_cases(path: Path) -> list[Case]:
    """``tests.json``: [{"name", "expect": "allow"|"deny", "policy"?: @id, ...request}]."""
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise PolicyError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise PolicyError(f"{path}: expected a JSON list of test cases")
    cases = []
    for i, item in enumerate(data):
        where = f"{path} case {i} ({item.get('name', '?') if isinstance(item, dict) else '?'})"
        if not isinstance(item, dict) or item.get("expect") not in ("allow", "deny"):
            raise PolicyError(f'{where}: needs "expect": "allow" or "deny"')
        principal, req = case_request(item, where)
        cases.append(
            Case(str(item.get("name", f"case {i}")), principal, req, item["expect"] == "allow",
                 item.get("policy"))
        )  # fmt: skip
    return cases


def load(path: Path, local: str | None = "local", self_name: str = "",
         cases: Path | None = None, run_tests: bool = True) -> Policy:  # fmt: skip
    """Compile, validate against the schema, and run the folder's test cases; PolicyError
    names what is wrong."""
    path = Path(path)
    files = _policy_files(path)
    text = "\n".join(f.read_text() for f in files)
    where = str(path)
    schema = schema_text()
    if path.is_dir() and (path / "schema.cedarschema").is_file():
        theirs = (path / "schema.cedarschema").read_text()
        if theirs.split() != schema.split():
            raise PolicyError(
                f"{path}/schema.cedarschema is not dockplug's request model; fix: "
                f"dockplug authz schema > {path}/schema.cedarschema"
            )
    try:
        as_json = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise PolicyError(f"{where}: does not parse: {exc}") from exc
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        errors = "; ".join(str(e) for e in result.errors[:5])
        raise PolicyError(f"{where}: fails validation against the schema: {errors}")
    ids: dict[str, str] = {}
    annotations: dict[str, dict[str, str]] = {}
    for pid, body in (as_json.get("staticPolicies") or {}).items():
        notes = body.get("annotations") or {}
        name = notes.get("id")
        if not name or not _ID.match(name):
            raise PolicyError(
                f'{where}: policy {pid} has no @id("name"); fix: give each policy an @id, '
                "the audit log and explain name it"
            )
        if name in annotations:
            raise PolicyError(f"{where}: @id({name!r}) is used twice")
        ids[pid] = name
        annotations[name] = {k: str(v) for k, v in notes.items()}
    if as_json.get("templates"):
        raise PolicyError(f"{where}: templates are not supported; fix: write static policies")
    groups = _groups(path / "groups.json") if path.is_dir() else {}
    policy = Policy(where, text, ids, annotations, groups, local=local, self_name=self_name)
    case_file = cases or (path / "tests.json" if path.is_dir() else None)
    if case_file is not None and case_file.is_file():
        policy.cases = load_cases(case_file)
    if run_tests and policy.cases:
        failures = policy.run_cases()
        if failures:
            raise PolicyError(
                f"{where}: {len(failures)} of {len(policy.cases)} test cases fail: "
                + "; ".join(failures[:3])
            )
    return policy
