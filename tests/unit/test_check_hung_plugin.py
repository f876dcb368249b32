"""``dockplug check`` against a plugin that stops answering: the rest of the run is skipped at
once instead of waiting out every later call (a hung rclone cost minutes per replay)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from dockplug.conformance import run as run_conformance
from dockplug.conformance.checks import Result

ACTIVATE = b'{"Implements": ["VolumeDriver"]}'


def _serve(sock: socket.socket, stop: threading.Event) -> None:
    """Answers Plugin.Activate and VolumeDriver.Capabilities; anything else hangs the plugin
    (it reads the request and never replies, nor to anything after)."""
    hung = threading.Event()
    sock.settimeout(0.2)
    held: list[socket.socket] = []
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        held.append(conn)
        threading.Thread(target=_answer, args=(conn, hung), daemon=True).start()
    for conn in held:
        conn.close()


def _answer(conn: socket.socket, hung: threading.Event) -> None:
    with conn:
        while True:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(rest) < length:
                rest += conn.recv(65536)
            path = head.split(b" ")[1]
            if hung.is_set() or path not in (b"/Plugin.Activate", b"/VolumeDriver.Capabilities"):
                hung.set()
                time.sleep(3600)
            body = ACTIVATE if path == b"/Plugin.Activate" else b'{"Capabilities": {}}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip


def test_a_plugin_that_stops_answering_ends_the_run_quickly(tmp_path: Path) -> None:
    path = tmp_path / "hung.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    stop = threading.Event()
    server = threading.Thread(target=_serve, args=(sock, stop), daemon=True)
    server.start()
    try:
        began = time.monotonic()
        report = run_conformance(str(path), kind="volume", timeout=1.0)
        took = time.monotonic() - began
    finally:
        stop.set()
        server.join(5)
        sock.close()
    results = {r.id: r for r in report.results}
    failed = [r for r in report.results if r.result is Result.FAIL]
    skipped = [r for r in report.results if "stopped answering" in r.evidence]
    assert failed, report.results
    assert len(skipped) >= len(results) // 2, [(r.id, r.result, r.evidence) for r in report.results]
    assert all(r.result is Result.SKIP for r in skipped)
    assert took < 60, f"the run took {took:.0f} s"
