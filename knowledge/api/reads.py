"""Reads on replicas, for the API (installed only when HQ_READ_DATABASE_URL names replicas):

- a successful write (POST, PUT, PATCH or DELETE, but a search) answers with the primary's WAL
  position after it, in the `HQ-Write-LSN` header and the `hq_write_lsn` cookie;
- a read that sends either back is served by a replica that has replayed that position, else by
  the primary (read-your-writes);
- a read that failed because of its replica (the replica went away during the request, or
  cancelled the read to replay WAL) runs once more on the primary before any of its answer is
  sent, so that a replica's death is never a 5xx.

`ReadRouting` is the ASGI middleware; `ReadConn` (deps.py) and `read_target` take the request's
`Routing` from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import psycopg
from fastapi import Request
from psycopg.pq import TransactionStatus
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from knowledge.db.replicas import ReadRouter
from knowledge.errors import KnowledgeError, first_line
from knowledge.lsn import parse_lsn

__all__ = ["WRITE_LSN_COOKIE", "WRITE_LSN_HEADER", "ReadRouting", "Reads", "Routing", "read_target", "routing_of"]

log = logging.getLogger("hq_knowledge")
T = TypeVar("T")

WRITE_LSN_HEADER = "HQ-Write-LSN"
WRITE_LSN_COOKIE = "hq_write_lsn"
COOKIE_MAX_AGE = 60
"""Seconds a browser keeps sending the position of its last write: far beyond any lag that a
replica is read with."""
_ROUTING = "hq.read_routing"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_READS = frozenset({"GET", "HEAD"})


@dataclass
class Routing:
    """One request's routing: what the middleware tells the dependencies, and they it."""

    primary_only: bool = False
    """Read on the primary: this is the second run of a read whose replica failed."""
    replica_failed: bool = False
    """A dependency's replica failed this run (set by `ReadRouter.connection`)."""
    write_conn: psycopg.Connection[Any] | None = field(default=None, repr=False)
    """The primary connection a write used (`Conn`), to read the WAL position on after it."""

    def failed(self) -> None:
        self.replica_failed = True


def routing_of(request: Request) -> Routing | None:
    """The request's Routing; None when the service has no replicas (everything on the primary)."""
    routing = request.scope.get(_ROUTING)
    return routing if isinstance(routing, Routing) else None


def required_lsn(request: Request) -> int | None:
    """The WAL position of the caller's last write (HQ-Write-LSN header or hq_write_lsn cookie,
    the later of the two), which its reads must see; None without (or with a value that is not
    a position)."""
    given = [parse_lsn(request.headers.get(WRITE_LSN_HEADER)), parse_lsn(request.cookies.get(WRITE_LSN_COOKIE))]
    known = [p for p in given if p is not None]
    return max(known) if known else None


@dataclass(frozen=True)
class Reads:
    """Where one request's reads run (`read_target`)."""

    router: ReadRouter
    min_lsn: int | None
    primary_only: bool

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`work(conn)` on a replica that may serve this request, once more on the primary when
        it failed because of the replica; on the primary without one. `work` must only read."""
        return self.router.run(work, self.min_lsn, primary_only=self.primary_only)


async def read_target(request: Request) -> Reads:
    """A dependency: where this request's reads go (async: it does no I/O, and costs no hop to
    a worker thread)."""
    routing = routing_of(request)
    return Reads(
        request.app.state.reads,
        required_lsn(request) if routing else None,
        primary_only=routing is None or routing.primary_only,
    )


class ReadRouting:
    """The middleware of the module docstring. `reads` returns the app's ReadRouter."""

    def __init__(self, app: ASGIApp, *, reads: Callable[[], ReadRouter]) -> None:
        self.app = app
        self.reads = reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope.get("path", ""), scope.get("method", "")
        if scope["type"] != "http" or path == "/mcp" or path.startswith(("/mcp/", "/static/")):
            await self.app(scope, receive, send)
        elif method in _WRITES and path != "/search":
            await self._write(scope, receive, send)
        elif method in _READS or path == "/search":
            await self._read(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _write(self, scope: Scope, receive: Receive, send: Send) -> None:
        routing = Routing()

        async def send_position(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                position = await anyio.to_thread.run_sync(self._position, routing)
                if position:
                    cookie = (
                        f"{WRITE_LSN_COOKIE}={position}; Max-Age={COOKIE_MAX_AGE}; Path=/; SameSite=Strict; HttpOnly"
                    )
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", []),
                            (WRITE_LSN_HEADER.lower().encode(), position.encode()),
                            (b"set-cookie", cookie.encode()),
                        ],
                    }
            await send(message)

        await self.app({**scope, _ROUTING: routing}, receive, send_position)

    def _position(self, routing: Routing) -> str | None:
        """The primary's WAL position now, on the write's own connection when it has one (it
        is still checked out, and idle): no second connection to wait for."""
        conn = routing.write_conn
        usable = conn is not None and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        try:
            return self.reads().write_position(conn if usable else None) or None
        except (psycopg.Error, KnowledgeError) as e:
            log.warning(
                "could not read the primary's WAL position after a write (%s): the answer has no %s",
                first_line(e),
                WRITE_LSN_HEADER,
            )
            return None

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> None:
        routing = Routing()
        received: list[Message] = []
        withheld = False
        sent = False

        async def recording() -> Message:
            message = await receive()
            received.append(message)
            return message

        async def guarded(message: Message) -> None:
            nonlocal withheld, sent
            if message["type"] == "http.response.start" and routing.replica_failed and message["status"] >= 400:
                withheld = True
            if withheld:
                return  # this answer is replaced by the primary's
            sent = True
            await send(message)

        try:
            await self.app({**scope, _ROUTING: routing}, recording, guarded)
        except Exception:
            if not routing.replica_failed or sent:
                raise
            withheld = True
        if not withheld:
            return
        log.info("%s %s: its replica failed; answering from the primary", scope["method"], scope["path"])
        replay = list(received)

        async def replaying() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app({**scope, _ROUTING: Routing(primary_only=True)}, replaying, send)
