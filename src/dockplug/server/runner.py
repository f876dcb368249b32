"""Running a plugin: bind, announce, serve, and shut down cleanly on SIGTERM/SIGINT.

Order matters for dockerd: the socket listens before the driver's slow start-up work runs (a
managed plugin has ~10 s to create its socket), and on stop the socket and discovery files go
away only after in-flight requests have been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockplug.errors import ConfigError
from dockplug.facts import DEFAULT_BUSY_POLL_US, PLUGIN_DIR, default_socket
from dockplug.observe.events import set_event_format
from dockplug.observe.health import Health
from dockplug.observe.metrics import NO_METRICS, Metrics
from dockplug.protocol.base import Driver
from dockplug.server import discovery, listeners
from dockplug.server.app import PluginApp
from dockplug.server.http import HttpServer
from dockplug.server.reqlog import RequestLog

if TYPE_CHECKING:  # the side listener (http.server) loads only with --metrics
    from dockplug.server.side import SideListener


@dataclass
class TLSSettings:
    """Server identity, optional client-certificate check, and what dockerd gets told.

    ``ca`` is written to the ``.json`` file so dockerd verifies our certificate; ``client_ca``
    makes the server require client certificates signed by it; ``client_cert``/``client_key``
    are the identity dockerd presents (written to the ``.json`` file too).
    """

    cert: Path
    key: Path
    ca: Path | None = None
    client_ca: Path | None = None
    client_cert: Path | None = None
    key_for_client: Path | None = None

    def announce(self) -> discovery.TLSOptions:
        return discovery.TLSOptions(
            ca_file=str(self.ca) if self.ca else "",
            cert_file=str(self.client_cert) if self.client_cert else "",
            key_file=str(self.key_for_client) if self.key_for_client else "",
            insecure_skip_verify=self.ca is None,
        )


@dataclass
class ServeOptions:
    name: str
    socket: Path | None = None
    tcp: str | None = None
    advertise: str | None = None
    tls: TLSSettings | None = None
    spec_dir: Path = discovery.SPEC_DIRS[0]
    announce: str = "auto"  # auto | spec | json | none
    socket_group: str | None = None
    debug: bool = False
    graceful_timeout: int = 30
    metrics: str | None = None  # side listener for /metrics and /health: HOST:PORT or unix:PATH
    log_format: str = "text"  # text | json
    busy_poll: float = DEFAULT_BUSY_POLL_US / 1e6  # seconds of polling after a reply (0: off)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Tells a file from a later one at the same path (ext4 reuses a freed inode at once)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


@dataclass
class Bound:
    """What a started plugin listens on and which files it owns."""

    sockets: list[socket.socket]
    socket_files: list[Path]
    discovery_files: list[Path]
    url: str
    # the files as we made them: a successor that replaced one while we drained keeps it
    identities: dict[Path, tuple[int, int, int] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.identities = {p: _identity(p) for p in self.socket_files + self.discovery_files}


def bind(opts: ServeOptions) -> Bound:
    """Open the listening sockets and write discovery files (nothing is served yet)."""
    discovery.check_plugin_name(opts.name)
    inherited = listeners.systemd_listeners()
    if inherited:
        url = listeners.socket_address(inherited[0])
        return Bound(inherited, [], [], url)
    if opts.tcp:
        sock = listeners.tcp_listener(opts.tcp)
        host, port = sock.getsockname()[:2]
        if opts.advertise:
            host_port = opts.advertise
        else:
            shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            host_port = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
        files: list[Path] = []
        try:
            if opts.tls is not None:
                url = f"https://{host_port}"
                # dockerd speaks TLS only for https:// addresses; a .spec can't carry the CA
                if opts.announce != "none":
                    files.append(
                        discovery.write_json(opts.spec_dir, opts.name, url, opts.tls.announce())
                    )
            else:
                url = f"tcp://{host_port}"
                if opts.announce == "json":
                    files.append(discovery.write_json(opts.spec_dir, opts.name, url, None))
                elif opts.announce != "none":
                    files.append(discovery.write_spec(opts.spec_dir, opts.name, url))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot write discovery file in {opts.spec_dir}: {exc}") from exc
        return Bound([sock], [], files, url)
    path = Path(opts.socket) if opts.socket else default_socket(opts.name)
    if opts.tls is not None:
        raise ConfigError("TLS needs --tcp: dockerd never speaks TLS over a unix socket")
    sock = listeners.unix_listener(path, group=opts.socket_group)
    url = f"unix://{path}"
    files = []
    discoverable = path in (
        default_socket(opts.name),
        PLUGIN_DIR / opts.name / f"{opts.name}.sock",
    )
    try:
        if opts.announce == "json":
            files.append(discovery.write_json(opts.spec_dir, opts.name, url, None))
        elif opts.announce == "spec" or (opts.announce == "auto" and not discoverable):
            files.append(discovery.write_spec(opts.spec_dir, opts.name, url))
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write discovery file in {opts.spec_dir}: {exc}") from exc
    return Bound([sock], [path], files, url)


def release(bound: Bound) -> None:
    """Remove the files we made, unless another instance has replaced them meanwhile."""
    for path in bound.discovery_files + bound.socket_files:
        made = bound.identities.get(path)
        if made is not None and _identity(path) == made:
            with contextlib.suppress(OSError):
                path.unlink()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def ssl_context(tls: TLSSettings | None) -> Any:
    """The server's TLS context, or None; ``ssl`` loads only for a TLS plugin."""
    if tls is None:
        return None
    import ssl

    for label, path in (("--tls-cert", tls.cert), ("--tls-key", tls.key)):
        if not Path(path).is_file():
            raise ConfigError(f"{label} {path}: no such file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--tls-cert {tls.cert} / --tls-key {tls.key}: {exc}") from exc
    if tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--tls-client-ca {tls.client_ca}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class PluginServer:
    """One plugin server: bind, serve until asked to stop, clean up. Usable from any thread."""

    def __init__(self, drivers: Driver | Sequence[Driver], opts: ServeOptions) -> None:
        self.opts = opts
        self.log = RequestLog(debug=opts.debug, json_lines=opts.log_format == "json")
        set_event_format(opts.log_format)
        self.app = PluginApp(drivers, log=self.log)
        self.ssl = ssl_context(opts.tls)
        self.http = HttpServer(self.app, ssl=self.ssl, busy_poll=opts.busy_poll)
        self.metrics = _metrics(self.app.drivers, opts)
        if self.metrics.enabled:
            self.app.observer = self.metrics.request_done
            self.metrics.gauge_fn("requests_in_flight", "Calls being answered now", self._in_flight)
        self.health = Health(opts.name)
        self.app.health = self.health.report
        for driver in self.app.drivers:
            driver.declare_metrics(self.metrics.family(driver.metrics_family))
            self.health.checks.append(driver.health_reasons)
        self.side: SideListener | None = None
        self.bound: Bound | None = None
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_asked = False

    @property
    def url(self) -> str:
        return self.bound.url if self.bound else ""

    def stop(self) -> None:
        """Ask for a graceful stop; safe from any thread and from signal handlers."""
        self._stop_asked = True
        loop, event = self._loop, self._stop
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    def _in_flight(self) -> float:
        return sum(1 for c in list(self.http.connections) if c.busy)

    async def _startup(self) -> None:
        self.health.listening = True
        self.metrics.phase("startup", time.time() - self.health.started)
        t0 = time.perf_counter()
        for driver in self.app.drivers:
            try:
                await _maybe_await(driver.startup())
            except Exception as exc:
                self.log.event(f"start-up of {type(driver).__name__} failed: {exc}")
        self.metrics.phase("reconcile", time.perf_counter() - t0)
        self.health.started_up = True

    async def serve(self) -> None:
        """Serve until stop() or SIGTERM/SIGINT; returns after a clean shutdown."""
        opts, app, log = self.opts, self.app, self.log
        self.bound = bound = bind(opts)
        if opts.metrics:
            try:
                self.side = self._side_listener(bound)
            except Exception:
                release(bound)
                raise
            log.event(f"metrics and health on {self.side.url}")
        announced = ", ".join(map(str, bound.discovery_files))
        log.event(
            f"dockplug serving {opts.name} ({', '.join(app.implements)}) on {bound.url}"
            + (f" announced by {announced}" if announced else "")
        )
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_asked:
            self._stop.set()
        signals: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            # a stop signal drains and returns, so systemd and dockerd see a clean exit 0
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                signals.append(sig)
        startup_task: asyncio.Task[None] | None = None
        try:
            await self.http.start(bound.sockets)
            self.ready.set()
            startup_task = asyncio.create_task(self._startup())
            await self._stop.wait()
            await self.http.shutdown(opts.graceful_timeout)
        finally:
            if startup_task is not None:
                startup_task.cancel()
            self.health.stopping = True
            if self.side is not None:
                self.side.stop()
            for sock in bound.sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            release(bound)
            for driver in app.drivers:
                try:
                    await _maybe_await(driver.shutdown())
                except Exception as exc:
                    log.event(f"shutdown of {type(driver).__name__} failed: {exc}")
            app.close()
            log.event(f"dockplug {opts.name} stopped")
            log.flush()
            # A second stop signal while the process exits (systemd, dockerd and tests may
            # repeat it) must not turn a clean exit 0 into death by signal: SIG_IGN (a Python
            # handler is reset to SIG_DFL by interpreter finalization), set in place of the
            # loop's handler. Removing that first restores SIG_DFL for a moment, and another
            # thread holding the GIL can stretch the moment to milliseconds: a repeated
            # SIGTERM killed the process there. uvloop leaves the disposition alone when it
            # closes; asyncio's own loop resets it, so there the handler is removed first.
            on_uvloop = type(loop).__module__.startswith("uvloop")
            for sig in signals:
                if not on_uvloop:
                    loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)

    def _side_listener(self, bound: Bound) -> SideListener:
        from dockplug.observe.prometheus import CONTENT_TYPE_LATEST, PrometheusMetrics
        from dockplug.server.side import SideListener, parse_address

        metrics = self.metrics
        assert isinstance(metrics, PrometheusMetrics)
        plugin_socket = bound.socket_files[0] if bound.socket_files else None
        return SideListener(
            parse_address(self.opts.metrics or ""),
            lambda: (metrics.exposition(), CONTENT_TYPE_LATEST),
            self.health.report,
            plugin_socket,
        ).start()


def _metrics(drivers: Sequence[Driver], opts: ServeOptions) -> Metrics:
    """Real metrics only with --metrics: prometheus_client costs start-up time otherwise."""
    if not opts.metrics:
        return NO_METRICS
    from dockplug.server.side import parse_address

    parse_address(opts.metrics)  # a bad address fails before anything is bound
    from importlib.metadata import version

    from dockplug.observe.prometheus import PrometheusMetrics

    return PrometheusMetrics(opts.name, type(drivers[0]).__name__, version("dockplug"))


async def serve_async(drivers: Driver | Sequence[Driver], opts: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT; returns after a clean shutdown."""
    await PluginServer(drivers, opts).serve()


def new_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run(
    drivers: Driver | Sequence[Driver], opts: ServeOptions | None = None, **kwargs: Any
) -> None:
    """Blocking entry point: ``dockplug.run(MyDriver(), name="mine")``."""
    opts = opts or ServeOptions(**kwargs)
    with new_runner() as runner:
        runner.run(serve_async(drivers, opts))
