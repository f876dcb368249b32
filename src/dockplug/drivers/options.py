"""Driver options, declared once: volume ``-o``, network ``-o`` and ``--ipam-opt``, and
``--log-opt`` all reach a driver as a map of strings. The declaration (name, parser, default,
secret or not, help) drives validation, the ``help`` table, redaction of secrets and the docs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dockplug.errors import InvalidOption

HELP_KEY = "help"


@dataclass(frozen=True)
class Option:
    """One option: ``parse`` turns the string into a value or raises ValueError with the fix."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    example: str = ""
    secret: bool = False
    default: Any = None  # the value when the option is not given (None: absent)


class OptionSet:
    """The options a driver accepts. KIND and FLAG say where users give them, for the help
    table and errors: ("volume", "-o"), ("network", "-o"), ("IPAM", "--ipam-opt"),
    ("log", "--log-opt"); THING is what a ``help`` request leaves uncreated."""

    def __init__(
        self,
        driver: str,
        options: Iterable[Option],
        kind: str = "volume",
        flag: str = "-o",
        thing: str = "volume",
        action: str | None = None,
    ) -> None:
        self.driver = driver
        self.options = {opt.name: opt for opt in options}
        self.kind = kind  # the table names the driver as users know it: volume, IPAM, log
        self.flag = flag  # how users pass options: "-o", "--ipam-opt", "--log-opt"
        self.action = action or f"no {thing} was created"  # what help did not do

    def accepted(self) -> str:
        return ", ".join(sorted(self.options)) or "(none)"

    def wants_help(self, raw: dict[str, str]) -> bool:
        return HELP_KEY in raw

    def help_table(self) -> str:
        """The text ``docker volume create -d DRIVER -o help x`` shows (as its error)."""
        width = max((len(o.name) for o in self.options.values()), default=4) + 2
        lines = [f"options of the {self.driver} {self.kind} driver ({self.flag} NAME=VALUE):"]
        for opt in self.options.values():
            example = f" (e.g. {opt.name}={opt.example})" if opt.example else ""
            default = f" [default: {opt.default}]" if opt.default is not None else ""
            lines.append(f"  {opt.name.ljust(width)}{opt.help}{default}{example}")
        lines.append(f"{self.action}; {self.flag} help only prints this table")
        return "\n".join(lines)

    def parse(self, raw: dict[str, str] | None) -> dict[str, Any]:
        """Typed values for the given options, defaults filled in; unknown or malformed ones
        raise InvalidOption."""
        out: dict[str, Any] = {}
        for key, text in (raw or {}).items():
            opt = self.options.get(key)
            if opt is None:
                raise InvalidOption(
                    f"unknown option {key!r} for the {self.driver} driver; "
                    f"accepted: {self.accepted()} ({self.flag} help lists them)"
                )
            try:
                out[key] = opt.parse(text)
            except (ValueError, TypeError) as exc:
                shown = "********" if opt.secret else repr(text)
                raise InvalidOption(f"option {key}={shown}: {exc}") from None
        for name, opt in self.options.items():
            if name not in out and opt.default is not None:
                out[name] = opt.default
        return out

    def public(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` without secrets, for Get/List/logs."""
        return {
            k: v for k, v in values.items() if not (k in self.options and self.options[k].secret)
        }


def parse_int(minimum: int = 0, maximum: int = 2**32 - 2) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}")
        return value

    return parse


def parse_mode(text: str) -> int:
    """An octal permission mode such as ``0755`` or ``750``."""
    try:
        value = int(text, 8)
    except ValueError:
        raise ValueError("expected an octal mode such as 0755") from None
    if not 0 <= value <= 0o7777:
        raise ValueError("expected an octal mode from 0000 to 7777")
    return value


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """``512M``, ``10G``, ``1.5g``, ``1048576``: binary units; returns bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = int(float(number) * _UNITS[unit])
    except (ValueError, OverflowError):  # 'inf' and '1e400' overflow
        raise ValueError("expected a size such as 512M or 10G") from None
    if value <= 0:
        raise ValueError("a size must be positive")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def format_size(size: int) -> str:
    for unit, factor in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
