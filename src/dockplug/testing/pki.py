"""Throwaway certificates for testing TLS plugins: a CA, a server certificate for 127.0.0.1,
a client certificate, and a second CA that signed neither (to test refusals)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=dockplug-{name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, extensions: str) -> None:
    (d / f"{name}.ext").write_text(
        extensions + "\nbasicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN=dockplug-{name}", cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


def make_certificates(directory: Path) -> Certificates:
    """Writes the PEM files into ``directory`` with the ``openssl`` command."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    _leaf(d, "client", "extendedKeyUsage=clientAuth")
    return Certificates(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
    )


def client_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """One more client certificate (CN ``dockplug-NAME``) from the CA ``make_certificates``
    wrote into DIRECTORY: (cert, key). For tests with several TLS users."""
    d = Path(directory)
    _leaf(d, name, "extendedKeyUsage=clientAuth")
    return d / f"{name}.pem", d / f"{name}.key"
