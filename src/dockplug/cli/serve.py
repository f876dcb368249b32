"""``dockplug serve``: built-in drivers by name, or any driver class as ``FILE.py:Class`` /
``package.module:Class``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from dockplug.cli.options import serve_options, transport_options
from dockplug.drivers.registry import BUILTINS, BuiltinDriver, ServeSetting
from dockplug.errors import ConfigError
from dockplug.protocol.base import Driver
from dockplug.server.runner import run


def import_file(path: Path) -> ModuleType:
    """A plugin script (not a package) as a module; loaded once per process, so a class
    from it is the same class each time it is asked for."""
    name = f"dockplug_user_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_driver_class(target: str) -> type[Driver]:
    """``examples/hello_volume.py:HelloDriver`` or ``mypkg.plugin:MyDriver``."""
    source, _, attr = target.rpartition(":")
    if not source or not attr:
        raise ConfigError(f"{target!r}: expected FILE.py:Class or module:Class")
    if source.endswith(".py") or "/" in source:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{source}: no such file")
        module = import_file(path)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise ConfigError(f"cannot import {source}: {exc}") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, Driver):
        raise ConfigError(f"{target}: {attr} is not a dockplug driver class")
    return cls


def _parse_settings(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-c {pair!r}: expected KEY=VALUE")
        out[key.replace("-", "_")] = value
    return out


def custom_command(target: str) -> click.Command:
    @click.command(name=target, help=f"Serve the driver class {target}.")
    @click.option(
        "-c",
        "--config",
        "settings",
        multiple=True,
        metavar="KEY=VALUE",
        help="Keyword argument for the driver's constructor (repeatable).",
    )
    @transport_options(default_name=target.rpartition(":")[2].lower())
    def command(settings: tuple[str, ...], **params: Any) -> None:
        opts = serve_options(params)
        cls = load_driver_class(target)
        try:
            driver = cls(**_parse_settings(settings))
        except TypeError as exc:
            raise ConfigError(f"{target}: {exc}") from exc
        run(driver, opts)

    return command


def _click_option(setting: ServeSetting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A registry setting as a click option: flags for bools, paths, bounded numbers, choices."""
    kind: Any = setting.type
    if setting.type is bool:
        return click.option(
            setting.flag, setting.name, is_flag=True, help=setting.help, envvar=setting.env
        )
    if setting.multiple:
        return click.option(
            setting.flag, setting.name, multiple=True, metavar=setting.metavar, help=setting.help
        )
    if setting.type is Path:
        kind = click.Path(path_type=Path)
    elif setting.choices:
        kind = click.Choice(list(setting.choices))
    elif setting.minimum is not None and setting.type is float:
        kind = click.FloatRange(min=setting.minimum)
    elif setting.minimum is not None and setting.type is int:
        kind = click.IntRange(min=int(setting.minimum))
    return click.option(
        setting.flag,
        setting.name,
        type=kind,
        default=setting.default,
        show_default=setting.default is not None,
        metavar=setting.metavar,
        help=setting.help,
        envvar=setting.env,
        show_envvar=setting.env is not None,
    )


def builtin_command(entry: BuiltinDriver) -> click.Command:
    """``dockplug serve NAME`` for a registry entry: its settings become the driver's
    constructor keywords; the transport options are every driver's."""

    def command(**params: Any) -> None:
        opts = serve_options(params)
        if entry.takes_name:
            params["plugin_name"] = opts.name
        run(entry.load()(**params), opts)

    command = transport_options(default_name=entry.plugin_name)(command)
    for setting in reversed(entry.settings):  # listed first in --help
        command = _click_option(setting)(command)
    return click.command(name=entry.name, help=entry.help)(command)


class ServeGroup(click.Group):
    """Subcommands are the built-in drivers plus any ``X:Class`` target given on the line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BUILTINS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in BUILTINS:
            return builtin_command(BUILTINS[cmd_name])
        if ":" in cmd_name:
            return custom_command(cmd_name)
        return None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"unknown driver {name!r}: use one of {', '.join(sorted(BUILTINS))} "
                "or FILE.py:Class / module:Class"
            )
        return super().resolve_command(ctx, args)


@click.group(cls=ServeGroup)
def serve() -> None:
    """Serve a driver as a plugin dockerd can use.

    \b
    dockplug serve local                        the persistent local volume driver
    dockplug serve examples/hello_volume.py:HelloDriver -c base=/srv/hello --name hello
    """
    # pydantic would scan every installed distribution for its plugins on the first request;
    # a plugin process has none (set PYDANTIC_DISABLE_PLUGINS= to have them loaded)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
