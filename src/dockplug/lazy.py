"""Names a package exports without importing them when it is imported: a module-level
``__getattr__`` (PEP 562) that loads each name from its module on first use and keeps it, so
``dockplug serve`` answers ``Plugin.Activate`` before pydantic and the cluster store load."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of PACKAGE for EXPORTS (name -> module it comes from):
    ``__getattr__ = lazy_exports(__name__, {...})``."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
