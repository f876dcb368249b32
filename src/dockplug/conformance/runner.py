"""Runs a kind's checks in order against one plugin, cleans up, and builds the report."""

from __future__ import annotations

import http.client
import time
import uuid
from datetime import UTC, datetime

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
from dockplug.conformance.report import CheckResult, Report
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


PROBE_TIMEOUT = 5.0  # seconds Plugin.Activate may take after a failed check before we give up


def _answers(ctx: Context) -> bool:
    """Whether the plugin still answers Plugin.Activate (on a fresh connection)."""
    try:
        with ctx.client(timeout=PROBE_TIMEOUT) as c:
            c.call("Plugin.Activate")
    except (OSError, TimeoutError, http.client.HTTPException):
        return False
    return True


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
        stopped: str | None = None
        for chk in KINDS[kind]:
            if only is not None and chk.id not in only:
                continue
            if stopped is not None:
                report.results.append(
                    CheckResult(chk.id, chk.title, chk.ref, Result.SKIP, stopped, 0.0)
                )
                continue
            result = _run_one(chk, ctx)
            report.results.append(result)
            if result.result is Result.FAIL and not _answers(ctx):
                # a plugin that hangs would cost every later check its full timeout (minutes
                # per replay): the rest are skipped, and cleanup waits briefly per call
                stopped = f"not run: the plugin stopped answering during {chk.id}"
                ctx.timeout = min(ctx.timeout, PROBE_TIMEOUT)
    finally:
        ctx.phase = "cleanup"
        report.cleanup = ctx.cleanup()
        report.calls = len(ctx.log)
        ctx.close()
    return report
