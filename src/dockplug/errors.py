"""Errors a driver raises; the server turns each into the protocol's error reply in one place.

dockerd treats every non-200 reply as a failure and shows the ``Err`` text to the user, so the
message is what matters. 404 is reserved for endpoints a plugin does not implement: dockerd uses it
to detect optional endpoints, so a driver error must never be reported as 404.
"""

from __future__ import annotations


class PluginError(Exception):
    """A failure reported to dockerd as ``{"Err": message}`` with an HTTP error status."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(PluginError):
    """The request body is malformed or misses a required field (HTTP 400)."""

    status = 400


class InvalidOption(InvalidRequest):
    """A driver option is unknown or malformed; the message names the option and the fix."""


class EndpointNotFound(PluginError):
    """The plugin does not implement this endpoint (HTTP 404, which dockerd reads as 'optional')."""

    status = 404


class RequestTooLarge(PluginError):
    """The body exceeds the server's limit (HTTP 413)."""

    status = 413


class NotFound(PluginError):
    """The named object (volume, network, pool...) does not exist."""


class VolumeNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no such volume: {name}")
        self.name = name


class InUse(PluginError):
    """The object is still in use and the operation would break its users."""


class VolumeInUse(InUse):
    def __init__(self, name: str, mounts: int) -> None:
        plural = "mount" if mounts == 1 else "mounts"
        super().__init__(f"volume {name} is in use by {mounts} {plural}")
        self.name = name
        self.mounts = mounts


class Conflict(PluginError):
    """The request contradicts existing state (e.g. same name, different options)."""


class ConfigError(Exception):
    """The plugin cannot start as configured (bad socket path, port in use...)."""
