"""``dockplug serve authz``: every API call dockerd is asked to run, modelled and judged by a
Cedar policy, fail-closed.

dockerd decides on ``Allow`` alone and shows ``Msg`` to the client; a non-200 reply denies
too. So every path that is not a clean Allow (an exception, an evaluation error, no valid
policy, a missing body, a decision over its time budget) answers ``Allow: false`` with the
reason. Policies reload on SIGHUP and when their files change: a policy that fails to compile,
validate or pass its own test cases is refused and the last good one stays.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from dockplug.drivers.authz.audit import AuditLog
from dockplug.drivers.authz.model import ModelError, build
from dockplug.drivers.authz.policy import Decision, Policy, PolicyError, load
from dockplug.observe import log_event
from dockplug.observe.metrics import NO_METRICS, Counter, Metrics
from dockplug.protocol.authz import AuthzPlugin, AuthzReply, AuthzRequest
from dockplug.protocol.base import nonblocking


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What a change of the policy shows as: each file's name, size and mtime."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    out = []
    for f in files:
        with contextlib.suppress(OSError):
            st = f.stat()
            out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class PolicyStore:
    """The current policy, swapped whole (one reference assignment) on a good reload."""

    def __init__(self, path: Path, local: str | None, self_name: str) -> None:
        self.path, self.local, self.self_name = path, local, self_name
        self.current: Policy | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._seen: tuple[tuple[str, int, int], ...] = ()
        self.reloads: Counter = NO_METRICS.counter("", "")
        self.reload()

    def reload(self) -> bool:
        """Compile, validate, run the test cases, swap; False (old policy kept) on error."""
        ok = self._reload()
        self.reloads.inc(result="ok" if ok else "refused")
        return ok

    def _reload(self) -> bool:
        with self._lock:
            self._seen = _fingerprint(self.path) if self.path.exists() else ()
            try:
                policy = load(self.path, local=self.local, self_name=self.self_name)
            except (PolicyError, OSError, ValueError) as exc:
                self.error = str(exc)
                kept = "keeping the last good policy" if self.current else "denying everything"
                log_event(f"authz: policy refused ({kept}): {exc}")
                return False
            self.current, self.error = policy, None
            log_event(f"authz: policy loaded from {self.path} ({len(policy.ids)} policies, "
                      f"{len(policy.cases)} test cases pass)")  # fmt: skip
            return True

    def changed(self) -> bool:
        return (_fingerprint(self.path) if self.path.exists() else ()) != self._seen


class CedarAuthz(AuthzPlugin):
    def __init__(
        self,
        policy: Path,
        audit_log: Path | None = None,
        syslog: str | None = None,
        local_principal: str = "local",
        time_budget: float = 0.5,
        watch_interval: float = 1.0,
        plugin_name: str = "dockplug-authz",
    ) -> None:
        self.store = PolicyStore(Path(policy), local_principal or None, plugin_name)
        self.audit = AuditLog(Path(audit_log) if audit_log else None, syslog)
        self.time_budget = time_budget
        self.watch_interval = watch_interval
        self._stop = threading.Event()
        self._hup = threading.Event()
        self._watcher: threading.Thread | None = None
        self.decisions: Counter = NO_METRICS.counter("", "")

    def startup(self) -> None:
        with contextlib.suppress(ValueError):  # only the main thread may set signal handlers
            signal.signal(signal.SIGHUP, lambda *_: self._hup.set())
        if self.watch_interval > 0:
            self._watcher = threading.Thread(target=self._watch, name="dockplug-authz-watch",
                                             daemon=True)  # fmt: skip
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._hup.wait(self.watch_interval):
                self._hup.clear()
                log_event("authz: SIGHUP: reloading the policy")
                self.store.reload()
            elif self.store.changed():
                log_event("authz: policy files changed: reloading")
                self.store.reload()

    def shutdown(self) -> None:
        self._stop.set()
        self.audit.close()

    def judge(self, req: AuthzRequest) -> tuple[Decision, dict[str, Any]]:
        """The decision and its audit entry; never raises."""
        started = time.perf_counter()
        entry: dict[str, Any] = {"id": uuid.uuid4().hex[:16], "time": time.time()}
        policy = self.store.current
        try:
            if policy is None:
                raise ModelError(f"no valid authorization policy: {self.store.error}")
            m = build(req, policy.local, policy.self_name)
            entry.update(principal=f"{m.principal.kind}::{m.principal.id}", route=m.route.path,
                         method=m.route.method, action=m.action, attributes=m.context)  # fmt: skip
            decision = policy.decide(m)
        except ModelError as exc:
            decision = Decision(False, str(exc), ())
        except Exception as exc:  # fail closed: whatever went wrong denies
            decision = Decision(False, f"authorization error: {type(exc).__name__}: {exc}", ())
        elapsed = time.perf_counter() - started
        if decision.allow and elapsed > self.time_budget:
            decision = Decision(
                False, f"decision took {elapsed * 1000:.0f} ms, over its "
                f"{self.time_budget * 1000:.0f} ms budget", decision.policies,
            )  # fmt: skip
        entry.setdefault("principal", req.user or "")
        entry.setdefault("method", req.request_method or "")
        entry.update(
            decision="allow" if decision.allow else "deny",
            policies=list(decision.policies),
            reason=decision.reason,
            ms=round(elapsed * 1000, 3),
        )
        return decision, entry

    def declare_metrics(self, metrics: Metrics) -> None:
        self.decisions = metrics.counter(
            "decisions", "Authorization decisions, by action and result", ("action", "result")
        )
        self.store.reloads = metrics.counter(
            "policy_reloads", "Policy reloads, by result (refused: the last good one stays)",
            ("result",),
        )  # fmt: skip
        metrics.gauge_fn(
            "audit_dropped", "Audit lines dropped (queue full)", lambda: self.audit.dropped
        )

    def health_reasons(self) -> list[str]:
        """No valid policy means every call is denied: dockerd is usable by no one."""
        if self.store.current is None:
            return [f"no valid authorization policy, every request is denied: {self.store.error}"]
        return []

    @nonblocking
    def authz_req(self, req: AuthzRequest) -> AuthzReply:
        decision, entry = self.judge(req)
        self.decisions.inc(
            action=str(entry.get("action", "unknown")), result=str(entry["decision"])
        )
        self.audit.record(entry)
        if decision.allow:
            return AuthzReply(allow=True)
        return AuthzReply(allow=False, msg=decision.reason or "denied")

    @nonblocking
    def authz_res(self, req: AuthzRequest) -> AuthzReply:
        """The request was judged before it ran; its response is released unchanged."""
        return AuthzReply(allow=True)
