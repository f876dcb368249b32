"""Conventions shared by every protocol: PascalCase wire names, endpoint tables, driver bases.

dockerd's structs carry no JSON tags, so keys on the wire are Go field names (``Name``, ``ID``,
``NetworkID``, ``IPv4Data``). Python code uses snake_case; ``wire.pascal`` maps one to the other.
The wire models themselves (pydantic) live in ``protocol/wire.py`` and load on first use: an
endpoint table may name its models with :class:`Lazy`, so serving starts without them.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dockplug.lazy import lazy_exports

if TYPE_CHECKING:
    from dockplug.observe.metrics import Metrics
    from dockplug.protocol.wire import Empty as Empty
    from dockplug.protocol.wire import ErrReply as ErrReply
    from dockplug.protocol.wire import WireModel as WireModel

W = TypeVar("W", bound="WireModel")

#: the pydantic side, loaded on first use (``protocol/wire.py``): a plugin answers
#: ``Plugin.Activate`` before any wire model exists, and pydantic costs ~60 ms and ~11 MiB
_WIRE = ("WireModel", "Empty", "ErrReply")


def rfc3339(value: object) -> str | None:
    """A time as Go's ``time.Time`` marshals it (RFC 3339, ``Z`` for UTC; a naive time is UTC),
    None for no time: dockerd parses these fields with ``time.Parse(time.RFC3339Nano)``."""
    if not isinstance(value, datetime):  # None, or e.g. "" assigned after construction
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


class Encoded(bytes):
    """A reply body already in wire form: the server sends it as it is, skipping the reply
    model. A driver returns one to answer a call dockerd repeats (Get before every volume
    operation) from bytes it encoded once and keeps until the object changes."""

    __slots__ = ()


class Lane(Enum):
    """Which worker pool a blocking (sync) driver method runs in.

    Slow work (mounting, creating) gets its own pool so that it can never starve the calls
    dockerd makes constantly and expects at once (Get, List, Capabilities).
    """

    FAST = "fast"
    SLOW = "slow"


def _no_subject(_: Any) -> str | None:
    return None


class Lazy:
    """``NAME`` of ``MODULE``, imported when first asked for: an endpoint's request model or
    reply builder that the table names without importing (pydantic loads on the first call
    that parses or answers a body, not before the socket answers ``Plugin.Activate``)."""

    __slots__ = ("_value", "module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self._value: Any = None

    def get(self) -> Any:
        if self._value is None:
            self._value = getattr(importlib.import_module(self.module), self.name)
        return self._value

    def __repr__(self) -> str:
        return f"Lazy({self.module}:{self.name})"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``POST /Interface.Method`` and how it maps onto a driver method.

    ``request`` is the body model (``None``: the body is ignored). ``call`` turns the parsed model
    into the driver method's arguments, ``reply`` turns the method's return value into the reply
    model (given the request too), ``subject`` names the object a request is about, for logs.
    The table may give the model and the reply builder as :class:`Lazy` references.
    """

    path: str
    method: str
    request_ref: type[WireModel] | Lazy | None
    reply_ref: Callable[[Any, Any], WireModel | Any] | Lazy
    required: bool = True
    lane: Lane = Lane.FAST
    subject: Callable[[Any], str | None] = _no_subject
    streams: bool = False

    @property
    def request(self) -> type[WireModel] | None:
        ref = self.request_ref
        return ref.get() if type(ref) is Lazy else ref  # type: ignore[return-value]

    @property
    def reply(self) -> Callable[[Any, Any], WireModel | Any]:
        ref = self.reply_ref
        return ref.get() if type(ref) is Lazy else ref  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Protocol:
    """A plugin interface: the name ``Plugin.Activate`` reports and its endpoints."""

    implements: str
    managed_type: str
    endpoints: tuple[Endpoint, ...]
    error_key: str = "Err"
    extra_error_keys: tuple[str, ...] = field(default=())
    # False for dockplug's own admin endpoints: served, but not reported by Plugin.Activate
    announce: bool = True


class Driver:
    """Base of every driver class. Subclasses of several protocol bases serve all of them.

    Optional hooks: ``startup()`` runs after the socket listens (so slow reconciling never
    misses dockerd's enable window), ``shutdown()`` after the last request finished. Either may
    be sync or async. ``declare_metrics(metrics)`` declares the driver's own metrics (under
    ``dockplug_<metrics_family>_``) before start-up; ``health_reasons()`` says why the driver
    is degraded right now (quick, thread-safe; empty when all is well).
    """

    protocols: ClassVar[tuple[Protocol, ...]] = ()
    metrics_family: ClassVar[str] = "driver"

    def startup(self) -> Any:
        return None

    def shutdown(self) -> Any:
        return None

    def declare_metrics(self, metrics: Metrics) -> None:
        return None

    def health_reasons(self) -> Sequence[str]:
        return ()


def protocols_of(driver: Driver | type[Driver]) -> list[Protocol]:
    """Every protocol a driver class implements, in MRO order, without duplicates."""
    cls = driver if isinstance(driver, type) else type(driver)
    seen: list[Protocol] = []
    for klass in cls.__mro__:
        for proto in vars(klass).get("protocols", ()):
            if proto not in seen:
                seen.append(proto)
    return seen


def pair_reply(model: type[W], first: str, second: str) -> Callable[[Any, Any], W]:
    """The reply builder of an endpoint whose answer is two values: a driver returns the model
    itself, None (the model's defaults) or a ``(first, second)`` pair."""

    def build(result: Any, _: Any) -> W:
        if isinstance(result, model):
            return result
        if result is None:
            return model()
        a, b = result
        return model(**{first: a, second: b})

    return build


def implemented(driver: Driver, endpoint: Endpoint) -> bool:
    """True if the driver overrides the base's placeholder for this endpoint."""
    method = getattr(type(driver), endpoint.method, None)
    if method is None:
        return False
    return not getattr(method, "__dockplug_placeholder__", False)


def placeholder(func: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a base-class method as 'not implemented': the endpoint then answers 404."""
    func.__dockplug_placeholder__ = True  # type: ignore[attr-defined]
    return func


def nonblocking(func: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a sync method as safe to run on the event loop (it never blocks).

    By default sync methods run in a worker thread so a slow one cannot delay other calls; a
    method that only reads memory is faster inline.
    """
    func.__dockplug_nonblocking__ = True  # type: ignore[attr-defined]
    return func


class WouldBlock(Exception):
    """Raised by a :func:`try_inline` method that is running on the event loop and would have
    to wait (a busy lock, slow storage work). Raise it before changing anything: the server
    then runs the method again, from the start, in a worker thread."""


_on_loop: ContextVar[bool] = ContextVar("dockplug_on_loop", default=False)


def try_inline(func: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a sync method to be tried on the event loop first, in a worker thread if it
    raises :class:`WouldBlock`.

    A thread hand-off costs dockerd more than the work of a Remove or Unmount that only updates
    a table; a method that can tell up front when it would wait gets the fast path without
    ever stalling the loop. It asks :func:`may_block` to know where it runs.
    """
    func.__dockplug_try_inline__ = True  # type: ignore[attr-defined]
    return func


def tries_inline(method: Callable[..., Any]) -> bool:
    return bool(getattr(method, "__dockplug_try_inline__", False))


def may_block() -> bool:
    """False while a :func:`try_inline` method runs on the event loop: then wait for nothing,
    raise :class:`WouldBlock` instead."""
    return not _on_loop.get()


@contextlib.contextmanager
def running_on_loop() -> Iterator[None]:
    """The server's side of :func:`try_inline`: marks the current call as on the loop."""
    token = _on_loop.set(True)
    try:
        yield
    finally:
        _on_loop.reset(token)


def runs_inline(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method) or bool(
        getattr(method, "__dockplug_nonblocking__", False)
    )


__getattr__ = lazy_exports(__name__, dict.fromkeys(_WIRE, "dockplug.protocol.wire"))
