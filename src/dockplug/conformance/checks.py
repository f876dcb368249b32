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
from dockplug.server.discovery import HostPaths, PluginAddress


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
    # Any, not Context: each kind's checks take that kind's Context subclass
    func: Callable[[Any], Outcome]


def check(registry: list[Check], id: str, title: str, ref: str) -> Callable[..., Any]:
    """``@check(VOLUME_CHECKS, "V01", "Activate", "§2")`` adds the function to a registry."""

    def register(func: Callable[[Any], Outcome]) -> Callable[[Any], Outcome]:
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
    """What every kind's checks share: the target, options, state between steps, the call log.

    Subclasses add the helpers of one protocol (what the run created, how to clean it up) and
    how dockerd reads that protocol's errors (:meth:`error`).
    """

    address: PluginAddress
    opts: dict[str, str] = field(default_factory=dict)
    prefix: str = "dpcheck-"
    timeout: float = 30.0
    phase: str = "sequence"
    state: dict[str, Any] = field(default_factory=dict)
    log: list[Exchange] = field(default_factory=list)
    # where the plugin's paths are on this host (a managed plugin's); None: as they are
    host_paths: HostPaths | None = None
    #: The engine series ('20.10', '28') whose recordings the replays send; None: the default
    engine_series: str | None = None
    _client: PluginClient | None = None

    def on_host(self, path: str) -> str:
        """A path the plugin returned, as dockerd finds it on this host."""
        return self.host_paths.of(path) if self.host_paths else path

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

    def error(self, reply: Reply) -> str | None:
        """The error dockerd reads from a reply (None: success). Generic rule, §1.6: non-200,
        or a non-empty ``Err`` on 200."""
        return reply.error

    def undo(self, endpoint: str, body: Any, made: list[Any], item: Any) -> Reply:
        """Calls an endpoint that undoes ``item`` (a release, a delete); once it succeeded,
        ``item`` leaves ``made``, the list cleanup works through."""
        reply = self.call(endpoint, body, expect_ok=True)
        if self.error(reply) is None and item in made:
            made.remove(item)
        return reply

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def alive(self) -> bool:
        """Does the plugin still answer Activate (on a fresh connection)?"""
        try:
            with self.client(timeout=min(self.timeout, 10.0)) as c:
                return c.call("Plugin.Activate").status == 200
        except Exception:
            return False

    def cleanup(self) -> list[str]:
        """Best effort: undo what the run created; returns what could not be undone."""
        return []

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class VolumeContext(Context):
    """The volume checks' context: the volumes created and the mounts held."""

    created: list[str] = field(default_factory=list)
    mounted: list[tuple[str, str]] = field(default_factory=list)  # (name, id), one per Mount

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

    def cleanup(self) -> list[str]:
        """Unmounts what is still mounted, removes every volume the run created."""
        left: list[str] = []
        for name, mount_id in reversed(list(self.mounted)):
            try:
                self.unmount(name, mount_id)
            except Exception as exc:
                left.append(f"Unmount {name} {mount_id[:12]}: {exc!r}")
        for name in list(self.created):
            try:
                reply = self.remove(name, expect_ok=None)
                if reply.error is not None:
                    left.append(f"Remove {name}: {reply.error[:120]}")
            except Exception as exc:
                left.append(f"Remove {name}: {exc!r}")
        return left


def reply_json(reply: Reply) -> Any:
    """The decoded body, or None if it is not JSON."""
    try:
        return reply.json
    except ValueError:
        return None


def lowered(data: Any) -> dict[str, Any]:
    """A reply object's keys lower-cased, the way Go's decoder matches them; {} if not an object."""
    return {k.lower(): v for k, v in data.items()} if isinstance(data, dict) else {}


def announces(ctx: Context, implements: str) -> Outcome:
    """The Activate check of every kind: ``Implements`` lists ``implements`` exactly (§2)."""
    reply = ctx.call("Plugin.Activate", expect_ok=True)
    data = reply_json(reply)
    if reply.error is not None:
        return failed(f"Activate: {describe(reply)}")
    if not isinstance(data, dict):
        return failed(f"Activate: HTTP 200 but the body is not a JSON object: {describe(reply)}")
    if "Implements" not in data:
        return failed(f"no 'Implements' key (exact casing): {describe(reply)}")
    implemented = data["Implements"]
    if not isinstance(implemented, list):
        return failed(f"Implements is not a list: {describe(reply)}")
    if implements not in implemented:
        near = [i for i in implemented if str(i).lower() == implements.lower()]
        hint = f" ({near[0]!r} has the wrong casing; the match is exact)" if near else ""
        return failed(f"Implements {implemented} lacks {implements!r}{hint}")
    return passed(f"Implements {implemented}")


def reply_format(ctx: Context, streaming: tuple[str, ...] = (), err_on_200: bool = True) -> Outcome:
    """Every reply of the sequence phase: exactly 200 with a JSON object on success, and a
    non-empty ``Err`` on a non-200 reply (the key dockerd's generic client reads, §1.6).
    ``streaming`` endpoints answer raw bytes on success and are only checked on error;
    ``err_on_200`` flags an ``Err`` that dockerd ignores on a 200 reply (IPAM's trap)."""
    problems: list[str] = []
    seen = 0
    for ex in ctx.log:
        if ex.phase != "sequence" or ex.status is None:
            continue
        seen += 1
        data = reply_json(Reply(ex.status, ex.body, {}))
        if 200 < ex.status < 300:
            problems.append(f"{ex.endpoint}: HTTP {ex.status} (dockerd wants exactly 200)")
        elif ex.status == 200:
            if ex.endpoint not in streaming and not isinstance(data, dict):
                problems.append(f"{ex.endpoint}: 200 with a non-JSON body {ex.body[:60]!r}")
            elif (
                err_on_200
                and isinstance(data, dict)
                and data.get("Err")
                and ctx.error(Reply(ex.status, ex.body, {})) is None
            ):
                problems.append(f"{ex.endpoint}: Err on a 200 reply, which dockerd ignores here")
        elif not (isinstance(data, dict) and data.get("Err")):
            problems.append(
                f"{ex.endpoint}: error HTTP {ex.status} without a non-empty Err: {ex.body[:60]!r}"
            )
    if not seen:
        raise Skip("no replies recorded")
    if problems:
        unique = list(dict.fromkeys(problems))
        return failed(f"{len(problems)} of {seen} replies: " + "; ".join(unique[:4]))
    return passed(f"{seen} replies conform")


def concurrently(ctx: Context, endpoint: str, body: Any, n: int = 20) -> list[Reply | Exception]:
    """``n`` identical calls at once, each on its own connection as dockerd's would be; a call
    that could not even connect (a listen backlog too small) comes back as its exception."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> Reply | Exception:
        try:
            with ctx.client() as client:
                return ctx.call(endpoint, body, client=client)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as workers:
        return list(workers.map(one, range(n)))


def connection_failures(results: list[Reply | Exception]) -> str | None:
    """The evidence if some concurrent calls got no reply at all."""
    errors = [r for r in results if isinstance(r, Exception)]
    if not errors:
        return None
    return (
        f"{len(errors)}/{len(results)} concurrent calls got no reply, e.g. {errors[0]!r:.100} "
        "(is the listen backlog too small? dockerd opens a connection per concurrent call)"
    )
