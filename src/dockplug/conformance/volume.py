"""VolumeDriver checks: dockerd's real call sequences (dockerd-volume-trace.md, protocol §3),
run in order against one plugin. Later checks build on the volume the earlier ones created."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dockplug.client import Reply
from dockplug.conformance.checks import (
    Check,
    Outcome,
    Skip,
    VolumeContext,
    announces,
    check,
    describe,
    failed,
    passed,
    reply_format,
    reply_json,
    warned,
)
from dockplug.conformance.shapes import casing_problems, is_mount, volume_problems

CHECKS: list[Check] = []


def _id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, like dockerd's mount IDs


def _main(ctx: VolumeContext) -> str:
    if not ctx.state.get("main_created"):
        raise Skip("the test volume could not be created (see V04)")
    if ctx.state.get("main_removed"):
        raise Skip("the test volume is gone (removed while mounted, see V14)")
    name: str = ctx.state["main"]
    return name


def _ok(reply: Reply, what: str) -> str | None:
    """None if the call succeeded the way dockerd wants, else the evidence."""
    if reply.error is not None:
        return f"{what}: {describe(reply)}"
    if not isinstance(reply_json(reply), dict):
        return f"{what}: HTTP 200 but the body is not a JSON object: {describe(reply)}"
    return None


@check(CHECKS, "V01", "Activate announces VolumeDriver", "protocol §2")
def activate(ctx: VolumeContext) -> Outcome:
    return announces(ctx, "VolumeDriver")


@check(CHECKS, "V02", "Capabilities: Scope local or global", "protocol §3.2 Capabilities")
def capabilities(ctx: VolumeContext) -> Outcome:
    reply = ctx.call("VolumeDriver.Capabilities", {})
    if reply.status == 404:
        return warned("404: optional endpoint missing; dockerd assumes Scope local")
    if reply.error is not None:
        return warned(f"{describe(reply)}; dockerd treats any error as Scope local")
    data = reply_json(reply)
    if not isinstance(data, dict):
        return failed(f"HTTP 200 but not a JSON object: {describe(reply)}")
    problems = casing_problems(data, ("Capabilities",), "reply")
    caps = {k.lower(): v for k, v in data.items()}.get("capabilities")
    if isinstance(caps, dict):
        problems += casing_problems(caps, ("Scope",), "Capabilities")
        scope = {k.lower(): v for k, v in caps.items()}.get("scope")
    else:
        scope = None
    if problems:
        return failed("; ".join(problems))
    if scope not in ("local", "global"):
        return warned(f"Scope {scope!r} is not 'local'/'global'; dockerd reads it as local")
    return passed(f"Scope {scope}")


@check(CHECKS, "V03", "Get of a missing volume fails quickly", "protocol §3.2 Get")
def get_missing(ctx: VolumeContext) -> Outcome:
    name = ctx.name("missing")
    started = time.monotonic()
    reply = ctx.call("VolumeDriver.Get", {"Name": name}, expect_ok=False)
    took = time.monotonic() - started
    data = reply_json(reply)
    if reply.error is None:
        if not isinstance(data, dict):
            return failed(f"HTTP 200 with a body that is not a JSON object: {describe(reply)}")
        if {k.lower(): v for k, v in data.items()}.get("volume") is not None:
            return failed(f"reported as existing, so dockerd would skip Create: {describe(reply)}")
        ev = f"Volume null, no Err ({took * 1000:.0f} ms): dockerd reads it as missing"
        return passed(ev)
    if took > 2.0:
        return warned(f"error after {took:.1f}s; dockerd calls Get before every Create")
    return passed(f"{describe(reply)} in {took * 1000:.0f} ms")


@check(CHECKS, "V04", "Create with the plugin's options", "trace: docker volume create -o")
def create_main(ctx: VolumeContext) -> Outcome:
    name = ctx.name("main")
    ctx.state["main"] = name
    ctx.call("VolumeDriver.Get", {"Name": name}, expect_ok=False)  # dockerd probes first
    reply = ctx.create(name, dict(ctx.opts))
    if (bad := _ok(reply, f"Create Opts={ctx.opts}")) is not None:
        hint = "" if ctx.opts else "; if the plugin needs options, give them with --opt KEY=VALUE"
        return failed(bad + hint)
    ctx.state["main_created"] = True
    return passed(f"Create {name} Opts={ctx.opts}: HTTP {reply.status}")


@check(CHECKS, "V05", 'Create with "Opts": {} (docker volume create)', "protocol §3.2 Create")
def create_empty(ctx: VolumeContext) -> Outcome:
    reply = ctx.create(ctx.name("empty"), {})
    ctx.state["empty_ok"] = reply.error is None
    if (bad := _ok(reply, "Create Opts={}")) is not None:
        if ctx.opts and reply_json(reply) is not None and reply.error:
            return warned(f"the plugin needs options ({bad})")
        return failed(bad)
    return passed("HTTP 200")


@check(CHECKS, "V06", 'Create with "Opts": null (docker run -v)', "protocol §3.2 Create, §1.5")
def create_null(ctx: VolumeContext) -> Outcome:
    reply = ctx.create(ctx.name("null"), None)
    if (bad := _ok(reply, "Create Opts=null")) is None:
        return passed("HTTP 200: implicit create works")
    if not ctx.state.get("empty_ok") and ctx.opts and reply.error:
        return warned(
            f"rejected like Opts {{}}: the plugin needs options, so `docker run -v "
            f"NAME:/p` without a prior `docker volume create` fails ({bad})"
        )
    return failed(f"null Opts is handled differently from {{}}: {bad}")


@check(CHECKS, "V07", "Get after Create: Name echoed, CreatedAt, Status", "protocol §3.1-3.2 Get")
def get_created(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    reply = ctx.call("VolumeDriver.Get", {"Name": name}, expect_ok=True)
    if (bad := _ok(reply, "Get")) is not None:
        return failed(bad)
    data = reply_json(reply)
    problems = casing_problems(data, ("Volume",), "reply")
    vol = {k.lower(): v for k, v in data.items()}.get("volume")
    if vol is None:
        return failed(
            f"Volume is missing or null: dockerd reads it as 'no such volume': {describe(reply)}"
        )
    problems += volume_problems(vol, name, "Volume")
    if problems:
        return failed("; ".join(problems))
    return passed(describe(reply))


@check(CHECKS, "V08", "List contains the volume, PascalCase keys", "protocol §3.1 List")
def list_contains(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    reply = ctx.call("VolumeDriver.List", {}, expect_ok=True)
    if (bad := _ok(reply, "List")) is not None:
        return failed(bad)
    data = reply_json(reply)
    problems = casing_problems(data, ("Volumes",), "reply")
    vols = {k.lower(): v for k, v in data.items()}.get("volumes")
    if not isinstance(vols, list):
        return failed(f"Volumes is not a list: {describe(reply)}")
    mine = [
        v
        for v in vols
        if isinstance(v, dict) and {k.lower(): x for k, x in v.items()}.get("name") == name
    ]
    for i, v in enumerate(vols):
        problems += volume_problems(v, None, f"Volumes[{i}]")
    if not mine:
        problems.append(f"{name} is not listed ({len(vols)} volumes)")
    if problems:
        return failed("; ".join(problems[:6]))
    return passed(f"{len(vols)} volumes, {name} among them")


@check(CHECKS, "V09", "Create again with the same options succeeds", "protocol §3.3")
def create_again(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    reply = ctx.create(name, dict(ctx.opts))
    if (bad := _ok(reply, "second Create")) is not None:
        return warned(
            f"not idempotent ({bad}); dockerd skips Create when Get finds the volume, but a "
            "Get that fails once (timeout, restart) turns this into a user-visible error"
        )
    return passed("HTTP 200")


MOUNT_HEAD_START = 0.2  # seconds between V10's Mount and its Gets
Timed = tuple[Any, float]  # a Reply or the exception raised, and when it came back


def _parallel_gets(ctx: VolumeContext, name: str, mount_id: str) -> tuple[Timed, list[Timed]]:
    def one(endpoint: str, body: dict[str, Any]) -> Timed:
        try:
            with ctx.client() as client:
                result: Any = ctx.call(endpoint, body, expect_ok=True, client=client)
        except Exception as exc:
            result = exc
        return result, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=22) as pool:
        mounting = pool.submit(one, "VolumeDriver.Mount", {"Name": name, "ID": mount_id})
        # the Gets come while the Mount is under way, as dockerd's do: give it a head start
        # (or, if it is quicker than that, let it finish first)
        with contextlib.suppress(TimeoutError):
            mounting.exception(timeout=MOUNT_HEAD_START)
        others = [pool.submit(one, "VolumeDriver.Get", {"Name": name}) for _ in range(20)]
        others.append(pool.submit(one, "VolumeDriver.List", {}))
        mount = mounting.result()
        results = [f.result() for f in others]
    return mount, results


@check(CHECKS, "V10", "20 Gets and a List answer during a Mount", "protocol §1.9, trace")
def concurrency(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    mount_id = _id()
    (mount, mount_done), results = _parallel_gets(ctx, name, mount_id)
    if isinstance(mount, Exception):
        raise mount
    if mount.error is None:
        ctx.mounted.append((name, mount_id))
        ctx.unmount(name, mount_id)
    bad = [
        r if isinstance(r, Exception) else describe(r)
        for r, _ in results
        if isinstance(r, Exception) or r.error is not None
    ]
    if bad:
        return failed(f"{len(bad)}/21 calls failed, e.g. {bad[0]!r:.160}")
    if mount.error is not None:
        return failed(f"Mount failed: {describe(mount)}")
    waited = sorted(done for _, done in results)
    median = waited[len(waited) // 2]
    if mount_done >= 0.5 and median >= mount_done - 0.05:
        return warned(
            f"the Mount took {mount_done:.2f}s and most Gets waited for it (median "
            f"{median:.2f}s): dockerd calls Get constantly, so every docker command stalls"
        )
    return passed(
        f"Mount {mount_done:.2f}s; 20 Gets + List answered by {waited[-1]:.2f}s "
        f"(median {median:.2f}s)"
    )


def _mountpoint(reply: Reply) -> tuple[str | None, list[str]]:
    data = reply_json(reply)
    if not isinstance(data, dict):
        return None, [f"not a JSON object: {describe(reply)}"]
    problems = casing_problems(data, ("Mountpoint",), "reply")
    mp = {k.lower(): v for k, v in data.items()}.get("mountpoint")
    return (mp if isinstance(mp, str) else None), problems


@check(CHECKS, "V11", "Mount returns an existing directory", "protocol §3.2 Mount")
def mount_first(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    mount_id = _id()
    reply = ctx.mount(name, mount_id)
    if (bad := _ok(reply, "Mount")) is not None:
        return failed(bad)
    ctx.state["id_a"] = mount_id
    mp, problems = _mountpoint(reply)
    if not mp:
        return failed(f"empty or missing Mountpoint: {describe(reply)}")
    ctx.state["mountpoint"] = mp
    host = ctx.on_host(mp)
    ctx.state["was_mount"] = is_mount(host)
    if ctx.address.scheme != "unix":
        return warned(f"{mp} (not checked: the plugin may be on another host)")
    if not os.path.isdir(host):
        return failed(f"Mountpoint {mp} is not a directory on this host ({host})")
    if problems:
        return failed("; ".join(problems))
    kind = "a mount point" if ctx.state["was_mount"] else "a directory"
    shown = f"{mp} = {host} on the host" if host != mp else mp
    return passed(f"{shown} ({kind})")


def _still_mounted(ctx: VolumeContext, name: str) -> str | None:
    """None if the volume is still usable by the holder of the remaining mount."""
    mp: str = ctx.state["mountpoint"]
    path = ctx.call("VolumeDriver.Path", {"Name": name}, expect_ok=True)
    got, _ = _mountpoint(path)
    if path.error is None and got == "":
        return 'Path now answers "" (not mounted)'
    if ctx.address.scheme == "unix":
        host = ctx.on_host(mp)
        if ctx.state.get("was_mount") and not is_mount(host):
            return f"{mp} is no longer a mount point (torn down under a running container)"
        if not os.path.isdir(host):
            return f"{mp} is gone"
    return None


@check(CHECKS, "V12", "docker cp: same ID mounted twice, one Unmount keeps it", "trace, §3.2")
def docker_cp(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    mount_id = ctx.state.get("id_a")
    if not mount_id:
        raise Skip("the first Mount failed (V11)")
    again = ctx.mount(name, mount_id)
    if (bad := _ok(again, "second Mount with the same ID")) is not None:
        return failed(f"{bad}: docker cp into a running container would fail")
    mp, _ = _mountpoint(again)
    off = mp != ctx.state["mountpoint"]
    unmount = ctx.unmount(name, mount_id)
    if (bad := _ok(unmount, "Unmount")) is not None:
        return failed(bad)
    if (gone := _still_mounted(ctx, name)) is not None:
        return failed(f"after Mount A, Mount A, Unmount A: {gone}; keep a count per ID")
    if off:
        return warned(f"second Mount answered {mp!r}, the first {ctx.state['mountpoint']!r}")
    return passed("still mounted after the docker cp Mount/Unmount pair")


@check(CHECKS, "V13", "A second ID mounts the same volume", "protocol §3.2 Mount")
def second_id(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    mount_id = _id()
    reply = ctx.mount(name, mount_id)
    if (bad := _ok(reply, "Mount B")) is not None:
        return failed(bad)
    ctx.state["id_b"] = mount_id
    mp, _ = _mountpoint(reply)
    if mp != ctx.state.get("mountpoint"):
        return warned(f"B got {mp!r}, A got {ctx.state.get('mountpoint')!r}")
    return passed(f"A and B share {mp}")


@check(CHECKS, "V14", "Remove of a mounted volume is refused", "protocol §3.2 Remove")
def remove_in_use(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    if not any(n == name for n, _ in ctx.mounted):
        raise Skip("the volume is not mounted (V11/V13 failed)")
    reply = ctx.remove(name, expect_ok=False)
    if reply.error is None:
        ctx.state["main_removed"] = True
        return failed("Remove succeeded while mounted: data can vanish under a container")
    return passed(describe(reply))


@check(CHECKS, "V15", "Unmount of an unknown ID does not break the plugin", "protocol §3.2")
def unmount_unknown(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    try:
        reply = ctx.call("VolumeDriver.Unmount", {"Name": name, "ID": _id()})
        answer = describe(reply)
    except Exception as exc:
        answer = f"no reply ({exc!r})"
    if not ctx.alive():
        return failed(f"{answer}; the plugin no longer answers Activate")
    if any(n == name for n, _ in ctx.mounted) and (gone := _still_mounted(ctx, name)):
        return warned(f"{answer}; a stray Unmount dropped a real mount: {gone}")
    return passed(answer)


@check(CHECKS, "V16", "Unmount in reverse order: B, then A", "protocol §3.2 Unmount")
def unmount_reverse(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    id_a, id_b = ctx.state.get("id_a"), ctx.state.get("id_b")
    if not id_a or not id_b:
        raise Skip("A or B was never mounted")
    reply = ctx.unmount(name, id_b)
    if (bad := _ok(reply, "Unmount B")) is not None:
        return failed(bad)
    if (id_a and (name, id_a) in ctx.mounted) and (gone := _still_mounted(ctx, name)):
        return failed(f"Unmount B while A holds it: {gone}")
    reply = ctx.unmount(name, id_a)
    if (bad := _ok(reply, "Unmount A")) is not None:
        return failed(bad)
    return passed("both unmounts succeeded; A kept the volume until its own Unmount")


@check(CHECKS, "V17", "Remove, then Get fails and List drops it", "trace: docker volume rm")
def remove_last(ctx: VolumeContext) -> Outcome:
    name = _main(ctx)
    for n, mount_id in [m for m in ctx.mounted if m[0] == name]:
        ctx.unmount(n, mount_id)
    reply = ctx.remove(name)
    if (bad := _ok(reply, "Remove")) is not None:
        return failed(bad)
    ctx.state["main_removed"] = True
    get = ctx.call("VolumeDriver.Get", {"Name": name}, expect_ok=False)
    data = reply_json(get)
    vol = {k.lower(): v for k, v in data.items()}.get("volume") if isinstance(data, dict) else None
    if get.error is None and vol is not None:
        return failed(f"Get still finds it after Remove: {describe(get)}")
    names = ctx.list_names()
    if names is not None and name in names:
        return failed("List still has it after Remove")
    mp = ctx.state.get("mountpoint")
    kept = ctx.address.scheme == "unix" and mp and os.path.isdir(mp)
    return passed("gone from Get and List" + (f"; its folder {mp} is left on disk" if kept else ""))


@check(CHECKS, "V18", "Replies: exactly 200 + JSON on success, Err on error", "protocol §1.6")
def reply_format_volume(ctx: VolumeContext) -> Outcome:
    return reply_format(ctx)
