"""The wire models' base (pydantic): a JSON body as dockerd sends or reads it.

Imported on first use (``protocol.base`` re-exports these names lazily): a plugin serving one
protocol loads pydantic when the first call needs a body parsed or a reply encoded. Nothing
here imports ``protocol.base`` (which names these types), so there is no circle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

_ACRONYMS = {"id": "ID", "ipv4": "IPv4", "ipv6": "IPv6", "uri": "Uri"}


def pascal(name: str) -> str:
    """``network_id`` -> ``NetworkID``; ``ipv4_data`` -> ``IPv4Data``."""
    return "".join(_ACRONYMS.get(part, part[:1].upper() + part[1:]) for part in name.split("_"))


class WireModel(BaseModel):
    """A JSON body as dockerd sends or reads it.

    Unknown keys are ignored (dockerd adds fields over versions), snake_case names are accepted
    too, so Python callers may build models either way. A model's validator is built on first
    use, not at import: a plugin answers ``Plugin.Activate`` sooner, and the dozens of models of
    protocols it serves but dockerd seldom calls cost nothing until called.
    """

    model_config = ConfigDict(
        alias_generator=pascal,
        populate_by_name=True,
        extra="ignore",
        frozen=False,
        defer_build=True,
    )

    def wire(self) -> bytes:
        """The JSON body to send: wire names, unset optional fields left out."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Empty(WireModel):
    """A body with no fields (``{}`` or no body at all)."""


class ErrReply(WireModel):
    """The generic reply: success is ``{}``, failure carries ``Err``."""

    err: str | None = None
