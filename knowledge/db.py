"""Connections: the database URL (embedded or external), and driver errors turned into ours."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .config import Settings
from .errors import DatabaseUnavailable, InvalidInput

__all__ = [
    "configure_for_search",
    "connect",
    "database",
    "describe_url",
    "open_search_pool",
    "pooled_connection",
    "prepare_threshold",
    "translate_connect_error",
]


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def translate_connect_error(url: str, e: psycopg.OperationalError) -> DatabaseUnavailable:
    """A one-line error naming the problem and the fix, for a failed connection to `url`."""
    text = str(e).strip()
    where = describe_url(url)
    if "password authentication failed" in text or "no password supplied" in text:
        return DatabaseUnavailable(
            f"password authentication failed for {where}: "
            "check the user and password in HQ_DATABASE_URL"
        )
    if "does not exist" in text and "database" in text:
        return DatabaseUnavailable(
            f"{text.splitlines()[-1].removeprefix('FATAL:  ')} ({where}): "
            "create it or fix the database name in HQ_DATABASE_URL"
        )
    if "invalid dsn" in text or "missing \"=\"" in text or "invalid URI" in text:
        return DatabaseUnavailable(
            f"HQ_DATABASE_URL is not a valid PostgreSQL URL ({where}): "
            "expected postgresql://user:password@host:5432/dbname"
        )
    reason = text.splitlines()[-1] if text else type(e).__name__
    for hint in ("Connection refused", "No such file or directory", "timeout expired",
                 "could not translate host name", "Network is unreachable", "No route to host"):
        if hint in text:
            reason = hint.lower()
            break
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {where} ({reason}): "
        "check that the server is running and that HQ_DATABASE_URL is right"
    )


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection, raising DatabaseUnavailable with a readable reason on failure."""
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("application_name", "hq-knowledge")
    try:
        return psycopg.connect(url, **kwargs)
    except psycopg.OperationalError as e:
        raise translate_connect_error(url, e) from e
    except psycopg.ProgrammingError as e:  # a malformed conninfo string
        raise DatabaseUnavailable(
            f"HQ_DATABASE_URL is not a valid PostgreSQL URL ({describe_url(url)}): {e}"
        ) from e


def configure_for_search(conn: psycopg.Connection[Any]) -> None:
    """Vectors as numpy arrays, and HNSW scans that keep going until a filtered query has
    its rows (pgvector >= 0.8; older servers search without iterative scans)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    # ef_search 100 until the first search sets the value for the active model's index size
    # (knowledge.models.EF_SEARCH_BY_SIZE, from benchmarks/vector_index.py).
    for setting in ("SET hnsw.iterative_scan = relaxed_order", "SET hnsw.ef_search = 100"):
        try:
            conn.execute(setting)
        except psycopg.errors.UndefinedObject:
            pass


def prepare_threshold(env: Mapping[str, str] | None = None) -> int | None:
    """psycopg's prepare_threshold for the service's connections: None (nothing prepared,
    which a pooler in transaction mode needs: PgBouncer before 1.21, Supavisor on port 6543)
    when HQ_PREPARED_STATEMENTS is 0, false, off or no; else psycopg's default, and search
    prepares its unfiltered statements on first use."""
    value = (os.environ if env is None else env).get("HQ_PREPARED_STATEMENTS", "").strip().lower()
    if value in ("0", "false", "off", "no"):
        return None
    if value not in ("", "1", "true", "on", "yes"):
        raise InvalidInput(f"HQ_PREPARED_STATEMENTS must be 1 or 0 (or true/false, on/off), got {value!r}")
    return 5


def open_search_pool(url: str, *, max_size: int, application_name: str) -> ConnectionPool[Any]:
    """An opened pool of autocommit connections set up by `configure_for_search`, as the API
    and the MCP server use. Raises DatabaseUnavailable when no connection can be made."""
    pool: ConnectionPool[Any] = ConnectionPool(
        url, min_size=1, max_size=max_size, open=False, configure=configure_for_search,
        kwargs={"autocommit": True, "application_name": application_name,
                "prepare_threshold": prepare_threshold()})
    try:
        pool.open(wait=True, timeout=30)
    except Exception as e:  # psycopg_pool's PoolTimeout: the reason is in its log
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to the database at {describe_url(url)}: {e}") from e
    return pool


@contextlib.contextmanager
def pooled_connection(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A connection from `pool`; DatabaseUnavailable (503) when none can be had."""
    try:
        with pool.connection(timeout=5) as conn:
            yield conn
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(f"the database is unavailable: {str(e).strip().splitlines()[0]}") from e


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield the URL of the database to use: HQ_DATABASE_URL, or the embedded server.

    The embedded server is started (or joined) on entry and released on exit.
    """
    if settings.database_url:
        yield settings.database_url
        return
    from .embedded import EmbeddedPostgres

    with EmbeddedPostgres(settings.data_dir) as server:
        yield server.url
