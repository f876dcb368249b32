"""The doctor's etcd check: the cluster store an installed plugin is set to use, probed from
this host (the contiv case: an etcd setting that silently did not take effect)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from dockplug.packaging.findings import Finding, _get

ETCD_SETTINGS = {
    "ETCD_ENDPOINTS": "--etcd",
    "ETCD_CA": "--etcd-ca",
    "ETCD_CERT": "--etcd-cert",
    "ETCD_KEY": "--etcd-key",
}
ETCD_PROBE_TIMEOUT = 2.0  # seconds each endpoint gets to answer the doctor


def _effective(env: Any, args: list[str], variable: str, flag: str) -> str:
    """The value the plugin's process gets for VARIABLE / FLAG: a flag in its args wins over
    the environment (click reads envvars only for flags not given)."""
    value = ""
    for item in env or []:
        text = str(item)
        if text.startswith(f"{variable}="):
            value = text.partition("=")[2]
    for i, word in enumerate(args):
        if word == flag and i + 1 < len(args):
            value = args[i + 1]
        elif word.startswith(f"{flag}="):
            value = word.partition("=")[2]
    return value.strip()


def plugin_path_on_host(path: str, mounts: Any, rootfs: Path | None) -> Path | None:
    """Where the file PATH inside the plugin is on the host: under the bind mount with the
    longest destination holding it, else in the rootfs (None: neither is known)."""
    pure = PurePosixPath(path)
    best: tuple[int, Path] | None = None
    for m in mounts or []:
        dest, source = _get(m, "destination"), _get(m, "source")
        if not isinstance(dest, str) or not isinstance(source, str) or not source:
            continue
        d = PurePosixPath(dest)
        if pure == d or d in pure.parents:
            depth = len(d.parts)
            if best is None or depth > best[0]:
                best = (depth, Path(source) / pure.relative_to(d))
    if best is not None:
        return best[1]
    return rootfs / pure.relative_to("/") if rootfs is not None else None


def _run(coro: Any) -> Any:
    """asyncio.run, in a thread of its own when this thread already runs an event loop."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _probe(url: str, tls: dict[str, Path], timeout: float) -> Any:
    from dockplug.state.etcd_kv import EtcdKV

    kv = EtcdKV(url, timeout=timeout, ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"))
    try:
        return await kv.health(timeout=timeout)
    finally:
        await kv.close()


def check_etcd(
    name: str,
    config: Any,
    settings: Any,
    rootfs: Path | None = None,
    probe: bool = True,
    timeout: float = ETCD_PROBE_TIMEOUT,
) -> list[Finding]:
    """The etcd a plugin is set to use (its ETCD_ENDPOINTS Env or --etcd in its args, as set in
    SETTINGS) answers: probed from this host with dockplug's etcd client, which is the plugin's
    view when it has the host's network. A setting that silently did not take effect (a plugin
    back on SQLite) is the failure this names; PROBE False checks the settings only."""
    from dockplug.errors import ConfigError
    from dockplug.state.etcd_kv import parse_endpoints

    declared = {_get(e, "name") for e in _get(config, "env") or []}
    args = [str(a) for a in (settings.get("Args") or _get(config, "args", "value") or [])]
    env = settings.get("Env") or [
        f"{_get(e, 'name')}={_get(e, 'value') or ''}" for e in _get(config, "env") or []
    ]
    if "ETCD_ENDPOINTS" not in declared and not any(
        a == "--etcd" or a.startswith("--etcd=") for a in args
    ):
        return []
    value = {var: _effective(env, args, var, flag) for var, flag in ETCD_SETTINGS.items()}
    endpoints = value["ETCD_ENDPOINTS"]
    if not endpoints:
        return [
            Finding(
                "etcd-unset",
                "warning",
                f"{name} has no etcd endpoints (ETCD_ENDPOINTS is empty and its args have no "
                "--etcd): it keeps its state in SQLite, for this host only",
                f"docker plugin disable {name}; docker plugin set {name} "
                f"ETCD_ENDPOINTS=http://HOST:2379[,...]; docker plugin enable {name}",
            )
        ]
    try:
        urls = [url for url, _ in parse_endpoints(endpoints)]
    except ConfigError as exc:
        return [
            Finding(
                "etcd-endpoint-malformed",
                "error",
                f"{name}'s ETCD_ENDPOINTS={endpoints!r} does not parse ({exc}); the plugin "
                "will not start",
                f"docker plugin set {name} ETCD_ENDPOINTS=http(s)://HOST:PORT[,...]",
            )
        ]
    findings: list[Finding] = []
    tls: dict[str, Path] = {}
    mounts = settings.get("Mounts") or _get(config, "mounts")
    for var, keyword in (("ETCD_CA", "ca"), ("ETCD_CERT", "cert"), ("ETCD_KEY", "key")):
        path = value[var]
        if not path:
            continue
        host = plugin_path_on_host(path, mounts, rootfs) if path.startswith("/") else None
        if host is None and path.startswith("/"):
            continue  # neither a mount nor a readable rootfs holds it: nothing to look at
        if host is None or not host.is_file():
            where = f" (on the host: {host})" if host is not None else ""
            findings.append(
                Finding(
                    "etcd-tls-missing",
                    "error",
                    f"{name}'s {var}={path} is not a file inside the plugin{where}; the plugin "
                    "cannot reach etcd over TLS without it",
                    f"bind-mount the folder holding it into the plugin (a mount in config.json, "
                    f"source settable with docker plugin set {name} MOUNT.source=DIR) or set "
                    f"{var} to an absolute path inside one of its mounts",
                )
            )
        else:
            tls[keyword] = host
    if not probe or any(f.check == "etcd-tls-missing" for f in findings):
        return findings
    if not urls[0].startswith("https://"):
        tls = {}
    for url in urls:
        try:
            health = _run(_probe(url, tls, timeout))
        except ConfigError as exc:
            findings.append(
                Finding("etcd-tls", "error", f"{name}'s etcd {url}: {exc}", "fix the TLS files")
            )
            continue
        if health.ok:
            findings.append(
                Finding(
                    "etcd-answering",
                    "info",
                    f"{name}'s etcd {url} answers (revision {health.revision}, "
                    f"{health.latency * 1000:.0f} ms, probed from this host)",
                    "nothing to do",
                )
            )
        else:
            findings.append(
                Finding(
                    "etcd-unreachable",
                    "error",
                    f"{name}'s etcd {url} does not answer from this host within {timeout:g} s: "
                    f"{health.error}",
                    f"start etcd there, or docker plugin set {name} ETCD_ENDPOINTS=... to "
                    "the endpoints it listens on (the plugin has the host's network)",
                )
            )
    return findings
