"""pytest fixtures for real etcd servers (registered by :mod:`dockplug.testing.pytest_plugin`).

``etcd`` and ``etcd35`` are one server each for the whole session (3.4 from bookworm's
``etcd-server``, 3.5 from trixie, see :mod:`dockplug.testing.etcd`); ``etcd_server(series,
tls=...)`` starts a fresh one for one test, for tests that pause, kill or restart it. Each skips
with the reason when that etcd cannot run here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dockplug.testing.etcd import EtcdServer, find_etcd
from dockplug.testing.pki import Certificates


def _binary(series: str) -> EtcdServer:
    binary, reason = find_etcd(series)
    if binary is None:
        pytest.skip(reason)
    return EtcdServer(binary)


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """A running etcd 3.4 (bookworm's etcd-server) on 127.0.0.1, shared by the session."""
    with _binary("3.4") as server:
        yield server.start()


@pytest.fixture(scope="session")
def etcd35() -> Iterator[EtcdServer]:
    """A running etcd 3.5 (trixie's etcd-server, unpacked into a cache), shared by the session."""
    with _binary("3.5") as server:
        yield server.start()


@pytest.fixture
def etcd_server() -> Iterator[Callable[..., EtcdServer]]:
    """``etcd_server("3.4" | "3.5", tls=certificates)`` -> a fresh started etcd for this test."""
    started: list[EtcdServer] = []

    def start(series: str = "3.4", tls: Certificates | None = None) -> EtcdServer:
        server = _binary(series)
        server.tls = tls
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
