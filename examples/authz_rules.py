"""An authorization plugin: ordered allow/deny rules on method, path and request body; the first
matching rule decides, and anything the policy cannot read is denied (fail-closed).

Run ``sudo python examples/authz_rules.py [NAME] [RULES.json]``, then start dockerd with
``--authorization-plugin=NAME``. A rules file is a JSON list like ``DEFAULT_RULES``; ``body`` maps
a dotted key path (matched case-insensitively, as dockerd's own decoder does) to the value that
triggers the rule.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import dockplug
from dockplug.protocol.authz import AuthzReply

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "effect": "deny",
        "method": "POST",
        "path": r"/containers/create",
        "body": {"HostConfig.Privileged": True},
        "msg": "privileged containers are not allowed",
    },
    {
        "effect": "deny",
        "method": "POST",
        "path": r"/containers/create",
        "body": {"HostConfig.NetworkMode": "host"},
        "msg": "host networking is not allowed",
    },
    {"effect": "deny", "method": "POST", "path": r"/plugins/.*", "msg": "plugins are managed"},
    {"effect": "allow", "method": ".*", "path": ".*"},
]

_VERSION = re.compile(r"^/v\d+(\.\d+)?(?=/)")
_MISSING = object()


class PolicyError(ValueError):
    """The request cannot be judged: it is denied."""


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs  # keep every key, duplicates included, in order


def lookup(obj: Any, dotted: str) -> Any:
    """``HostConfig.Privileged`` the way Go's encoding/json reads it: keys match
    case-insensitively and the last matching key wins."""
    for part in dotted.split("."):
        if not isinstance(obj, list) or not all(isinstance(p, tuple) for p in obj):
            return _MISSING
        matches = [value for key, value in obj if key.lower() == part.lower()]
        if not matches:
            return _MISSING
        obj = matches[-1]
    return obj


def _plain(value: Any) -> Any:
    """A pairs-decoded value back to plain JSON types, for comparison with a rule."""
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class Rule:
    effect: str
    method: re.Pattern[str]
    path: re.Pattern[str]
    body: dict[str, Any] = field(default_factory=dict)
    msg: str = ""

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Rule:
        if data.get("effect") not in ("allow", "deny"):
            raise dockplug.ConfigError(f"rule {data!r}: effect must be 'allow' or 'deny'")
        return cls(
            data["effect"],
            re.compile(str(data.get("method", ".*"))),
            re.compile(str(data.get("path", ".*"))),
            dict(data.get("body") or {}),
            str(data.get("msg") or ""),
        )

    def matches(self, method: str, path: str, body: Any) -> bool:
        if not self.method.fullmatch(method) or not self.path.fullmatch(path):
            return False
        if self.body and body is None:  # too large for dockerd to forward, or not JSON
            raise PolicyError(f"{method} {path}: the request body this rule inspects is missing")
        return all(_plain(lookup(body, key)) == want for key, want in self.body.items())


class RulesPlugin(dockplug.AuthzPlugin):
    def __init__(self, rules: list[dict[str, Any]] | None = None) -> None:
        self.rules = [Rule.parse(r) for r in (DEFAULT_RULES if rules is None else rules)]

    def _judge(self, req: Any) -> AuthzReply:
        if not req.request_method or not req.request_uri:
            raise PolicyError("no RequestMethod or RequestUri")
        path = _VERSION.sub("", req.path)
        headers = {k.lower(): v for k, v in (req.request_headers or {}).items()}
        body: Any = None
        needs_body = any(r.body for r in self.rules)
        if needs_body and req.request_body:
            try:
                raw = req.body
            except ValueError as exc:
                raise PolicyError(f"RequestBody is not base64: {exc}") from exc
            if "json" in headers.get("content-type", "json"):
                try:
                    body = json.loads(raw, object_pairs_hook=_pairs)
                except ValueError as exc:
                    raise PolicyError(f"the request body is not JSON: {exc}") from exc
        for rule in self.rules:
            if rule.matches(req.request_method, path, body):
                if rule.effect == "allow":
                    return AuthzReply(allow=True)
                return AuthzReply(
                    allow=False, msg=rule.msg or f"denied: {req.request_method} {path}"
                )
        return AuthzReply(allow=False, msg=f"no rule allows {req.request_method} {path}")

    def authz_req(self, req: Any) -> AuthzReply:
        try:
            return self._judge(req)
        except Exception as exc:  # fail closed: a policy that cannot decide denies
            return AuthzReply(allow=False, msg=f"authz policy error: {exc}")

    def authz_res(self, req: Any) -> AuthzReply:
        return AuthzReply(allow=True)  # the request was judged before it ran


if __name__ == "__main__":
    loaded = json.loads(open(sys.argv[2]).read()) if len(sys.argv) > 2 else None  # noqa: SIM115
    dockplug.run(RulesPlugin(loaded), name=sys.argv[1] if len(sys.argv) > 1 else "rules")
