"""Syslog over TCP or TLS: RFC 5424 messages, octet-counted framing (RFC 6587 §3.4.1).

Octet counting, not newline framing, so a line may hold anything (a 100 KiB line arrives whole
if the receiver allows it: rsyslog's ``maxMessageSize`` defaults to 8 KiB). TCP has no
acknowledgements: before and after each batch the connection is checked for the peer's close,
so a receiver that went away makes the batch fail and be sent again, never silently lost. TLS
options are named after Docker's own syslog driver's (``syslog-tls-ca-cert``, ...).

The timeout bounds each wait for room in the connection, not the whole batch: a receiver that
reads slowly (rsyslog on a loaded machine; a batch is megabytes of frames) is not away, and
timing it out would send again what it already has. When a send does fail, the frames handed
over whole are reported taken (:class:`SinkError` ``taken``), so only the rest is sent again:
at most the one frame cut by the failure arrives twice.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import select
import socket
import ssl
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from dockplug.drivers.log.sinks.base import Message, Meta, SinkError

FACILITY = 3  # daemon, as Docker's syslog driver uses by default
SD_ID = "dockplug@32473"


def _header_token(text: str, limit: int) -> str:
    token = "".join(c for c in text if 33 <= ord(c) <= 126)
    return token[:limit] or "-"


def _param_name(key: str) -> str:
    name = "".join(c for c in key if 33 <= ord(c) <= 126 and c not in '= ]"')
    return name[:32] or "_"


def _param_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(meta: Meta) -> str:
    params = [("container_id", meta.id), ("container_name", meta.name),
              ("image_name", meta.image), ("image_id", meta.image_id)]  # fmt: skip
    params += [(f"label.{k}", v) for k, v in meta.labels.items()]
    params += [(f"env.{k}", v) for k, v in meta.env.items()]
    inner = " ".join(f'{_param_name(k)}="{_param_value(v)}"' for k, v in params)
    return f"[{SD_ID} {inner}]"


class Formatter:
    """RFC 5424 frames for one container's batch; what is the same for every message of the
    batch (host, tag, structured data) and every second (the timestamp) is built once."""

    def __init__(self, meta: Meta, hostname: str) -> None:
        tail = f" {hostname} {_header_token(meta.tag, 48)} - "
        sd = structured_data(meta)
        self._after = {src: (tail + f"{src} {sd} ").encode() for src in ("stdout", "stderr")}
        self._second = -1
        self._stamp = ""

    def frame(self, message: Message) -> bytes:
        seconds, nanos = divmod(message.time_nano, 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        source = message.source if message.source in self._after else "stdout"
        pri = FACILITY * 8 + (3 if source == "stderr" else 6)
        body = b"".join((f"<{pri}>1 {self._stamp}.{nanos // 1000:06d}Z".encode(),
                         self._after[source], message.line))  # fmt: skip
        return b"%d %b" % (len(body), body)


def rfc5424(meta: Meta, message: Message, hostname: str) -> bytes:
    """One message, octet-counted (``LEN SP SYSLOG-MSG``)."""
    return Formatter(meta, hostname).frame(message)


class SyslogSink:
    def __init__(self, url: str, tls: dict[str, Any], timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"{url}: expected syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT")
        self.address = (parts.hostname, parts.port)
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if parts.scheme == "syslog+tls":
            ctx = ssl.create_default_context(cafile=tls.get("syslog-tls-ca-cert"))
            if tls.get("syslog-tls-skip-verify"):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if tls.get("syslog-tls-cert"):
                ctx.load_cert_chain(tls["syslog-tls-cert"], tls.get("syslog-tls-key"))
            self.context = ctx
        self.hostname = _header_token(socket.gethostname(), 255)
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname=self.address[0])
        return sock

    def _alive(self, sock: socket.socket) -> bool:
        """False once the receiver closed or reset the connection (it never sends anything)."""
        while select.select([sock], [], [], 0)[0]:
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return True
            except OSError:
                return False
            finally:
                sock.settimeout(self.timeout)
            if not data:
                return False
        return True

    def send(self, meta: Meta, messages: list[Message]) -> None:
        fmt = Formatter(meta, self.hostname)
        frames = [fmt.frame(m) for m in messages]
        data = b"".join(frames)
        view = memoryview(data)
        done = 0
        try:
            if self._sock is not None and not self._alive(self._sock):
                self.close()
            if self._sock is None:
                self._sock = self._connect()
            while done < len(data):  # each send waits up to the timeout for room
                done += self._sock.send(view[done:])
            if not self._alive(self._sock):
                raise SinkError("the syslog receiver closed the connection")
        except (OSError, ssl.SSLError) as exc:
            self.close()
            taken = bisect.bisect_right(list(itertools.accumulate(map(len, frames))), done)
            raise SinkError(f"syslog {self.address[0]}:{self.address[1]}: {exc} (after "
                            f"{taken} of {len(frames)} messages)", taken) from exc  # fmt: skip
        except SinkError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
