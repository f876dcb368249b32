"""The building blocks of the conformance harness: a check, its outcome and the context it runs in.

A check is a small function registered with :func:`check`: it gets a :class:`Context`, talks to
the plugin through it the way dockerd does, and returns an :class:`Outcome` with the evidence
(or raises :class:`Skip` when an earlier step it depends on did not happen).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dockplug.client import PluginClient, Reply
from dockplug.discovery import PluginAddress


class Result(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@dataclass(frozen=True)
class Outcome:
    result: Result
    evidence: str


def passed(evidence: str = "") -> Outcome:
    return Outcome(Result.PASS, evidence)


def failed(evidence: str) -> Outcome:
    return Outcome(Result.FAIL, evidence)


def warned(evidence: str) -> Outcome:
    return Outcome(Result.WARN, evidence)


class Skip(Exception):
    """Raised by a check whose precondition (an earlier step) is missing."""


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    ref: str  # where the rule comes from, e.g. "plugin-protocol.md §3.2"
    func: Callable[[Context], Outcome]


def check(registry: list[Check], id: str, title: str, ref: str) -> Callable[..., Any]:
    """``@check(VOLUME_CHECKS, "V01", "Activate", "§2")`` adds the function to a registry."""

    def register(func: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        registry.append(Check(id, title, ref, func))
        return func

    return register


@dataclass
class Exchange:
    """One request and its reply, kept for the reply-format check and the report."""

    phase: str
    endpoint: str
    request: str
    status: int | None
    body: bytes
    expect_ok: bool | None
    seconds: float


def short(data: Any, limit: int = 160) -> str:
    """A one-line, bounded rendering of a body or value for evidence."""
    if isinstance(data, bytes):
        text = data.decode("utf-8", "replace")
    elif isinstance(data, str):
        text = data
    else:
        text = json.dumps(data, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(reply: Reply) -> str:
    return f"HTTP {reply.status} {short(reply.raw)}"


@dataclass
class Context:
    """What checks share: the target, create options, names created, state between steps."""

    address: PluginAddress
    opts: dict[str, str] = field(default_factory=dict)
    prefix: str = "dpcheck-"
    timeout: float = 30.0
    phase: str = "sequence"
    state: dict[str, Any] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    mounted: list[tuple[str, str]] = field(default_factory=list)  # (name, id), one per Mount
    log: list[Exchange] = field(default_factory=list)
    _client: PluginClient | None = None

    def client(self, timeout: float | None = None) -> PluginClient:
        """A new connection (for parallel calls); close it when done."""
        return PluginClient(self.address, timeout=timeout or self.timeout)

    def call(
        self,
        endpoint: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        expect_ok: bool | None = None,
        client: PluginClient | None = None,
    ) -> Reply:
        """One call on the shared keep-alive connection (like dockerd's), logged."""
        if client is None:
            if self._client is None:
                self._client = self.client()
            client = self._client
        request = short(raw if raw is not None else ("" if body is None else body), 80)
        started = time.monotonic()
        try:
            reply = client.call(endpoint, body, raw=raw)
        except BaseException:
            self.log.append(Exchange(self.phase, endpoint, request, None, b"", expect_ok, 0.0))
            raise
        self.log.append(
            Exchange(
                self.phase,
                endpoint,
                request,
                reply.status,
                reply.raw[:4096],
                expect_ok,
                time.monotonic() - started,
            )
        )
        return reply

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def create(self, name: str, opts: dict[str, str] | None) -> Reply:
        reply = self.call("VolumeDriver.Create", {"Name": name, "Opts": opts}, expect_ok=True)
        if reply.error is None and name not in self.created:
            self.created.append(name)
        return reply

    def mount(self, name: str, mount_id: str) -> Reply:
        reply = self.call("VolumeDriver.Mount", {"Name": name, "ID": mount_id}, expect_ok=True)
        if reply.error is None:
            self.mounted.append((name, mount_id))
        return reply

    def unmount(self, name: str, mount_id: str) -> Reply:
        reply = self.call("VolumeDriver.Unmount", {"Name": name, "ID": mount_id}, expect_ok=True)
        if reply.error is None and (name, mount_id) in self.mounted:
            self.mounted.remove((name, mount_id))
        return reply

    def remove(self, name: str, expect_ok: bool | None = True) -> Reply:
        reply = self.call("VolumeDriver.Remove", {"Name": name}, expect_ok=expect_ok)
        if reply.error is None and name in self.created:
            self.created.remove(name)
        return reply

    def list_names(self) -> list[str] | None:
        """The names List reports, or None if List failed."""
        reply = self.call("VolumeDriver.List", {})
        data = reply_json(reply)
        if reply.error or not isinstance(data, dict):
            return None
        vols = data.get("Volumes")
        if not isinstance(vols, list):
            return None
        return [str(v.get("Name")) for v in vols if isinstance(v, dict)]

    def alive(self) -> bool:
        """Does the plugin still answer Activate (on a fresh connection)?"""
        try:
            with self.client(timeout=min(self.timeout, 10.0)) as c:
                return c.call("Plugin.Activate").status == 200
        except Exception:
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def reply_json(reply: Reply) -> Any:
    """The decoded body, or None if it is not JSON."""
    try:
        return reply.json
    except ValueError:
        return None
