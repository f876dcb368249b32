"""``dockplug authz``: test a Cedar policy against its cases, explain one decision, print the
schema of the request model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dockplug.errors import ConfigError

_PATH = click.Path(path_type=Path, exists=True)


@click.group()
def authz() -> None:
    """Policies of the authorization plugin (dockplug serve authz)."""


@authz.command()
def schema() -> None:
    """Print the Cedar schema of dockplug's request model (a policy folder's schema.cedarschema)."""
    from dockplug.drivers.authz.policy import schema_text

    click.echo(schema_text(), nl=False)


@authz.command()
@click.argument("policy", type=_PATH)
@click.argument("cases", type=_PATH, required=False)
@click.option("--local-principal", default="local", show_default=True, metavar="NAME")
def test(policy: Path, cases: Path | None, local_principal: str) -> None:
    """Load POLICY (validated against the schema) and run its test cases (POLICY/tests.json
    or CASES). Exit status 1 if any fails."""
    from dockplug.drivers.authz.policy import load

    loaded = load(policy, local=local_principal or None, cases=cases, run_tests=False)
    if not loaded.cases:
        raise ConfigError(f"{policy}: no test cases; fix: add tests.json or give CASES")
    failures = loaded.run_cases()
    for f in failures:
        click.echo(f"FAIL {f}")
    passed = len(loaded.cases) - len(failures)
    click.echo(f"{passed} of {len(loaded.cases)} cases pass ({len(loaded.ids)} policies)")
    if failures:
        sys.exit(1)


def _context_attrs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        dot = node.get(".")
        if isinstance(dot, dict) and dot.get("left") == {"Var": "context"}:
            out.add(str(dot.get("attr")))
        for v in node.values():
            _context_attrs(v, out)
    elif isinstance(node, list):
        for v in node:
            _context_attrs(v, out)


@authz.command()
@click.argument("policy", type=_PATH)
@click.argument("request", type=_PATH)
@click.option("--local-principal", default="local", show_default=True, metavar="NAME")
def explain(policy: Path, request: Path, local_principal: str) -> None:
    """Which policy allowed or denied REQUEST.json, on which attributes.

    REQUEST is a test case ({"method", "uri", "body", "user"}) or an AuthZReq body as dockerd
    sends it ({"RequestMethod", "RequestUri", "RequestBody", ...})."""
    import cedarpy

    from dockplug.drivers.authz.model import ModelError, build, build_for
    from dockplug.drivers.authz.policy import case_request, load
    from dockplug.protocol.authz import AuthzRequest

    loaded = load(policy, local=local_principal or None, run_tests=False)
    try:
        data = json.loads(request.read_text())
    except ValueError as exc:
        raise ConfigError(f"{request}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{request}: expected a JSON object")
    try:
        if "RequestMethod" in data:
            m = build(AuthzRequest.model_validate(data), loaded.local, loaded.self_name)
        else:
            principal, req = case_request(data, str(request))
            m = build_for(principal, req, loaded.self_name)
    except ModelError as exc:
        click.echo(f"decision: deny (before any policy): {exc}")
        sys.exit(1)
    decision = loaded.decide(m)
    click.echo(f"principal: {m.principal.kind}::{m.principal.id}")
    click.echo(f"action:    {m.action}  ({m.route.method} {m.route.template or m.route.path})")
    click.echo(f"decision:  {'allow' if decision.allow else 'deny'}"
               + (f"  ({decision.reason})" if decision.reason else ""))  # fmt: skip
    static = json.loads(cedarpy.policies_to_json_str(loaded.text)).get("staticPolicies", {})
    by_id = {loaded.ids[k]: v for k, v in static.items()}
    for pid in decision.policies:
        attrs: set[str] = set()
        _context_attrs(by_id.get(pid, {}).get("conditions", []), attrs)
        effect = by_id.get(pid, {}).get("effect", "?")
        click.echo(f"  {effect} {pid}")
        for a in sorted(attrs):
            click.echo(f"      context.{a} = {json.dumps(m.context.get(a))}")
    if not decision.policies and not decision.errors:
        click.echo("  no policy matched: Cedar denies by default")
    click.echo("attributes:")
    for k, v in m.context.items():
        click.echo(f"  {k} = {json.dumps(v)}")
    if not decision.allow:
        sys.exit(1)
