"""Who may call the service, from where: API keys, the Host and Origin checks, and the scope
each route needs.

`Gate` is an ASGI middleware in front of everything (REST, /mcp, the page). In order, it
- refuses request headers over MAX_HEADER_BYTES (431);
- answers only to the hosts of `AccessPolicy.allowed_hosts` (421 otherwise): a web page
  that rebinds its own name to 127.0.0.1 sends its own name as Host and is refused;
- refuses a state-changing request (any method but GET, HEAD and OPTIONS, and everything on
  /mcp) that a browser sent from another origin (403): `Origin` must be this service's own
  or one of `allowed_origins`, and `Sec-Fetch-Site` must not say cross-site or same-site;
- finds the caller: `Authorization: Bearer <key>` names a live key (401 otherwise), and a
  request without a key is the local operator, with every scope, unless keys are required
  (then 401, except for the page, its static files, /healthz, /readyz and the API's
  documentation);
- logs a client that went away in the middle of its body as one line.

The scope a route needs is `required_scope(method, path)`; `authorize` (a dependency of
every REST route) answers 403 naming it. The MCP tools check theirs with `caller_of`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import Request
from psycopg_pool import ConnectionPool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from knowledge.db.pools import pooled_connection
from knowledge.errors import Forbidden, KnowledgeError, Unauthorized
from knowledge.store.keys import CALLER_KEY, Caller, allows, caller_of, identify
from knowledge.store.keys import Scope as KeyScope

__all__ = [
    "MAX_HEADER_BYTES",
    "AccessPolicy",
    "Gate",
    "authorize",
    "caller_of",
    "is_loopback",
    "required_scope",
]

log = logging.getLogger("hq_knowledge.api")

MAX_HEADER_BYTES = 16 * 1024
"""Request line and headers together; larger requests get 431."""

OPERATOR = Caller(scope="admin")
"""The caller of a loopback service without a key: the local operator, who may do everything."""

VISITOR = Caller(scope="read", key="(none)")
"""A caller without a key where keys are required: it reaches only the PUBLIC_PATHS."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""What a browser needs before it has a key (the page asks for one), liveness and readiness."""
ADMIN_SUFFIXES = ("/archive", "/unarchive")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine only: 127.0.0.0/8, ::1, localhost."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_entry(value: str) -> str:
    return value.strip().lower().rstrip(".")


@dataclass(frozen=True)
class AccessPolicy:
    """Who the service answers. `allowed_hosts`: Host header values, `name:port` or `name`
    (any port), `*` for any; empty means any. `allowed_origins`: origins besides the
    service's own (`https://hq.example.com`) that may change state."""

    require_keys: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def for_bind(
        cls,
        host: str,
        port: int,
        *,
        require_keys: bool = False,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> AccessPolicy:
        """The policy of a service listening on `host:port`. On a loopback address it answers
        to that address and `localhost` at that port (and to `allowed_hosts`), without a key
        unless `require_keys`; anywhere else keys are always required, and any Host is
        answered unless `allowed_hosts` names them."""
        extra = {_host_entry(h) for h in allowed_hosts if h.strip()}
        if not is_loopback(host):
            return cls(
                require_keys=True,
                allowed_hosts=frozenset(extra),
                allowed_origins=frozenset(o.strip().rstrip("/").lower() for o in allowed_origins),
            )
        names = {"localhost", _bracketed(host)}
        if host.strip().lower() == "localhost":
            names |= {"127.0.0.1", "[::1]"}
        hosts = {f"{n}:{port}" for n in names} | ({*names} if port == 80 else set())
        return cls(
            require_keys=require_keys,
            allowed_hosts=frozenset(hosts | extra),
            allowed_origins=frozenset(o.strip().rstrip("/").lower() for o in allowed_origins),
        )

    def host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts or "*" in self.allowed_hosts:
            return True
        value = _host_entry(host)
        if value in self.allowed_hosts:
            return True
        name = value.rsplit(":", 1)[0] if not value.endswith("]") else value
        return name in self.allowed_hosts

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser page from `origin` may change state through a request whose Host
        is `host`: the service's own origin, or one named in allowed_origins."""
        value = origin.strip().rstrip("/").lower()
        if value in self.allowed_origins or "*" in self.allowed_origins:
            return True
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == _host_entry(host)


def _bracketed(host: str) -> str:
    name = host.strip().lower()
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def required_scope(method: str, path: str) -> KeyScope:
    """The scope a request needs: reading needs `read`; creating and changing `write`;
    deleting, archiving, re-embedding, switching models and managing keys `admin`."""
    method = method.upper()
    if path == "/keys" or path.startswith("/keys/"):
        return "admin"
    if method in SAFE_METHODS:
        return "read"
    if method == "DELETE" or path.endswith(ADMIN_SUFFIXES) or path == "/reembed":
        return "admin"
    return "write"


def authorize(request: Request) -> None:
    """A dependency of every REST route: 403 unless the caller's scope covers the route's."""
    caller = caller_of(request)
    if caller is None:
        return
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    needed = required_scope(request.method, path)
    if not allows(caller.scope, needed):
        raise Forbidden(
            f"{request.method} {path} needs a key with the {needed} scope; "
            f"{caller.describe()} may not: create one with "
            f"`hq-knowledge keys create --scope {needed}`"
        )


class Gate:
    """The ASGI middleware described in the module docstring. `pool` returns the pool that
    keys are looked up on."""

    def __init__(self, app: ASGIApp, *, policy: AccessPolicy, pool: Callable[[], ConnectionPool[Any]]) -> None:
        self.app = app
        self.policy = policy
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            scope[CALLER_KEY] = await self._admit(scope)
        except KnowledgeError as e:
            await refuse(send, e)
            return
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            log.info(
                "%s %s: the client went away before sending the whole request body", scope["method"], scope["path"]
            )

    async def _admit(self, scope: Scope) -> Caller:
        headers: dict[str, str] = {}
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        if size > MAX_HEADER_BYTES:
            raise _HeadersTooLarge(f"request headers are {size} bytes; the limit is {MAX_HEADER_BYTES}")
        host = headers.get("host", "")
        if not self.policy.host_allowed(host):
            raise _Misdirected(
                f"Host {host[:100]!r} is not a name this service answers to: it answers "
                f"{', '.join(sorted(self.policy.allowed_hosts))}; set HQ_ALLOWED_HOSTS to serve "
                "another name (a proxy's)"
            )
        path, method = scope["path"], scope["method"]
        if method not in SAFE_METHODS or path == "/mcp" or path.startswith("/mcp/"):
            origin = headers.get("origin")
            if origin is not None and not self.policy.origin_allowed(origin, host):
                raise Forbidden(
                    f"Origin {origin[:100]!r} may not {method} {path}: requests that change "
                    "the knowledge base are taken only from this service's own page "
                    "(set HQ_ALLOWED_ORIGINS to allow another)"
                )
            if origin is None and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
                raise Forbidden(f"a cross-site request may not {method} {path}")
        authorization = headers.get("authorization")
        if authorization is None:
            if not self.policy.require_keys:
                return OPERATOR
            if method in ("GET", "HEAD") and is_public(path):
                return VISITOR
            raise Unauthorized(
                "this service needs an API key: send `Authorization: Bearer <key>` "
                "(the operator creates one with `hq-knowledge keys create`)"
            )
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("Authorization must be `Bearer <key>`")
        caller = await anyio.to_thread.run_sync(self._identify, secret.strip())
        if caller is None:
            raise Unauthorized(
                "the API key is not valid: unknown or revoked (`hq-knowledge keys list` shows the live keys)"
            )
        return caller

    def _identify(self, secret: str) -> Caller | None:
        with pooled_connection(self.pool()) as conn:
            return identify(conn, secret)


def is_public(path: str) -> bool:
    """Whether `path` answers without a key where keys are required."""
    return path in PUBLIC_PATHS or path.startswith("/static/")


class _Misdirected(KnowledgeError):
    status = 421


class _HeadersTooLarge(KnowledgeError):
    status = 431


async def refuse(send: Send, error: KnowledgeError) -> None:
    """Answer with `error` (its status, message and Retry-After) from ASGI middleware."""
    import orjson

    body = orjson.dumps({"detail": error.message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="hq-knowledge"'))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    start: Message = {"type": "http.response.start", "status": error.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
