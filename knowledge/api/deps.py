"""Dependencies shared by the routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from fastapi import Depends, Query, Request

from knowledge.api.fields import FOLDER_ID, FOLDER_ID_PATTERN, TAG
from knowledge.api.reads import Reads, read_target, required_lsn, routing_of
from knowledge.db.pools import pooled_connection
from knowledge.db.replicas import ReadRouter
from knowledge.errors import Forbidden, InvalidInput
from knowledge.store.items import MAX_OFFSET, MAX_PAGE_SIZE, Archived, EmbeddingStatus, ItemFilters
from knowledge.store.keys import caller_of

__all__ = [
    "BY_AGENT_RULE",
    "AgentStamp",
    "Conn",
    "Filters",
    "ReadConn",
    "ReadTarget",
    "Writer",
    "get_conn",
    "get_read_conn",
    "item_filters",
    "writer",
]


def get_conn(request: Request) -> Iterator[psycopg.Connection[Any]]:
    """A pooled autocommit connection to the primary for the duration of one request: for
    everything that writes, or must read what is current (keys, models, status)."""
    with pooled_connection(request.app.state.pool) as conn:
        routing = routing_of(request)
        if routing is not None:
            routing.write_conn = conn  # where the WAL position after a write is read
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(get_conn)]


def get_read_conn(request: Request) -> Iterator[psycopg.Connection[Any]]:
    """A pooled autocommit connection for a request that only reads: from a read replica that is
    up, close enough to the primary and has replayed the caller's last write (HQ-Write-LSN),
    else from the primary (knowledge.api.reads). The request must not write on it."""
    routing = routing_of(request)
    reads: ReadRouter = request.app.state.reads
    with reads.connection(
        required_lsn(request) if routing else None,
        primary_only=routing is None or routing.primary_only,
        on_replica_failure=routing.failed if routing else None,
    ) as conn:
        yield conn


ReadConn = Annotated[psycopg.Connection[Any], Depends(get_read_conn)]
ReadTarget = Annotated[Reads, Depends(read_target)]
"""Where a route that runs its reads itself (search, in one worker thread) runs them."""


def item_filters(
    folder_id: Annotated[
        str | None,
        Query(
            description=("A folder's id: items in it and in all its subfolders. `root`: items in no folder."),
            json_schema_extra=FOLDER_ID,
        ),
    ] = None,
    tags_any: Annotated[
        list[str],
        Query(description=("Items with at least one of these tags (repeat the parameter)."), json_schema_extra=TAG),
    ] = [],  # noqa: B006
    tags_all: Annotated[
        list[str], Query(description=("Items with all of these tags (repeat the parameter)."), json_schema_extra=TAG)
    ] = [],  # noqa: B006
    pinned: Annotated[bool | None, Query(description=("Only pinned (true) or unpinned (false) items."))] = None,
    archived: Annotated[
        Archived, Query(description=("`false` (default): archived items left out; `true`: only archived; `any`: both."))
    ] = "false",
    embedding_status: Annotated[
        EmbeddingStatus | None, Query(description=("Only items in this embedding state."))
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1..{MAX_PAGE_SIZE}.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> ItemFilters:
    """The list filters shared by documents and assets, from the query string."""
    folder: UUID | Literal["root"] | None = None
    if folder_id == "root":
        folder = "root"
    elif folder_id is not None:
        if not re.fullmatch(FOLDER_ID_PATTERN, folder_id):
            raise InvalidInput(f"folder_id is {folder_id[:100]!r}; give a folder's UUID or 'root'")
        folder = UUID(folder_id)
    return ItemFilters(
        folder_id=folder,
        tags_any=tags_any,
        tags_all=tags_all,
        pinned=pinned,
        archived=archived,
        embedding_status=embedding_status,
        limit=limit,
        offset=offset,
    )


Filters = Annotated[ItemFilters, Depends(item_filters)]


BY_AGENT_RULE = (
    "The writing agent's id. With an API key bound to an agent it is that agent, "
    "whether given or not; another agent's id is refused with 403."
)


def bound_agent_id(request: Request, conn: Conn) -> UUID | None:
    """The id of the agent the caller's API key is bound to; None for an unbound key, the
    keyless local operator, or a key whose agent has since been deleted (the key's scope
    still applies)."""
    caller = caller_of(request)
    if caller is None or not caller.agent:
        return None
    row = conn.execute("SELECT id FROM agents WHERE slug = %s", (caller.agent,)).fetchone()
    return row[0] if row else None


class AgentStamp:
    """Who a write is recorded as: an agent-bound key writes as its agent and nobody else."""

    def __init__(self, agent_id: UUID | None, key: str | None) -> None:
        self.agent_id = agent_id
        self.key = key

    def stamp(self, field: str, given: UUID | None) -> UUID | None:
        """The value for an `*_by_agent_id` field: the bound agent when there is one (given
        must then be empty or the same), else what the caller gave."""
        if self.agent_id is None:
            return given
        if given is not None and given != self.agent_id:
            raise Forbidden(
                f"{field} is {given}, but the key {self.key!r} writes only as its own "
                f"agent ({self.agent_id}); leave {field} out or give that id"
            )
        return self.agent_id


def writer(request: Request, agent_id: Annotated[UUID | None, Depends(bound_agent_id)]) -> AgentStamp:
    caller = caller_of(request)
    return AgentStamp(agent_id, caller.key if caller else None)


Writer = Annotated[AgentStamp, Depends(writer)]
