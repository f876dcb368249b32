"""Every Engine API route, anchored, and the normalizer that finds a request's route the way
dockerd's router does.

dockerd (``daemon/server/server.go``) registers each route of ``daemon/server/router/*`` twice,
as ``/v{version:[0-9.]+}`` + path and as the bare path, on a gorilla/mux router that matches the
percent-decoded ``URL.Path`` (``%2F`` included), cleaned, in registration order. ``{name:.*}``
is greedy (``/containers/a/b/start`` starts ``a/b``); ``{id}`` is one segment. The authz
middleware wraps only matched routes, so anything dockerd answers 404 never reaches a plugin;
a route this table lacks (a newer engine) becomes the action ``unknown``.

Table taken from moby master (b985e23, 2025) router files; 20.10 has a subset of it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

#: (method, path template as dockerd registers it, action). Action groups come from the prefix.
ROUTES: tuple[tuple[str, str, str], ...] = (
    # system
    ("OPTIONS", "/{anyroute:.*}", "system.options"),
    ("GET", "/_ping", "system.ping"),
    ("HEAD", "/_ping", "system.ping"),
    ("GET", "/events", "system.events"),
    ("GET", "/info", "system.info"),
    ("GET", "/version", "system.version"),
    ("GET", "/system/df", "system.df"),
    ("POST", "/auth", "system.auth"),
    # containers
    ("HEAD", "/containers/{name:.*}/archive", "container.archive_stat"),
    ("GET", "/containers/json", "container.list"),
    ("GET", "/containers/{name:.*}/export", "container.export"),
    ("GET", "/containers/{name:.*}/changes", "container.changes"),
    ("GET", "/containers/{name:.*}/json", "container.inspect"),
    ("GET", "/containers/{name:.*}/top", "container.top"),
    ("GET", "/containers/{name:.*}/logs", "container.logs"),
    ("GET", "/containers/{name:.*}/stats", "container.stats"),
    ("GET", "/containers/{name:.*}/attach/ws", "container.attach"),
    ("GET", "/exec/{id:.*}/json", "exec.inspect"),
    ("GET", "/containers/{name:.*}/archive", "container.archive_get"),
    ("POST", "/containers/create", "container.create"),
    ("POST", "/containers/{name:.*}/kill", "container.kill"),
    ("POST", "/containers/{name:.*}/pause", "container.pause"),
    ("POST", "/containers/{name:.*}/unpause", "container.unpause"),
    ("POST", "/containers/{name:.*}/restart", "container.restart"),
    ("POST", "/containers/{name:.*}/start", "container.start"),
    ("POST", "/containers/{name:.*}/stop", "container.stop"),
    ("POST", "/containers/{name:.*}/wait", "container.wait"),
    ("POST", "/containers/{name:.*}/resize", "container.resize"),
    ("POST", "/containers/{name:.*}/attach", "container.attach"),
    ("POST", "/containers/{name:.*}/exec", "exec.create"),
    ("POST", "/exec/{name:.*}/start", "exec.start"),
    ("POST", "/exec/{name:.*}/resize", "exec.resize"),
    ("POST", "/containers/{name:.*}/rename", "container.rename"),
    ("POST", "/containers/{name:.*}/update", "container.update"),
    ("POST", "/containers/prune", "container.prune"),
    ("POST", "/commit", "container.commit"),
    ("PUT", "/containers/{name:.*}/archive", "container.archive_put"),
    ("DELETE", "/containers/{name:.*}", "container.delete"),
    # checkpoints (experimental)
    ("GET", "/containers/{name:.*}/checkpoints", "container.checkpoint_list"),
    ("POST", "/containers/{name:.*}/checkpoints", "container.checkpoint_create"),
    ("DELETE", "/containers/{name}/checkpoints/{checkpoint}", "container.checkpoint_delete"),
    # images
    ("GET", "/images/json", "image.list"),
    ("GET", "/images/search", "image.search"),
    ("GET", "/images/get", "image.save"),
    ("GET", "/images/{name:.*}/get", "image.save"),
    ("GET", "/images/{name:.*}/history", "image.history"),
    ("GET", "/images/{name:.*}/json", "image.inspect"),
    ("GET", "/images/{name:.*}/attestations", "image.attestations"),
    ("POST", "/images/load", "image.load"),
    ("POST", "/images/create", "image.create"),
    ("POST", "/images/{name:.*}/push", "image.push"),
    ("POST", "/images/{name:.*}/tag", "image.tag"),
    ("POST", "/images/prune", "image.prune"),
    ("DELETE", "/images/{name:.*}", "image.delete"),
    ("GET", "/distribution/{name:.*}/json", "image.distribution"),
    # build, session, grpc
    ("POST", "/build", "build.run"),
    ("POST", "/build/prune", "build.prune"),
    ("POST", "/build/cancel", "build.cancel"),
    ("POST", "/session", "build.session"),
    ("POST", "/grpc", "build.grpc"),
    # volumes
    ("GET", "/volumes", "volume.list"),
    ("GET", "/volumes/{name:.*}", "volume.inspect"),
    ("POST", "/volumes/create", "volume.create"),
    ("POST", "/volumes/prune", "volume.prune"),
    ("PUT", "/volumes/{name:.*}", "volume.update"),
    ("DELETE", "/volumes/{name:.*}", "volume.delete"),
    # networks
    ("GET", "/networks", "network.list"),
    ("GET", "/networks/", "network.list"),
    ("GET", "/networks/{id:.+}", "network.inspect"),
    ("POST", "/networks/create", "network.create"),
    ("POST", "/networks/{id:.*}/connect", "network.connect"),
    ("POST", "/networks/{id:.*}/disconnect", "network.disconnect"),
    ("POST", "/networks/prune", "network.prune"),
    ("DELETE", "/networks/{id:.*}", "network.delete"),
    # plugins
    ("GET", "/plugins", "plugin.list"),
    ("GET", "/plugins/{name:.*}/json", "plugin.inspect"),
    ("GET", "/plugins/privileges", "plugin.privileges"),
    ("DELETE", "/plugins/{name:.*}", "plugin.delete"),
    ("POST", "/plugins/{name:.*}/enable", "plugin.enable"),
    ("POST", "/plugins/{name:.*}/disable", "plugin.disable"),
    ("POST", "/plugins/pull", "plugin.install"),
    ("POST", "/plugins/{name:.*}/push", "plugin.push"),
    ("POST", "/plugins/{name:.*}/upgrade", "plugin.upgrade"),
    ("POST", "/plugins/{name:.*}/set", "plugin.set"),
    ("POST", "/plugins/create", "plugin.create"),
    # swarm
    ("GET", "/swarm", "swarm.inspect"),
    ("GET", "/swarm/unlockkey", "swarm.unlockkey"),
    ("POST", "/swarm/init", "swarm.init"),
    ("POST", "/swarm/join", "swarm.join"),
    ("POST", "/swarm/leave", "swarm.leave"),
    ("POST", "/swarm/update", "swarm.update"),
    ("POST", "/swarm/unlock", "swarm.unlock"),
    ("GET", "/services", "service.list"),
    ("GET", "/services/{id}", "service.inspect"),
    ("POST", "/services/create", "service.create"),
    ("POST", "/services/{id}/update", "service.update"),
    ("DELETE", "/services/{id}", "service.delete"),
    ("GET", "/services/{id}/logs", "service.logs"),
    ("GET", "/nodes", "node.list"),
    ("GET", "/nodes/{id}", "node.inspect"),
    ("DELETE", "/nodes/{id}", "node.delete"),
    ("POST", "/nodes/{id}/update", "node.update"),
    ("GET", "/tasks", "task.list"),
    ("GET", "/tasks/{id}", "task.inspect"),
    ("GET", "/tasks/{id}/logs", "task.logs"),
    ("GET", "/secrets", "secret.list"),
    ("POST", "/secrets/create", "secret.create"),
    ("DELETE", "/secrets/{id}", "secret.delete"),
    ("GET", "/secrets/{id}", "secret.inspect"),
    ("POST", "/secrets/{id}/update", "secret.update"),
    ("GET", "/configs", "config.list"),
    ("POST", "/configs/create", "config.create"),
    ("DELETE", "/configs/{id}", "config.delete"),
    ("GET", "/configs/{id}", "config.inspect"),
    ("POST", "/configs/{id}/update", "config.update"),
    # debug (dockerd --debug)
    ("GET", "/debug/vars", "debug.read"),
    ("GET", "/debug/pprof/", "debug.read"),
    ("GET", "/debug/pprof/cmdline", "debug.read"),
    ("GET", "/debug/pprof/profile", "debug.read"),
    ("GET", "/debug/pprof/symbol", "debug.read"),
    ("GET", "/debug/pprof/trace", "debug.read"),
    ("GET", "/debug/pprof/{name}", "debug.read"),
)

UNKNOWN = "unknown"
_VAR = re.compile(r"\{(\w+)(?::([^}]*))?\}")
_VERSION = re.compile(r"/v([0-9.]+)(/.*)")


def _compile(template: str) -> re.Pattern[str]:
    """A gorilla/mux template as an anchored regex: ``{x}`` is one segment, ``{x:RE}`` is RE."""
    out, pos = [], 0
    for m in _VAR.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.DOTALL)


_TABLE: tuple[tuple[str, re.Pattern[str], str, str], ...] = tuple(
    (method, _compile(path), path, action) for method, path, action in ROUTES
)
#: every action name, in table order, plus ``unknown``
ACTIONS: tuple[str, ...] = (*dict.fromkeys(a for _, _, a in ROUTES), UNKNOWN)


class RouteError(ValueError):
    """The URI cannot be read as dockerd would read it (it never gets this far in dockerd)."""


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # decoded, cleaned, without the version prefix
    template: str  # the route as dockerd registers it, or "" for unknown
    action: str
    version: str  # "1.41", or "" when the client sent none
    params: dict[str, str]  # {name}, {id}... from the path
    query: dict[str, list[str]]  # every value of each key, in order (Go's url.Values)

    @property
    def target(self) -> str:
        """The object the path names (container, image, volume...), "" when none."""
        for key in ("name", "id"):
            if key in self.params:
                return self.params[key]
        return ""

    def arg(self, key: str) -> str:
        """``r.Form.Get(key)``: the first value, "" when absent."""
        values = self.query.get(key)
        return values[0] if values else ""


def clean_path(path: str) -> str:
    """gorilla/mux ``cleanPath``: path.Clean, a leading slash, the trailing slash kept."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):  # posixpath keeps a leading '//', Go's path.Clean does not
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _unescape(text: str, plus: bool) -> str:
    """Go's url unescape: every %XX must be valid (else the request is refused: HTTP 400)."""
    if plus:
        text = text.replace("+", " ")
    if "%" in text and re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise RouteError(f"invalid percent-escape in {text[:80]!r}")
    return unquote_to_bytes(text).decode("utf-8", "replace")


def parse_query(raw: str) -> dict[str, list[str]]:
    """Go's ``url.ParseQuery``: ``&``-separated; a pair with ``;`` or a bad escape is dropped."""
    out: dict[str, list[str]] = {}
    for pair in raw.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        try:
            k, v = _unescape(key, True), _unescape(value, True)
        except RouteError:
            continue
        out.setdefault(k, []).append(v)
    return out


def split_uri(uri: str) -> tuple[str, str]:
    """(raw path, raw query) of a request target; absolute-form targets keep only their path,
    and ``//x`` is a path (Go's ParseRequestURI parses no authority there)."""
    if not uri.startswith("/"):
        m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?]*", uri)
        if m is None:
            if uri == "*":
                return "*", ""
            raise RouteError(f"not a request URI: {uri[:80]!r}")
        uri = uri[m.end() :] or "/"
    path, _, query = uri.partition("?")
    return path, query


def resolve(method: str, uri: str) -> Route:
    """The route dockerd serves METHOD URI with; ``action`` is ``unknown`` when none matches."""
    raw_path, raw_query = split_uri(uri)
    path = clean_path(_unescape(raw_path, False)) if raw_path != "*" else "*"
    m = _VERSION.fullmatch(path)
    versioned = (m.group(2), m.group(1)) if m is not None else None
    query = parse_query(raw_query)
    for route_method, pattern, template, action in _TABLE:
        if route_method != method:
            continue
        # each route is registered versioned first, then bare
        for bare, version in (versioned, (path, "")) if versioned else ((path, ""),):
            hit = pattern.fullmatch(bare)
            if hit is not None:
                return Route(method, bare, template, action, version, hit.groupdict(), query)
    bare, version = versioned or (path, "")
    return Route(method, bare, "", UNKNOWN, version, {}, query)
