"""Dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request

from ..errors import DatabaseUnavailable

__all__ = ["Conn", "get_conn"]


def get_conn(request: Request) -> Iterator[psycopg.Connection[Any]]:
    """A pooled autocommit connection for the duration of one request."""
    try:
        with request.app.state.pool.connection(timeout=5) as conn:
            yield conn
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(f"the database is unavailable: {str(e).strip().splitlines()[0]}") from e


Conn = Annotated[psycopg.Connection[Any], Depends(get_conn)]
