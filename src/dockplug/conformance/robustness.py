"""Robustness checks: bad input must get an answer (non-200 or Err), never a hang or a crash,
and must leave the plugin's volumes as they were. Bodies and names come from hypothesis,
bounded (a fixed number of examples, derandomized) so a run stays fast and repeatable."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from dockplug.client import Reply
from dockplug.conformance.checks import (
    Check,
    Context,
    Outcome,
    Skip,
    VolumeContext,
    check,
    describe,
    failed,
    passed,
    reply_json,
    short,
    warned,
)

CHECKS: list[Check] = []
MAX_EXAMPLES = 50
HUGE = 20 * 1024 * 1024
NAME_ENDPOINTS = ("Create", "Get", "Remove", "Mount", "Unmount", "Path")
STATEFUL = ("Create", "Get", "Mount")  # accepting garbage here misleads dockerd


def _send_garbage(ctx: Context, endpoint: str, raw: bytes, problems: list[str]) -> Reply | None:
    """One bad body; None (and a problem noted) if no reply came back."""
    try:
        return ctx.call(endpoint, raw=raw, expect_ok=False)
    except Exception as exc:
        alive = ctx.alive()
        problems.append(
            f"{endpoint} {short(raw, 60)}: no reply ({type(exc).__name__})"
            + ("" if alive else "; the plugin is down")
        )
        ctx.close()
        return None


def _accepted(endpoint: str, reply: Reply) -> bool:
    """Did the plugin take the call as valid? (Get: only if it reports a volume.)"""
    if reply.error is not None:
        return False
    if endpoint == "Get":
        data = reply_json(reply)
        return (
            isinstance(data, dict)
            and {k.lower(): v for k, v in data.items()}.get("volume") is not None
        )
    return True


def _explore(strategy: Any, body: Callable[[Any], None]) -> None:
    """Runs ``body`` on up to MAX_EXAMPLES values; problems are recorded, never raised."""
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        body(value)

    run()


def _hypothesis() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as exc:
        raise Skip("hypothesis is not installed (pip install hypothesis)") from exc
    return strategies


def _send(
    ctx: VolumeContext,
    endpoint: str,
    raw: bytes,
    problems: list[str],
    accepted: list[str],
) -> None:
    path = f"VolumeDriver.{endpoint}"
    reply = _send_garbage(ctx, path, raw, problems)
    if reply is None:
        return
    if _accepted(endpoint, reply):
        accepted.append(f"{path} {short(raw, 60)} -> {describe(reply)}")
        return
    data = reply_json(reply)
    if reply.error is not None and not (isinstance(data, dict) and data.get("Err")):
        ctx.state.setdefault("bare_errors", []).append(f"{path}: {describe(reply)}")


def _bare(ctx: VolumeContext, evidence: str) -> Outcome:
    """Pass, or warn if some rejections came without an ``Err`` (dockerd then shows the raw
    body, and network/IPAM callers lose the message)."""
    bare: list[str] = ctx.state.pop("bare_errors", [])
    if bare:
        return warned(f"{evidence}, but {len(bare)} rejections carry no Err, e.g. {bare[0]}")
    return passed(evidence)


def _escaped(ctx: VolumeContext, name: str) -> list[str]:
    """Folders a path-like name made outside the plugin's volume folder (the parent of V11's
    Mountpoint); removed again when empty and named with this run's prefix."""
    mountpoint = ctx.state.get("mountpoint")
    if not mountpoint or ctx.address.scheme != "unix":
        return []
    base = os.path.dirname(os.path.normpath(mountpoint))
    target = os.path.normpath(base + "/" + name.split("\0")[0])
    ours = os.path.basename(target).startswith(ctx.prefix)
    if not ours or target.startswith(base + "/") or not os.path.isdir(target):
        return []
    with contextlib.suppress(OSError):
        os.rmdir(target)
    return [target]


def _bad_bodies(st: Any) -> Any:
    wrong = st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
        st.lists(st.text(max_size=4), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )
    typed = st.fixed_dictionaries({"Name": wrong}).map(lambda d: json.dumps(d).encode() + b"\n")
    missing = st.sampled_from([b"{}\n", b'{"Opts":{}}\n', b'{"ID":"x"}\n', b"null\n", b""])
    malformed = st.one_of(
        st.sampled_from(
            [
                b"{",
                b'{"Name":',
                b'{"Name":"a"',
                b"[]",
                b'"x"',
                b"{}}",
                b"\xff\xfe",
                b'{"Name":"a",}',
                b"{'Name':'a'}",
                b"NaN",
                b'{"Name":"\\ud800"}',
            ]
        ),
        st.binary(max_size=48),
    )
    return st.tuples(st.sampled_from(NAME_ENDPOINTS), st.one_of(typed, missing, malformed))


@check(CHECKS, "R01", "Malformed JSON, wrong types, missing fields", "protocol §1.6, §3.1")
def bad_bodies(ctx: VolumeContext) -> Outcome:
    st = _hypothesis()
    ctx.phase = "robustness"
    ctx.state.pop("bare_errors", None)
    before = ctx.list_names()
    ctx.state["names_before"] = before
    problems: list[str] = []
    accepted: list[str] = []
    _explore(_bad_bodies(st), lambda v: _send(ctx, v[0], v[1], problems, accepted))
    sent = sum(1 for ex in ctx.log if ex.phase == "robustness")
    if problems:
        return failed(f"{len(problems)} calls unanswered: " + "; ".join(problems[:3]))
    serious = [a for a in accepted if a.split(" ", 1)[0].split(".")[1] in STATEFUL]
    if serious:
        return failed(f"{len(serious)} bad bodies accepted, e.g. " + "; ".join(serious[:3]))
    if accepted:
        return warned(
            f"{len(accepted)} bad Remove/Unmount/Path bodies answered as success, "
            f"e.g. " + "; ".join(accepted[:2])
        )
    return _bare(ctx, f"{sent} calls, every bad body rejected")


def _names(st: Any, prefix: str) -> Any:
    tag = st.integers(0, 10**6).map(str)
    unicode = st.text(min_size=1, max_size=8).filter(lambda t: "\x00" not in t)
    return st.one_of(
        tag.map(lambda n: ("path", f"../{prefix}esc{n}")),
        tag.map(lambda n: ("path", f"{prefix}{n}/../../{prefix}esc{n}")),
        tag.map(lambda n: ("path", f"{prefix}dir{n}/sub")),
        tag.map(lambda n: ("path", f"/tmp/{prefix}abs{n}")),
        tag.map(lambda n: ("path", f"{prefix}nul{n}\x00tail")),
        # bare "..", "." or "/" would make a careless plugin work on (or delete) its own base
        # folder or the one above it: every other name carries this run's prefix
        st.just(("path", "")),
        st.tuples(tag, unicode).map(lambda t: ("unicode", f"{prefix}u{t[0]}-{t[1]}é漢")),
    )


@check(CHECKS, "R02", "Names with /, .., NUL and unicode", "protocol §3.3")
def hostile_names(ctx: VolumeContext) -> Outcome:
    st = _hypothesis()
    ctx.phase = "robustness"
    ctx.state.pop("bare_errors", None)
    problems: list[str] = []
    unsafe: list[str] = []
    odd: list[str] = []
    escaped: list[str] = []

    def one(value: tuple[str, str]) -> None:
        kind, name = value
        body = json.dumps({"Name": name, "Opts": dict(ctx.opts)}).encode() + b"\n"
        accepted: list[str] = []
        _send(ctx, "Create", body, problems, accepted)
        if accepted:
            (unsafe if kind == "path" else odd).extend(accepted)
            if kind == "path":
                escaped.extend(_escaped(ctx, name))
            ctx.state.setdefault("accepted_names", []).append(name)
            ctx.remove(name, expect_ok=None)
        raw = json.dumps({"Name": name}).encode() + b"\n"
        _send(ctx, "Get", raw, problems, unsafe)

    _explore(_names(st, ctx.prefix), one)
    if problems:
        return failed(f"{len(problems)} calls unanswered: " + "; ".join(problems[:3]))
    if unsafe:
        outside = f"; made folders outside its own: {sorted(set(escaped))[:2]}" if escaped else ""
        also = f"; also {len(odd)} non-ASCII names accepted" if odd else ""
        return failed(
            f"{len(unsafe)} path-like names accepted (a plugin must not build paths from "
            f"them): " + "; ".join(unsafe[:2]) + outside + also
        )
    if odd:
        return warned(
            f"{len(odd)} non-ASCII names accepted (docker's own local driver allows only "
            f"[a-zA-Z0-9][a-zA-Z0-9_.-]): " + "; ".join(odd[:2])
        )
    return _bare(ctx, "every hostile name rejected")


@check(CHECKS, "R03", "A 20 MB body gets an error, not a hang", "protocol §1.7")
def huge_body(ctx: VolumeContext) -> Outcome:
    name = ctx.prefix + "x" * HUGE
    raw = json.dumps({"Name": name, "Opts": dict(ctx.opts)}).encode() + b"\n"
    try:
        with ctx.client() as client:
            reply: Reply | None = client.call("VolumeDriver.Create", raw=raw)
        answer = describe(reply) if reply is not None else ""
    except TimeoutError:
        return failed(f"no reply within {ctx.timeout:g}s")
    except OSError as exc:
        reply, answer = None, f"connection closed ({type(exc).__name__})"
    if not ctx.alive():
        return failed(f"{answer}; the plugin no longer answers Activate")
    if reply is not None and reply.error is None:
        ctx.remove(name, expect_ok=None)
        return warned(f"a {HUGE >> 20} MB name was accepted: {answer[:80]}")
    return passed(answer)


@check(CHECKS, "R04", "Still up, List unchanged by rejected calls", "issue 6: robustness")
def list_unchanged(ctx: VolumeContext) -> Outcome:
    before = ctx.state.get("names_before")
    if not ctx.alive():
        return failed("the plugin no longer answers Activate")
    after = ctx.list_names()
    if before is None or after is None:
        raise Skip("List failed before or after the robustness run")
    leftover = set(ctx.state.get("accepted_names", []))
    added = sorted(set(after) - set(before))
    lost = sorted(set(before) - set(after))
    rejected_added = [n for n in added if n not in leftover]
    if lost or rejected_added:
        parts = []
        if rejected_added:
            parts.append(f"new after rejected calls: {[short(n, 40) for n in rejected_added[:3]]}")
        if lost:
            parts.append(f"vanished: {[short(n, 40) for n in lost[:3]]}")
        return failed("; ".join(parts))
    if added:
        return warned(f"accepted names could not be removed: {[short(n, 40) for n in added[:3]]}")
    return passed(f"{len(after)} volumes, same names as before")


Fields = dict[str, str]  # a request's field -> "str", "bool", "int", "map", "list" or "struct"


def _garbage(st: Any, endpoints: dict[str, tuple[bool, Fields]]) -> Any:
    """Per endpoint: malformed JSON, bodies that are not objects, and the endpoint's own fields
    with values of the wrong type; nothing Go would decode. (A field of another endpoint would
    be ignored, so a valid request.)"""
    wrong = {
        "str": st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)),
        "bool": st.one_of(st.integers(1, 9), st.text(max_size=4), st.just({})),
        "map": st.one_of(
            st.integers(),
            st.text(max_size=4),
            st.dictionaries(st.just("k"), st.integers(), min_size=1),
        ),
        "list": st.one_of(st.integers(), st.text(max_size=4), st.just({"a": 1})),
        "struct": st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers())),
        "int": st.one_of(st.text(max_size=4), st.booleans(), st.just([1]), st.floats(0.5, 9.5)),
    }

    def typed(fields: Fields) -> Any:
        return st.sampled_from(sorted(fields)).flatmap(
            lambda name: wrong[fields[name]].map(lambda v: json.dumps({name: v}).encode() + b"\n")
        )

    not_object = st.sampled_from([b"[]\n", b'"x"\n', b"0\n", b"true\n"])
    malformed = st.one_of(
        st.sampled_from([b"{", b'{"a":', b"{}}", b"\xff\xfe", b"{'a':1}", b"NaN", b'{"a":1,}']),
        st.binary(min_size=1, max_size=48).filter(lambda b: b.strip() not in (b"", b"null")),
    )
    return st.sampled_from(sorted(endpoints)).flatmap(
        lambda ep: st.tuples(st.just(ep), st.one_of(typed(endpoints[ep][1]), not_object, malformed))
    )


def reject_garbage(
    ctx: Context,
    endpoints: dict[str, tuple[bool, Fields]],
    accepted: Callable[[str, Reply], bool] | None = None,
) -> Outcome:
    """The robustness check of the non-volume kinds: bad bodies on ``endpoints`` (value: whether
    taking garbage as valid there is serious, and the endpoint's fields) must be answered,
    rejected, and leave the plugin up. ``accepted`` says whether a reply took the call as valid
    (default: no error as ``ctx.error`` reads it)."""
    st = _hypothesis()
    ctx.phase = "robustness"
    took = accepted or (lambda _endpoint, reply: ctx.error(reply) is None)
    problems: list[str] = []
    serious: list[str] = []
    lenient: list[str] = []
    bare: list[str] = []

    def one(value: tuple[str, bytes]) -> None:
        endpoint, raw = value
        reply = _send_garbage(ctx, endpoint, raw, problems)
        if reply is None:
            return
        if took(endpoint, reply):
            (serious if endpoints[endpoint][0] else lenient).append(
                f"{endpoint} {short(raw, 60)} -> {describe(reply)}"
            )
        elif reply.status != 200 and not (
            isinstance(data := reply_json(reply), dict) and data.get("Err")
        ):
            bare.append(f"{endpoint}: {describe(reply)}")

    _explore(_garbage(st, endpoints), one)
    sent = sum(1 for ex in ctx.log if ex.phase == "robustness")
    ctx.phase = "sequence"
    if problems:
        return failed(f"{len(problems)} calls unanswered: " + "; ".join(problems[:3]))
    if not ctx.alive():
        return failed("the plugin no longer answers Activate after the bad bodies")
    if serious:
        return failed(f"{len(serious)} bad bodies accepted, e.g. " + "; ".join(serious[:3]))
    if lenient:
        return warned(f"{len(lenient)} bad bodies answered as success, e.g. {lenient[0]}")
    if bare:
        return warned(f"{sent} calls rejected, but {len(bare)} without an Err, e.g. {bare[0]}")
    return passed(f"{sent} calls, every bad body rejected; still up")
