"""``--log-opt`` options of dockplug-logs, declared once (type, default, help).

dockerd passes every ``--log-opt`` to the plugin in ``Info.Config``, its own (``mode``,
``max-buffer-size``, ``cache-*``) too, and validates none of a plugin's: a bad value is refused
by StartLogging, which ``docker run`` reports as it fails to start the container.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dockplug.drivers.options import Option, OptionSet, parse_bool, parse_int, parse_size

#: dockerd's own logger options (daemon/logger: mode, ring buffer, the local cache): dockerd acts
#: on them, the plugin only lets them through
DOCKERD_KEYS = frozenset(
    {
        "mode",
        "max-buffer-size",
        "cache-disabled",
        "cache-max-size",
        "cache-max-file",
        "cache-compress",
    }
)

DEFAULT_MAX_SIZE = 20 * 2**20
DEFAULT_MAX_FILE = 5
DEFAULT_MAX_LINE = 1 * 2**20
SCHEMES = ("syslog+tcp", "syslog+tls", "journal-remote+http", "journal-remote+https",
           "loki+http", "loki+https", "elasticsearch+http", "elasticsearch+https")  # fmt: skip


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for key in keys:
        if "=" in key or " " in key:
            raise ValueError("expected comma-separated names such as app,tier (no values)")
    return keys


def parse_forward(text: str) -> tuple[str, ...]:
    """One or more sink URLs, comma-separated; each must use a known scheme."""
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    if not urls:
        raise ValueError(f"expected a URL such as syslog+tcp://127.0.0.1:514; schemes: "
                         f"{', '.join(SCHEMES)}")  # fmt: skip
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in SCHEMES or not rest:
            raise ValueError(f"{url!r}: expected SCHEME://HOST:PORT[/PATH] with SCHEME one of "
                             f"{', '.join(SCHEMES)}")  # fmt: skip
    return urls


def _file(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("expected an absolute path to a PEM file")
    return text


LOG_OPTIONS = OptionSet(
    "dockplug-logs",
    [
        Option("max-size", "rotate the container's segment at this size", parse_size, "20M"),
        Option("max-file", "segments kept per container (older ones are deleted)",
               parse_int(1, 10_000), "5"),
        Option("compress", "gzip rotated segments (default true)", parse_bool, "false"),
        Option("forward", "sink URL(s) for this container, besides the plugin's --forward",
               parse_forward, "syslog+tcp://127.0.0.1:514"),
        Option("labels", "container labels sent to sinks as fields", _keys, "app,tier"),
        Option("env", "environment keys sent to sinks as fields (only values named here "
               "are ever kept)", _keys, "SERVICE"),
        Option("tag", "syslog APP-NAME / journal SYSLOG_IDENTIFIER (default: the container's "
               "name)", str, "web"),
        Option("max-line-size", "lines dockerd split at 16 KiB are rejoined up to this size",
               parse_size, "1M"),
        Option("syslog-tls-ca-cert", "CA bundle that signs the syslog+tls server", _file,
               "/etc/ssl/ca.pem"),
        Option("syslog-tls-cert", "client certificate for syslog+tls", _file, "/etc/ssl/c.pem"),
        Option("syslog-tls-key", "client key for syslog+tls", _file, "/etc/ssl/c.key"),
        Option("syslog-tls-skip-verify", "do not verify the syslog+tls server", parse_bool,
               "false"),
    ],
    kind="log",
    flag="--log-opt",
    action="the container was not started",
)  # fmt: skip


@dataclass(frozen=True)
class LogSettings:
    """One container's options, typed, with defaults filled in."""

    max_size: int = DEFAULT_MAX_SIZE
    max_file: int = DEFAULT_MAX_FILE
    compress: bool = True
    forward: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    tag: str = ""
    max_line_size: int = DEFAULT_MAX_LINE
    tls: dict[str, Any] = field(default_factory=dict)


def settings(config: dict[str, str]) -> LogSettings:
    """``Info.Config`` as typed settings; an unknown or malformed key raises InvalidOption
    (with the list of valid ones, or the table when ``help`` is given)."""
    from dockplug.errors import InvalidOption

    mine = {k: v for k, v in config.items() if k not in DOCKERD_KEYS}
    if LOG_OPTIONS.wants_help(mine):
        raise InvalidOption(LOG_OPTIONS.help_table())
    values = LOG_OPTIONS.parse(mine)
    tls = {k: v for k, v in values.items() if k.startswith("syslog-tls-")}
    return LogSettings(
        max_size=values.get("max-size", DEFAULT_MAX_SIZE),
        max_file=values.get("max-file", DEFAULT_MAX_FILE),
        compress=values.get("compress", True),
        forward=values.get("forward", ()),
        labels=values.get("labels", ()),
        env=values.get("env", ()),
        tag=values.get("tag", ""),
        max_line_size=values.get("max-line-size", DEFAULT_MAX_LINE),
        tls=tls,
    )
