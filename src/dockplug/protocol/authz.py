"""Authorization (``authz``): wire models, endpoint table and the plugin base class.

Reference: plugin-protocol.md §6. Every request field is ``omitempty`` (absent keys are normal),
the URI key is spelled ``RequestUri``, bodies are base64 and only present for JSON requests
under the size limit. dockerd decides on ``Allow`` alone: ``Err`` on a 200 reply is ignored, so a
denial must be ``Allow: false`` (reason in ``Msg``); a non-200 reply also denies (fail-closed).
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field

from dockplug.protocol.base import Driver, Endpoint, Protocol, WireModel, placeholder


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value, validate=True) if value else b""


def _json(raw: bytes) -> Any:
    return json.loads(raw) if raw.strip() else None


class AuthzRequest(WireModel):
    """One API call as dockerd describes it; ``Response*`` fields only in AuthZRes.

    Headers are flattened (last value wins) and stripped of credentials; ``RequestUri`` is the raw
    URI with version prefix and query (``/v1.47/containers/json?all=1``).
    """

    user: str | None = None
    user_authn_method: str | None = Field(default=None, alias="UserAuthNMethod")
    request_method: str | None = None
    request_uri: str | None = None
    request_body: str | None = None
    request_headers: dict[str, str] | None = None
    request_peer_certificates: list[str] | None = None
    response_status_code: int | None = None
    response_body: str | None = None
    response_headers: dict[str, str] | None = None

    @property
    def body(self) -> bytes:
        """The request body, base64-decoded; ``b""`` when dockerd sent none."""
        return _b64(self.request_body)

    def json_body(self) -> Any:
        """The request body parsed as JSON, ``None`` when absent.

        dockerd's own decoder matches keys case-insensitively: a policy that looks up keys must
        do the same, or a crafted body (``"privileged"`` vs ``"Privileged"``) slips past it.
        """
        return _json(self.body)

    @property
    def response(self) -> bytes:
        """The response body (AuthZRes), base64-decoded; ``b""`` when absent or not buffered."""
        return _b64(self.response_body)

    def json_response(self) -> Any:
        """The response body parsed as JSON, ``None`` when absent."""
        return _json(self.response)

    @property
    def path(self) -> str:
        """The URI path without query: ``/v1.47/containers/json`` (version prefix kept)."""
        return urlsplit(self.request_uri or "").path

    @property
    def peer_certificates(self) -> list[str]:
        """The client's certificates as PEM text (each element is base64 of the PEM)."""
        return [_b64(cert).decode() for cert in self.request_peer_certificates or ()]


class AuthzReply(WireModel):
    """The verdict. ``Allow`` is always sent (default: deny); ``Err`` on a 200 reply is ignored."""

    allow: bool = False
    msg: str | None = None
    err: str | None = None


def _reply(result: bool | AuthzReply | tuple[bool, str] | None, _: Any) -> AuthzReply:
    if isinstance(result, AuthzReply):
        return result
    if isinstance(result, bool):
        return AuthzReply(allow=result)
    if result is None:
        return AuthzReply(allow=False, msg="no decision")
    if isinstance(result, tuple) and len(result) == 2:
        allow, msg = result
        return AuthzReply(allow=bool(allow), msg=msg or None)
    raise TypeError(f"an authz method must return a bool, (bool, msg) or AuthzReply: {result!r}")


def _call(req: AuthzRequest) -> str:
    return f"{req.request_method or '?'} {(req.request_uri or '')[:80]}"


AUTHZ = Protocol(
    implements="authz",
    managed_type="docker.authz/1.0",
    endpoints=(
        Endpoint("/AuthZPlugin.AuthZReq", "authz_req", AuthzRequest, _reply, subject=_call),
        Endpoint("/AuthZPlugin.AuthZRes", "authz_res", AuthzRequest, _reply, subject=_call),
    ),
)


class AuthzPlugin(Driver):
    """Base class of an authorization plugin. Methods may be ``def`` or ``async def``.

    Each returns ``True``/``False``, ``(allow, msg)`` or an :class:`AuthzReply`. To refuse, return
    ``False`` (the client gets 403 with ``msg``): dockerd ignores ``Err`` on a 200 reply, so an
    ``Err`` without ``Allow: false`` would allow the call. Returning ``None`` denies too; a raised
    error answers non-200, which dockerd also treats as a denial (500 to the client).
    """

    metrics_family: ClassVar[str] = "authz"

    protocols: ClassVar[tuple[Protocol, ...]] = (AUTHZ,)

    @placeholder
    def authz_req(self, req: AuthzRequest) -> Any:
        """Before the API handler runs. ``Response*`` fields are absent."""
        raise NotImplementedError

    @placeholder
    def authz_res(self, req: AuthzRequest) -> Any:
        """After the handler; the buffered response is released only if every plugin allows."""
        raise NotImplementedError
