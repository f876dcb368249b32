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
from dockplug.discovery import PluginAddress
from dockplug.testing.harness import replay, robustness, volume
from dockplug.testing.harness.checks import Check, Context, Outcome, Result, Skip, failed

KINDS: dict[str, list[Check]] = {"volume": [*volume.CHECKS, *robustness.CHECKS, *replay.CHECKS]}


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


def _cleanup(ctx: Context) -> list[str]:
    """Best effort: unmount what is still mounted, remove every volume the run created."""
    left: list[str] = []
    for name, mount_id in reversed(list(ctx.mounted)):
        try:
            ctx.unmount(name, mount_id)
        except Exception as exc:
            left.append(f"Unmount {name} {mount_id[:12]}: {exc!r}")
    for name in list(ctx.created):
        try:
            reply = ctx.remove(name, expect_ok=None)
            if reply.error is not None:
                left.append(f"Remove {name}: {reply.error[:120]}")
        except Exception as exc:
            left.append(f"Remove {name}: {exc!r}")
    return left


def run(
    target: str | PluginAddress,
    kind: str = "volume",
    opts: dict[str, str] | None = None,
    timeout: float = 30.0,
    only: set[str] | None = None,
) -> Report:
    """Runs every ``kind`` check (or the ``only`` ids) against ``target`` and cleans up."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin type {kind!r} (have: {', '.join(KINDS)})")
    address = resolve(target) if isinstance(target, str) else target
    prefix = f"dpcheck-{uuid.uuid4().hex[:8]}-"
    ctx = Context(address, opts=dict(opts or {}), prefix=prefix, timeout=timeout)
    report = Report(
        target=target if isinstance(target, str) else target.name,
        url=address.url,
        kind=kind,
        opts=dict(opts or {}),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    try:
        for chk in KINDS[kind]:
            if only is None or chk.id in only:
                report.results.append(_run_one(chk, ctx))
    finally:
        report.cleanup = _cleanup(ctx)
        report.calls = len(ctx.log)
        ctx.close()
    return report
