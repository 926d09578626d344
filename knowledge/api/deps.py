"""Dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from fastapi import Depends, Query, Request

from ..db import pooled_connection
from ..errors import InvalidInput
from ..items import MAX_LIMIT, MAX_OFFSET, Archived, EmbeddingStatus, ItemFilters

__all__ = ["Conn", "Filters", "get_conn", "item_filters"]


def get_conn(request: Request) -> Iterator[psycopg.Connection[Any]]:
    """A pooled autocommit connection for the duration of one request."""
    with pooled_connection(request.app.state.pool) as conn:
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(get_conn)]


def item_filters(
    folder_id: Annotated[str | None, Query(description=(
        "A folder's id: items in it and in all its subfolders. `root`: items in no folder."))] = None,
    tags_any: Annotated[list[str], Query(description=(
        "Items with at least one of these tags (repeat the parameter)."))] = [],  # noqa: B006
    tags_all: Annotated[list[str], Query(description=(
        "Items with all of these tags (repeat the parameter)."))] = [],  # noqa: B006
    pinned: Annotated[bool | None, Query(description=(
        "Only pinned (true) or unpinned (false) items."))] = None,
    archived: Annotated[Archived, Query(description=(
        "`false` (default): archived items left out; `true`: only archived; `any`: both."))] = "false",
    embedding_status: Annotated[EmbeddingStatus | None, Query(description=(
        "Only items in this embedding state."))] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1..{MAX_LIMIT}.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> ItemFilters:
    """The list filters shared by documents and assets, from the query string."""
    folder: UUID | Literal["root"] | None = None
    if folder_id == "root":
        folder = "root"
    elif folder_id is not None:
        try:
            folder = UUID(folder_id)
        except ValueError as e:
            raise InvalidInput(f"folder_id is {folder_id!r}; give a folder's UUID or 'root'") from e
    return ItemFilters(folder_id=folder, tags_any=tags_any, tags_all=tags_all, pinned=pinned,
                       archived=archived, embedding_status=embedding_status, limit=limit, offset=offset)


Filters = Annotated[ItemFilters, Depends(item_filters)]
