"""Runs a kind's checks in order against one plugin, cleans up, and builds the report."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dockplug.client import resolve
from dockplug.conformance import authz, ipam, log, network, replay, robustness, volume
from dockplug.conformance.checks import (
    Check,
    Context,
    Outcome,
    Result,
    Skip,
    VolumeContext,
    failed,
)
from dockplug.conformance.engine import EngineInfo
from dockplug.server.discovery import HostPaths, PluginAddress

KINDS: dict[str, list[Check]] = {
    "volume": [*volume.CHECKS, *robustness.CHECKS, *replay.CHECKS],
    "network": network.CHECKS,
    "ipam": [*ipam.CHECKS, *replay.IPAM_CHECKS],
    "authz": [*authz.CHECKS, *replay.AUTHZ_CHECKS],
    "log": log.CHECKS,
}

# Each kind's context class; a kind registered without one gets the volume context.
CONTEXTS: dict[str, type[Context]] = {
    "volume": VolumeContext,
    "network": network.NetworkContext,
    "ipam": ipam.IpamContext,
    "authz": authz.AuthzContext,
    "log": log.LogContext,
}

# ``Plugin.Activate`` interface names (§2) -> kind
IMPLEMENTS = {
    "VolumeDriver": "volume",
    "NetworkDriver": "network",
    "IpamDriver": "ipam",
    "authz": "authz",
    "LogDriver": "log",
}


def detect_kind(implements: list[str]) -> str:
    """The kind to check from Activate's ``Implements``; a ValueError naming the choice if
    there is none or more than one. A name in the wrong case still picks its kind, so that the
    run can report the casing (dockerd's match is exact) instead of refusing to start."""
    kinds = list(dict.fromkeys(IMPLEMENTS[i] for i in implements if i in IMPLEMENTS))
    if not kinds:
        lower = {name.lower(): kind for name, kind in IMPLEMENTS.items()}
        kinds = list(dict.fromkeys(lower[i.lower()] for i in implements if i.lower() in lower))
    if len(kinds) == 1:
        return kinds[0]
    if not kinds:
        raise ValueError(
            f"Activate announces {implements!r}, none of {', '.join(IMPLEMENTS)}: "
            "give the protocol with --type"
        )
    raise ValueError(
        f"Activate announces {' and '.join(kinds)} ({implements!r}): choose one with --type"
    )


@dataclass
class CheckResult:
    id: str
    title: str
    ref: str
    result: Result
    evidence: str
    seconds: float


@dataclass
class Report:
    target: str
    url: str
    kind: str
    opts: dict[str, str]
    started: str
    results: list[CheckResult] = field(default_factory=list)
    calls: int = 0
    cleanup: list[str] = field(default_factory=list)
    #: The engine the run was for (conformance.engine.EngineInfo.to_json()); None: unknown
    engine: dict[str, str] | None = None

    def count(self, result: Result) -> int:
        return sum(1 for r in self.results if r.result is result)

    @property
    def ok(self) -> bool:
        return self.count(Result.FAIL) == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        parts = [f"{self.count(r)} {r.value}" for r in Result if self.count(r)]
        return f"{self.kind} checks on {self.target}: " + ", ".join(parts or ["nothing run"])

    def failures(self) -> str:
        """The failed checks, one per line with their evidence (for assertion messages)."""
        return "\n".join(
            f"{r.id} {r.title}: {r.evidence}" for r in self.results if r.result is Result.FAIL
        )

    def by_id(self) -> dict[str, CheckResult]:
        return {r.id: r for r in self.results}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        data["ok"] = self.ok
        data["counts"] = {r.value: self.count(r) for r in Result}
        for r in data["results"]:
            r["result"] = str(r["result"])
        return data

    def write(self, path: Path) -> None:
        """JSON, or a self-contained HTML page when the file name ends in .html/.htm."""
        if path.suffix.lower() in (".html", ".htm"):
            from dockplug.conformance.html import render

            path.write_text(render(self), encoding="utf-8")
            return
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")


def _run_one(chk: Check, ctx: Context) -> CheckResult:
    started = time.monotonic()
    try:
        outcome = chk.func(ctx)
    except Skip as exc:
        outcome = Outcome(Result.SKIP, str(exc))
    except TimeoutError:
        ctx.close()
        outcome = failed(f"no reply within {ctx.timeout:g}s")
    except Exception as exc:  # a plugin that drops the connection, sends no HTTP, ...
        ctx.close()
        outcome = failed(f"{type(exc).__name__}: {exc}")
    finally:
        ctx.phase = "sequence"
    return CheckResult(
        chk.id,
        chk.title,
        chk.ref,
        outcome.result,
        outcome.evidence,
        round(time.monotonic() - started, 3),
    )


def run(
    target: str | PluginAddress,
    kind: str = "volume",
    opts: dict[str, str] | None = None,
    timeout: float = 30.0,
    only: set[str] | None = None,
    host_paths: HostPaths | None = None,
    engine: EngineInfo | None = None,
) -> Report:
    """Runs every ``kind`` check (or the ``only`` ids) against ``target`` and cleans up.
    ``host_paths``: where a managed plugin's paths are on this host; ``engine``: the dockerd
    the plugin serves (its recordings are replayed; None: the default engine's)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin type {kind!r} (have: {', '.join(KINDS)})")
    address = resolve(target) if isinstance(target, str) else target
    prefix = f"dpcheck-{uuid.uuid4().hex[:8]}-"
    context = CONTEXTS.get(kind, VolumeContext)
    ctx = context(
        address,
        opts=dict(opts or {}),
        prefix=prefix,
        timeout=timeout,
        host_paths=host_paths,
        engine_series=engine.series if engine else None,
    )
    report = Report(
        target=target if isinstance(target, str) else target.name,
        url=address.url,
        kind=kind,
        opts=dict(opts or {}),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        engine=engine.to_json() if engine else None,
    )
    try:
        for chk in KINDS[kind]:
            if only is None or chk.id in only:
                report.results.append(_run_one(chk, ctx))
    finally:
        ctx.phase = "cleanup"
        report.cleanup = ctx.cleanup()
        report.calls = len(ctx.log)
        ctx.close()
    return report
