"""The options of an sshfs volume (``-o``): each parsed and checked before anything runs,
because each one ends up in an ssh config or an sshfs command line."""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from dockplug.drivers.options import Option, OptionSet, parse_bool, parse_int, parse_mode
from dockplug.errors import InvalidOption
from dockplug.observe import add_secret
from dockplug.state.secrets import check_secret_name

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]")
# characters a path may not hold where it goes into ssh's config (tokens, quoting, comments)
_CONFIG_UNSAFE = re.compile(r"[\s\"'%#\\,]|[\x00-\x1f\x7f]")
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


# -- option parsers ------------------------------------------------------------------------


def parse_sshcmd(text: str) -> str:
    """``[user@]host:[/path]`` -> the same, checked (no '-' host that ssh would read as a flag)."""
    user, at, rest = text.rpartition("@") if "@" in text.split(":", 1)[0] else ("", "", text)
    if rest.startswith("["):
        close = rest.find("]")
        host, colon, path = rest[: close + 1], rest[close + 1 : close + 2], rest[close + 2 :]
    else:
        host, colon, path = rest.partition(":")
    if not colon:
        raise ValueError("expected [user@]host:[/path], e.g. alice@files.example.com:/srv/data")
    if at and not _USER.fullmatch(user):
        raise ValueError(f"user {user[:40]!r} is not a plain user name")
    if not _HOST.fullmatch(host):
        raise ValueError(f"host {host[:80]!r} is not a host name or address")
    if any(c in path for c in "\0\n\r"):
        raise ValueError("the remote path cannot hold NUL or line breaks")
    return f"{user}{at}{host}:{path}"


def _host_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("expected an absolute path on the plugin's host, e.g. /etc/dockplug/key")
    if ".." in text.split("/"):
        raise ValueError("'..' is not allowed in the path")
    if _CONFIG_UNSAFE.search(text):
        raise ValueError("the path may not hold spaces, quotes, '%', '#', ',' or backslashes")
    return os.path.normpath(text)


def parse_host_key(text: str) -> str:
    """A known_hosts line (``host TYPE BASE64 [comment]``) or a public key (``TYPE BASE64``)
    -> ``TYPE BASE64``. The host part is dropped: the key is pinned for this volume only."""
    words = text.split()
    if words and words[0].startswith("@"):
        raise ValueError("@cert-authority and @revoked lines are not supported")
    for i in range(min(2, len(words))):
        if words[i] in KEY_TYPES and i + 1 < len(words):
            kind, blob = words[i], words[i + 1]
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError:
                raise ValueError("the key is not valid base64") from None
            size = int.from_bytes(raw[:4], "big")
            if raw[4 : 4 + size] != kind.encode():
                raise ValueError(f"the key data is not a {kind} key")
            return f"{kind} {blob}"
    raise ValueError(
        "expected a public host key such as 'ssh-ed25519 AAAA...' or a known_hosts line "
        "(ssh-keyscan prints them); types: " + ", ".join(sorted(KEY_TYPES))
    )


def _password(text: str) -> str:
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("a password cannot hold line breaks or NUL")
    add_secret(text)
    return text


def _secret_name(text: str) -> str:
    try:
        return check_secret_name(text)
    except Exception as exc:
        raise ValueError(str(exc)) from None


def _yes_no(text: str) -> str:
    return "yes" if parse_bool(text) else "no"


_CIPHER = re.compile(r"[a-z0-9@.+-]+(,[a-z0-9@.+-]+)*")


def _ciphers(text: str) -> str:
    if not _CIPHER.fullmatch(text):
        raise ValueError("expected a comma-separated list of ssh cipher names")
    return text


def _idmap(text: str) -> str:
    if text not in ("none", "user"):
        raise ValueError("expected none or user")
    return text


SSHFS_OPTIONS = OptionSet(
    "sshfs",
    [
        Option("sshcmd", "remote folder, required: [user@]host:[/path]", parse_sshcmd,
               "alice@10.0.0.5:/srv/data"),
        Option("port", "ssh port (default 22)", parse_int(1, 65535), "2222"),
        Option("identity_file", "private key file on the plugin's host (no passphrase)",
               _host_path, "/etc/dockplug/ssh/id_ed25519"),
        Option("password_file", "file holding the password (read at each mount)", _host_path,
               "/etc/dockplug/ssh/pass"),
        Option("secret", "name of a password stored with `dockplug secret set NAME`",
               _secret_name, "files-pw"),
        Option("password", "inline password (only with --allow-inline-secrets; kept in the "
               "secrets store, never in the volume)", _password, secret=True),
        Option("host_key", "pin the server's public host key (or a known_hosts line)",
               parse_host_key, "'ssh-ed25519 AAAA...'"),
        Option("known_hosts_file", "known_hosts file on the plugin's host to check the server "
               "against", _host_path, "/etc/dockplug/ssh/known_hosts"),
        Option("insecure_ignore_host_key", "skip host key checking (unsafe; default: strict)",
               parse_bool, "true"),
        Option("allow_other", "let every user (not only root) use the mount", parse_bool,
               "true"),
        Option("uid", "owner user id the files appear with", parse_int(), "1000"),
        Option("gid", "owner group id the files appear with", parse_int(), "1000"),
        Option("umask", "permission mask applied to the files, octal", parse_mode, "0022"),
        Option("readonly", "mount read-only", parse_bool, "true"),
        Option("reconnect", "reconnect after the connection drops (default true)", parse_bool,
               "false"),
        Option("server_alive_interval", "seconds between keep-alives (default 15)",
               parse_int(1, 3600), "15"),
        Option("server_alive_count", "missed keep-alives before the link is dead (default 3)",
               parse_int(1, 100), "3"),
        Option("connect_timeout", "seconds to wait for the TCP connection (default 10)",
               parse_int(1, 300), "10"),
        Option("compression", "ssh compression yes/no", _yes_no, "yes"),
        Option("ciphers", "ssh ciphers to offer", _ciphers, "aes128-gcm@openssh.com"),
        Option("dir_cache", "sshfs directory cache yes/no", _yes_no, "no"),
        Option("kernel_cache", "keep file data in the kernel page cache", parse_bool, "true"),
        Option("follow_symlinks", "follow symlinks on the server", parse_bool, "true"),
        Option("transform_symlinks", "turn absolute symlinks into relative ones", parse_bool,
               "true"),
        Option("idmap", "user (default): remote user's files appear as root's; none: as "
               "they are", _idmap, "none"),
    ],
)  # fmt: skip

PASSWORD_SOURCES = ("password", "password_file", "secret")
HOST_KEY_SOURCES = ("host_key", "known_hosts_file", "insecure_ignore_host_key")
FLAGS = ("allow_other", "kernel_cache", "follow_symlinks", "transform_symlinks")


def validate(opts: dict[str, Any]) -> None:
    """What single options cannot say: required and mutually exclusive options."""
    if "sshcmd" not in opts:
        raise InvalidOption(
            "option sshcmd is required: -o sshcmd=[user@]host:[/path] (-o help lists all)"
        )
    given = [k for k in PASSWORD_SOURCES if k in opts]
    if len(given) > 1:
        raise InvalidOption(f"options {' and '.join(given)} exclude each other: give one password")
    given = [k for k in HOST_KEY_SOURCES if opts.get(k) not in (None, False)]
    if len(given) > 1:
        raise InvalidOption(
            f"options {' and '.join(given)} exclude each other: pin a host key, name a "
            "known_hosts file, or (unsafe) ignore host keys"
        )
