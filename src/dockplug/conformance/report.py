"""A run's report: each check's result with its evidence, what cleanup left behind, and its two
forms, JSON and one self-contained HTML page (inline CSS, no scripts, no external assets, every
value escaped: evidence quotes plugin replies, which may contain anything)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from dockplug.conformance.checks import Result


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
            path.write_text(render(self), encoding="utf-8")
            return
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")


# -- the HTML page ------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
.meta{color:#555;margin:0 0 1em}
.meta code{background:#f3f3f3;padding:0 .3em}
.summary span{display:inline-block;margin-right:.6em;padding:.1em .6em;border-radius:.3em}
table{border-collapse:collapse;width:100%;margin-top:1em}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f6f6f6}
td.ev{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word}
.pass{background:#e5f6e8;color:#17622a}.fail{background:#fde4e4;color:#9b1c1c;font-weight:bold}
.warn{background:#fff4d6;color:#7a5300}.skip{background:#eee;color:#666}
ul.cleanup{color:#7a5300}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def render(report: Report) -> str:
    """The whole page for one run."""
    counts = "".join(
        f'<span class="{r.value}">{report.count(r)} {r.value}</span>'
        for r in Result
        if report.count(r)
    )
    rows = "\n".join(
        f"<tr><td>{_e(r.id)}</td><td>{_e(r.title)}<br><small>{_e(r.ref)}</small></td>"
        f'<td class="{_e(r.result.value)}">{_e(r.result.value.upper())}</td>'
        f'<td class="ev">{_e(r.evidence)}</td><td>{r.seconds:.3f}s</td></tr>'
        for r in report.results
    )
    cleanup = ""
    if report.cleanup:
        items = "".join(f"<li>{_e(line)}</li>" for line in report.cleanup)
        cleanup = f'<h2>Left behind</h2><ul class="cleanup">{items}</ul>'
    opts = ", ".join(f"{k}={v}" for k, v in report.opts.items()) or "none"
    verdict = "passed" if report.ok else "FAILED"
    engine = report.engine or {}
    dockerd = (
        f"dockerd {engine.get('version')} (Engine API {engine.get('api_version') or '?'}), "
        f"replays of {engine.get('recordings')}"
        if engine
        else "dockerd unknown"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>dockplug check {_e(report.target)}: {verdict}</title>
<style>{_CSS}</style></head><body>
<h1>dockplug check: {_e(report.kind)} plugin {_e(report.target)} {verdict}</h1>
<p class="meta">URL <code>{_e(report.url)}</code> · started {_e(report.started)} ·
options {_e(opts)} · {_e(dockerd)} · {report.calls} calls</p>
<p class="summary">{counts}</p>
<table><thead><tr><th>ID</th><th>Check</th><th>Result</th><th>Evidence</th><th>Time</th>
</tr></thead><tbody>
{rows}
</tbody></table>
{cleanup}
</body></html>
"""
