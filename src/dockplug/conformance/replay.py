"""Checks that replay what a real dockerd sent a plugin (recordings/*.json, made by
``dockplug record`` in tests/integration/test_recordings.py) against any target.

Each call goes out as dockerd sent it: the recorded headers in their order (``Host`` empty from
20.10, ``plugin.moby.localhost`` from 28; ``Go-http-client/1.1``, no Content-Type), the
recorded body with fresh names and mount ids, dockerd's per-call timeout. Each reply is then
read the way dockerd reads it: where the real plugin's answer let the docker command succeed,
the target's must too.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from dockplug.client import PluginClient, Reply
from dockplug.conformance.checks import (
    Check,
    Context,
    Exchange,
    Outcome,
    Skip,
    VolumeContext,
    describe,
    failed,
    passed,
    reply_json,
    short,
    warned,
)
from dockplug.conformance.ipam import IpamContext
from dockplug.conformance.shapes import VOLUME_KEYS, volume_problems

RECORDINGS: Traversable = resources.files("dockplug.conformance") / "recordings"
#: The engine series whose recordings are at the top of RECORDINGS (the fallback); those of
#: every other series are in RECORDINGS/<series>/, because engines call plugins differently
#: (28 asks IpamDriver.GetDefaultAddressSpaces twice per network create; 26 and 28 send one
#: more VolumeDriver.Get after a --live-restore restart).
DEFAULT_SERIES = "20.10"

# dockerd's per-call timeouts for volume plugins (protocol §1.7); other calls have none
VOLUME_TIMEOUTS = {"Create": 120.0, "Mount": 120.0}
SHORT_TIMEOUT = 60.0

_PLACEHOLDER = re.compile(r"\{(vol|id)(\d+)\}")


def engine_series(version: str) -> str:
    """The series of a dockerd version: '20.10.24+dfsg1' -> '20.10', '28.5.2' -> '28' (20.10
    was the last year.month release; from 23 on the major number names the series)."""
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2]) if parts[0] == "20" else parts[0]


def recording_path(name: str, series: str | None = None, fallback: bool = True) -> Traversable:
    """Where the recording NAME of engine SERIES is: its own, else (FALLBACK) the default
    engine's."""
    if series and series != DEFAULT_SERIES:
        own = RECORDINGS / series / f"{name}.json"
        if own.is_file() or not fallback:
            return own
    return RECORDINGS / f"{name}.json"


@cache
def _read(name: str, series: str | None = None) -> str:
    return recording_path(name, series).read_text()


def load(name: str, series: str | None = None) -> dict[str, Any]:
    """A stored recording by scenario name (e.g. ``volume-cli``): the one made on engine
    SERIES ('28') when there is one, else the default engine's."""
    data: dict[str, Any] = json.loads(_read(name, series))
    return data


def _keys(body: str) -> str:
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        return "?"
    return ",".join(data) if isinstance(data, dict) else type(data).__name__


def signature(recording: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """What must stay the same when dockerd is recorded again: per step, the endpoints in order,
    the header names and the body's keys (not the values, which hold random names and ids).
    ``"unordered": true`` recordings (authz: dockerd serves API calls concurrently) compare each
    step's calls as a multiset."""
    calls = [
        (ex["step"], ex["path"], ",".join(h[0] for h in ex["headers"]), _keys(ex["body"]))
        for ex in recording["exchanges"]
    ]
    if recording.get("unordered"):
        steps = list(dict.fromkeys(c[0] for c in calls))
        calls.sort(key=lambda c: (steps.index(c[0]), c))
    return calls


def _recorded_ok(ex: dict[str, Any]) -> bool:
    return Reply(ex["status"], ex["reply_body"].encode(), {}).error is None


def _lower(data: Any) -> dict[str, Any]:
    return {k.lower(): v for k, v in data.items()} if isinstance(data, dict) else {}


@dataclass
class _Replayer:
    ctx: Context
    tag: str

    def __post_init__(self) -> None:
        self.values: dict[str, str] = {}
        self.learned: dict[str, str] = {}  # recorded reply value -> the target's (IPAM pool ids)
        self.client = PluginClient(self.ctx.address, timeout=self.ctx.timeout)

    def learn(self, ex: dict[str, Any], reply: Reply) -> None:
        """Values dockerd took from a reply and sends back later (PoolID, addresses): where the
        target answered differently, later requests carry the target's value."""
        try:
            recorded = json.loads(ex["reply_body"])
        except ValueError:
            return
        fresh = reply_json(reply)
        if not isinstance(recorded, dict) or not isinstance(fresh, dict):
            return
        for key, old in recorded.items():
            new = fresh.get(key)
            if isinstance(old, str) and isinstance(new, str) and old and old != new:
                self.learned[old] = new
                if "/" in old and "/" in new:  # an address in CIDR form is released bare
                    self.learned[old.split("/")[0]] = new.split("/")[0]

    def fill(self, text: str) -> str:
        """Placeholders to fresh values: ``{vol1}`` a name of this run, ``{id1}`` a 64-hex id."""

        def value(m: re.Match[str]) -> str:
            if m[0] not in self.values:
                if m[1] == "vol":
                    self.values[m[0]] = self.ctx.name(f"{self.tag}-{m[2]}")
                else:
                    self.values[m[0]] = uuid.uuid4().hex + uuid.uuid4().hex
            return self.values[m[0]]

        text = _PLACEHOLDER.sub(value, text)
        for old, new in self.learned.items():
            text = text.replace(json.dumps(old), json.dumps(new))
        return text

    def body(self, ex: dict[str, Any]) -> bytes:
        text = self.fill(ex["body"])
        if ex["path"].endswith(".Create") and text.strip():
            data = json.loads(text)
            if isinstance(data.get("Opts"), dict):  # the user's -o: the target's own options
                data["Opts"] = dict(self.ctx.opts)
                text = json.dumps(data, separators=(",", ":")) + "\n"
        return text.encode()

    def send(self, ex: dict[str, Any], body: bytes) -> Reply:
        """One request with exactly the recorded headers (Content-Length recomputed)."""
        method = ex["path"].rsplit(".", 1)[-1]
        if ex["path"].startswith("/VolumeDriver."):
            timeout = VOLUME_TIMEOUTS.get(method, SHORT_TIMEOUT)
        else:
            timeout = self.ctx.timeout
        headers = [
            (key, str(len(body)) if key.lower() == "content-length" else value)
            for key, value in ex["headers"]
        ]
        return self.client.send(ex["method"], ex["path"], headers, body, timeout)

    def close(self) -> None:
        self.client.close()


def _judge(ex: dict[str, Any], reply: Reply, rp: _Replayer) -> str | None:
    """None if dockerd would carry on as it did with the recorded plugin, else what breaks."""
    if ex["path"].startswith("/AuthZPlugin."):
        return _judge_authz(reply)
    if ex["path"].startswith("/IpamDriver."):
        return _judge_ipam(ex, reply)
    method = ex["path"].rsplit(".", 1)[-1]
    data = reply_json(reply)
    want_ok = _recorded_ok(ex)
    if method == "Get":
        vol = _lower(data).get("volume") if reply.error is None else None
        if want_ok and vol is None:
            return f"the volume is missing ({describe(reply)}); dockerd says 'no such volume'"
        if not want_ok and vol is not None:
            return f"reported before it exists, so dockerd would skip Create: {describe(reply)}"
        if vol is not None:
            name = json.loads(rp.fill(ex["body"])).get("Name")
            # dockerd matches keys case-insensitively: casing is V07's business, not a failure here
            canonical = {k.lower(): k for k in VOLUME_KEYS}
            vol = {canonical.get(k.lower(), k): v for k, v in _lower(vol).items()}
            problems = volume_problems(vol, name, "Volume")
            return "; ".join(problems) or None
        return None
    if not want_ok:
        return None  # the recorded plugin refused too; dockerd was fine with a refusal here
    if reply.error is not None:
        return f"dockerd needs this to succeed: {describe(reply)}"
    if not isinstance(data, dict):
        return f"HTTP 200 without a JSON object: {describe(reply)}"
    recorded = json.loads(ex["reply_body"]) if ex["reply_body"].strip() else {}
    if method == "Activate":
        missing = set(recorded.get("Implements", [])) - set(data.get("Implements") or [])
        return f"Implements lacks {sorted(missing)}: {describe(reply)}" if missing else None
    if method == "Mount":
        mp = _lower(data).get("mountpoint")
        if not isinstance(mp, str) or not mp:
            return f"no Mountpoint, dockerd cannot bind-mount anything: {describe(reply)}"
    if method == "List":
        vols = _lower(data).get("volumes")
        if not isinstance(vols, list):
            return f"Volumes is not a list: {describe(reply)}"
        have = {_lower(v).get("name") for v in vols}
        want = {rp.fill(v["Name"]) for v in recorded.get("Volumes") or []}
        absent = sorted(n for n in want - have if n.startswith(rp.ctx.prefix))
        if absent:
            return f"List lacks {absent}, which dockerd's plugin listed here"
    return None


def _judge_authz(reply: Reply) -> str | None:
    """dockerd: anything but 200 fails the API call; on 200 only ``Allow`` counts (Err is
    ignored). A denial is the plugin's policy, not a protocol error."""
    data = reply_json(reply)
    if reply.status != 200:
        return f"not 200, so dockerd fails the user's API call: {describe(reply)}"
    if not isinstance(data, dict):
        return f"HTTP 200 without a JSON object: {describe(reply)}"
    allow = _lower(data).get("allow")
    if allow is not None and not isinstance(allow, bool):
        return f"Allow {allow!r} is not a boolean; dockerd cannot decode the reply"
    return None


_CIDR = re.compile(r"^[0-9a-fA-F:.]+/\d{1,3}$")


def _judge_ipam(ex: dict[str, Any], reply: Reply) -> str | None:
    """dockerd reads IPAM failures from ``Error`` (or a non-200) and parses CIDR strings."""
    method = ex["path"].rsplit(".", 1)[-1]
    if not _recorded_ok(ex):
        return None
    if reply.error is not None:
        return f"dockerd needs this to succeed: {describe(reply)}"
    if not isinstance(reply_json(reply), dict):
        return f"HTTP 200 without a JSON object: {describe(reply)}"
    data = _lower(reply_json(reply))
    if method == "RequestPool":
        if not isinstance(data.get("poolid"), str) or not data["poolid"]:
            return f"no PoolID: {describe(reply)}"
        if not _CIDR.match(str(data.get("pool"))):
            return f"Pool {data.get('pool')!r} is not a CIDR; dockerd cannot parse it"
    if method == "RequestAddress" and not _CIDR.match(str(data.get("address"))):
        return f"Address {data.get('address')!r} is not in CIDR form (a.b.c.d/len)"
    return None


def _track(ctx: Context, ex: dict[str, Any], body: bytes, reply: Reply) -> None:
    """Keeps the runner's cleanup lists right (volumes created and mounts held; IPAM pools
    and addresses), so a replay that stops half-way leaves nothing behind."""
    if ctx.error(reply) is not None or not body.strip():
        return
    req = json.loads(body)
    method = ex["path"].rsplit(".", 1)[-1]
    if isinstance(ctx, VolumeContext):
        name, mount_id = req.get("Name"), req.get("ID")
        if method == "Create" and name not in ctx.created:
            ctx.created.append(name)
        elif method == "Remove" and name in ctx.created:
            ctx.created.remove(name)
        elif method == "Mount":
            ctx.mounted.append((name, mount_id))
        elif method == "Unmount" and (name, mount_id) in ctx.mounted:
            ctx.mounted.remove((name, mount_id))
    elif isinstance(ctx, IpamContext):
        got = _lower(reply_json(reply))
        if method == "RequestPool" and isinstance(got.get("poolid"), str):
            ctx.pools.append(got["poolid"])
        elif method == "RequestAddress" and isinstance(got.get("address"), str):
            ctx.addresses.append((str(req.get("PoolID")), got["address"].split("/")[0]))
        elif method == "ReleaseAddress":
            item = (str(req.get("PoolID")), str(req.get("Address")))
            if item in ctx.addresses:
                ctx.addresses.remove(item)
        elif method == "ReleasePool" and req.get("PoolID") in ctx.pools:
            ctx.pools.remove(req["PoolID"])


def _still_held(ctx: Context, ex: dict[str, Any], body: bytes, reply: Reply) -> str | None:
    """After an Unmount that leaves other mounts of the volume held (``docker cp`` on a running
    container), the volume must still be mounted: a probe dockerd does not make, but the running
    container depends on what it shows."""
    if not ex["path"].endswith(".Unmount") or reply.error is not None:
        return None
    if not isinstance(ctx, VolumeContext):
        return None
    name = json.loads(body).get("Name")
    held = [i for n, i in ctx.mounted if n == name]
    if not held:
        return None
    path = ctx.call("VolumeDriver.Path", {"Name": name})
    mp = _lower(reply_json(path)).get("mountpoint")
    if path.error is None and mp == "":
        return (
            f'Path now answers "" although {len(held)} mount(s) of {name} are still held: '
            "the volume was torn down under a running container; keep a count per ID"
        )
    return None


def replay(ctx: Context, scenario: str, tag: str) -> Outcome:
    """Replays one recording; fails at the first reply dockerd could not have worked with."""
    try:
        recording = load(scenario, ctx.engine_series)
    except FileNotFoundError as exc:
        raise Skip(f"no recording {scenario}.json") from exc
    rp = _Replayer(ctx, tag)
    ctx.phase = "replay"
    calls = [ex for ex in recording["exchanges"] if "error" not in ex]
    note = ""
    try:
        for n, ex in enumerate(calls, 1):
            body = rp.body(ex)
            where = f"call {n}/{len(calls)} ({ex['step']}): {ex['path'][1:]} {short(body, 70)}"
            reply = _exchange(ctx, rp, ex, body)
            if reply is None:
                return failed(f"{where}: no reply within dockerd's timeout")
            rp.learn(ex, reply)
            problem = _judge(ex, reply, rp) or _still_held(ctx, ex, body, reply)
            if problem is not None and _needs_options(ex, body, ctx):
                # what a user of such a plugin does: docker volume create -o first; go on
                body = rp.body({**ex, "body": body.decode().replace('"Opts":null', '"Opts":{}')})
                reply = _exchange(ctx, rp, ex, body)
                if reply is not None and _judge(ex, reply, rp) is None:
                    note = (
                        f"; but {where}: {problem}: the plugin needs options, which this "
                        "command gives none of (users must docker volume create -o first); "
                        "replayed with the options from there on"
                    )
                    continue
            if problem is not None:
                return failed(f"{where}: {problem}{note}")
    finally:
        rp.close()
    steps = len(dict.fromkeys(ex["step"] for ex in calls))
    done = f"{len(calls)} calls in {steps} steps, as dockerd {recording['engine']} sent them"
    return warned(done + note) if note else passed(done)


def _needs_options(ex: dict[str, Any], body: bytes, ctx: Context) -> bool:
    return ex["path"].endswith(".Create") and b'"Opts":null' in body and bool(ctx.opts)


def _exchange(ctx: Context, rp: _Replayer, ex: dict[str, Any], body: bytes) -> Reply | None:
    """Sends one call and logs it (None: no reply within dockerd's timeout)."""
    started = time.monotonic()
    try:
        reply = rp.send(ex, body)
    except TimeoutError:
        ctx.log.append(Exchange("replay", ex["path"][1:], short(body, 80), None, b"", None, 0.0))
        return None
    took = time.monotonic() - started
    ctx.log.append(
        Exchange(
            "replay",
            ex["path"][1:],
            short(body, 80),
            reply.status,
            reply.raw[:4096],
            _recorded_ok(ex),
            took,
        )
    )
    _track(ctx, ex, body, reply)
    return reply


CHECKS: list[Check] = []  # volume
AUTHZ_CHECKS: list[Check] = []
IPAM_CHECKS: list[Check] = []


def _register(check_id: str, scenario: str, title: str, into: list[Check] = CHECKS) -> None:
    def func(ctx: Context) -> Outcome:
        return replay(ctx, scenario, check_id.lower())

    into.append(Check(check_id, title, f"recordings/{scenario}.json", func))


_register("P01", "volume-cli", "Replay: docker volume create -o, inspect, ls, rm")
_register("P02", "container-lifecycle", "Replay: run -v, cp (running), restart, stop, cp, rm")
_register("P03", "plugin-restart", "Replay: calls around a plugin restart (not restarted here)")
_register("P04", "dockerd-live-restore", "Replay: dockerd --live-restore restart under a container")
_register("P05", "authz-create-run", "Replay: docker create/rm/run under authz", AUTHZ_CHECKS)
_register("P06", "ipam-network", "Replay: network create, run on it, network rm", IPAM_CHECKS)
