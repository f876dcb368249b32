"""Listening sockets: unix (the dockerd default), TCP, and sockets inherited from systemd.

We bind sockets ourselves rather than letting the server library do it, because dockerd's
conventions differ from a web server's: the path has a hard length limit, a stale socket file may
be replaced but a live one must never be stolen, and the mode is 0660, not 0666.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from pathlib import Path

from dockplug.errors import ConfigError
from dockplug.facts import UNIX_PATH_MAX

SD_LISTEN_FDS_START = 3


def check_socket_path(path: Path) -> None:
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise ConfigError(
            f"socket path {path} is {size} bytes; unix sockets allow at most {UNIX_PATH_MAX}. "
            "Use a shorter --name or --socket"
        )


def _is_listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ConfigError(f"cannot tell whether {path} is in use: {exc.strerror}") from exc
    finally:
        probe.close()
    return True


def unix_listener(path: Path, mode: int = 0o660, group: str | None = None) -> socket.socket:
    """Bind ``path``, replacing a stale socket file but never one something listens on."""
    path = Path(path)
    check_socket_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        if _is_listening(path):
            raise ConfigError(f"another process is already listening on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # never expose the socket, even for an instant
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        if group is not None:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                raise ConfigError(f"--socket-group: no such group {group!r}") from None
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def parse_tcp(addr: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``[v6]:PORT`` or ``tcp://...``; the host defaults to loopback."""
    text = addr.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--tcp {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def tcp_listener(addr: str) -> socket.socket:
    host, port = parse_tcp(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def systemd_listeners() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS``), or none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def socket_address(sock: socket.socket) -> str:
    """A URL dockerd understands for a bound socket (``unix:///...`` or ``tcp://h:p``)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return "unix://" + (name.decode() if isinstance(name, bytes) else name)
    host, port = name[0], name[1]
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"
