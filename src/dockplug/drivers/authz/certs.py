"""The few X.509 facts a policy needs (subject CN, SANs, SHA-256 fingerprint), read from the DER
of the client certificate dockerd forwards; a minimal reader, so no crypto library is needed.

dockerd sends ``User`` (the CN) and ``RequestPeerCertificates`` only when it serves TCP with
``--tlsverify``: it verified the chain, so these facts are the client's identity.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass

_CN = bytes.fromhex("550403")  # 2.5.4.3
_SAN = bytes.fromhex("551d11")  # 2.5.29.17


class CertError(ValueError):
    pass


@dataclass(frozen=True)
class CertInfo:
    cn: str
    sans: tuple[str, ...]  # "DNS:x", "IP:1.2.3.4", "email:x", "URI:x"
    fingerprint: str  # sha256 of the DER, lower-case hex


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at POS."""
    if pos + 2 > len(data):
        raise CertError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise CertError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise CertError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out, pos = [], start
    while pos < end:
        tag, s, e = _tlv(data, pos)
        out.append((tag, s, e))
        pos = e
    return out


def der_from_pem(pem: str) -> bytes:
    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.DOTALL)
    if m is None:
        raise CertError("no PEM certificate")
    return base64.b64decode("".join(m.group(1).split()), validate=True)


def read(der: bytes) -> CertInfo:
    _, s, e = _tlv(der, 0)
    _, ts, te = _children(der, s, e)[0]
    fields = _children(der, ts, te)
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    if len(fields) < 6:
        raise CertError("not an X.509 certificate")
    subject = fields[4]
    cn = ""
    for _, rs, re_ in _children(der, subject[1], subject[2]):  # RDN sets
        for _, as_, ae in _children(der, rs, re_):  # AttributeTypeAndValue
            (_, os_, oe), (_, vs, ve) = _children(der, as_, ae)[:2]
            if der[os_:oe] == _CN:
                cn = der[vs:ve].decode("utf-8", "replace")
    sans: list[str] = []
    for tag, xs, xe in fields[6:]:
        if tag != 0xA3:
            continue
        (_, ls, le), *_ = _children(der, xs, xe)
        for _, es, ee in _children(der, ls, le):
            parts = _children(der, es, ee)
            if der[parts[0][1] : parts[0][2]] != _SAN:
                continue
            _, vs, ve = parts[-1]  # OCTET STRING holding GeneralNames
            (_, gs, ge), *_ = _children(der, vs, ve)
            for gtag, ns, ne in _children(der, gs, ge):
                value = der[ns:ne]
                if gtag == 0x82:
                    sans.append("DNS:" + value.decode("ascii", "replace"))
                elif gtag == 0x81:
                    sans.append("email:" + value.decode("ascii", "replace"))
                elif gtag == 0x86:
                    sans.append("URI:" + value.decode("ascii", "replace"))
                elif gtag == 0x87 and len(value) in (4, 16):
                    sans.append(f"IP:{ipaddress.ip_address(value)}")
    return CertInfo(cn, tuple(sans), hashlib.sha256(der).hexdigest())
