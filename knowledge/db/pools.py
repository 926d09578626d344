"""The service's connection pools: autocommit connections set up for search, taken one per
request with `pooled_connection`, and a breaker per pool that answers 503 at once while its
database is known to be down, probing it at most every PROBE_INTERVAL seconds."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from knowledge.config import describe_url
from knowledge.db.errors import translate
from knowledge.errors import DatabaseUnavailable, first_line

__all__ = ["configure_for_search", "open_search_pool", "pooled_connection", "report_down", "report_up"]

log = logging.getLogger("hq_knowledge.db")
PROBE_INTERVAL = 0.5
"""Seconds between two tries of a database known to be down."""
PREPARE_THRESHOLD = 5  # psycopg's default: a statement run this often on a connection is prepared


def configure_for_search(conn: psycopg.Connection[Any]) -> None:
    """Vectors as numpy arrays, and HNSW scans that keep going until a filtered query has
    its rows (pgvector >= 0.8; older servers search without iterative scans)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    # ef_search 100 until the first search sets the value for the active model's index size
    # (knowledge.models.EF_SEARCH_BY_SIZE, from benchmarks/vector_index.py).
    for setting in ("SET hnsw.iterative_scan = relaxed_order", "SET hnsw.ef_search = 100"):
        with contextlib.suppress(psycopg.errors.UndefinedObject):
            conn.execute(setting)


def open_search_pool(
    url: str, *, max_size: int, application_name: str, replica: bool = False, prepared: bool = True
) -> ConnectionPool[Any]:
    """An opened pool of autocommit connections set up by `configure_for_search`, as the API
    and the MCP server use; take its connections with `pooled_connection`. `prepared`: False
    prepares nothing (psycopg's prepare_threshold None), which a pooler in transaction mode
    needs (PgBouncer before 1.21, Supavisor on port 6543); else search prepares its
    unfiltered statements on first use (HQ_PREPARED_STATEMENTS, knowledge.config). Raises
    DatabaseUnavailable when no connection can be made. A `replica`'s pool (a read replica,
    knowledge.db.replicas) is returned at once and connects in the background: a replica that is
    down must not stop the service; its outages are logged by knowledge.db.replicas, not here."""
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        configure=configure_for_search,
        kwargs={
            "autocommit": True,
            "application_name": application_name,
            "prepare_threshold": PREPARE_THRESHOLD if prepared else None,
        },
        # A connection lost with the server is replaced by the first request after the server
        # is back (`pooled_connection` drains the pool then): no need for the pool's own
        # retries, whose back-off (1, 2, 4... s) would hold the replacements back for seconds.
        reconnect_timeout=2,
    )
    if replica:
        with _breakers_lock:
            _breakers[pool] = _Breaker(quiet=True)
        pool.open(wait=False)
        return pool
    try:
        pool.open(wait=True, timeout=30)
    except Exception as e:  # psycopg_pool's PoolTimeout: the reason is in its log
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to the database at {describe_url(url)}: {e}") from e
    return pool


def _conninfo(pool: ConnectionPool[Any]) -> str:
    return pool.conninfo() if callable(pool.conninfo) else pool.conninfo


def _unreachable(pool: ConnectionPool[Any]) -> str | None:
    """Why a new connection to `pool`'s database fails, or None when one can be made."""
    try:
        with psycopg.connect(
            _conninfo(pool), connect_timeout=2, autocommit=True, application_name="hq-knowledge-probe"
        ):
            return None
    except psycopg.Error as e:
        return first_line(e)


class _Breaker:
    """Whether a pool's database is known to be down. While it is, requests fail at once,
    but for one every PROBE_INTERVAL seconds that tries a new connection; when that works,
    the pool's connections (which may predate a server restart) are replaced."""

    def __init__(self, *, quiet: bool = False) -> None:
        self._lock = threading.Lock()
        self.down: str | None = None
        self._next_probe = 0.0
        self._quiet = quiet  # a read replica's: knowledge.db.replicas says when it goes and comes back

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.down is None:
                if not self._quiet:
                    log.warning("the database is unavailable (%s): answering 503 until it is back", reason)
                self._next_probe = time.monotonic() + PROBE_INTERVAL
            self.down = reason

    def reset(self, pool: ConnectionPool[Any]) -> None:
        """The database answered a connection made elsewhere: let requests through at once."""
        with self._lock:
            if self.down is None:
                return
            self.down = None
        pool.drain()

    def admit(self, pool: ConnectionPool[Any]) -> None:
        """Return when the caller may use the pool; raise DatabaseUnavailable at once while
        the database is down and it is not this caller's turn to probe it."""
        with self._lock:
            if self.down is None:
                return
            now = time.monotonic()
            if now < self._next_probe:
                raise DatabaseUnavailable(f"the database is unavailable: {self.down}")
            self._next_probe = now + PROBE_INTERVAL
        failure = _unreachable(pool)
        with self._lock:
            if failure is not None:
                self.down = failure
                raise DatabaseUnavailable(f"the database is unavailable: {failure}")
            self.down = None
        if not self._quiet:
            log.info("the database is back: serving requests again")
        pool.drain()


_breakers: weakref.WeakKeyDictionary[ConnectionPool[Any], _Breaker] = weakref.WeakKeyDictionary()
_breakers_lock = threading.Lock()


def _breaker(pool: ConnectionPool[Any]) -> _Breaker:
    with _breakers_lock:
        breaker = _breakers.get(pool)
        if breaker is None:
            breaker = _breakers[pool] = _Breaker()
        return breaker


def report_down(url: str, reason: str) -> None:
    """Make the pools of `url` fail fast now, not at their next failed request."""
    with _breakers_lock:
        pools = [(pool, breaker) for pool, breaker in _breakers.items() if _conninfo(pool) == url]
    for _pool, breaker in pools:
        breaker.trip(reason)


def report_up(pool: ConnectionPool[Any]) -> None:
    """`pool`'s database just answered elsewhere (knowledge.db.replicas' monitor, on a connection
    of its own): requests may use the pool again now rather than at its next probe; the pool's
    connections from before an outage are replaced."""
    _breaker(pool).reset(pool)


def _working_connection(pool: ConnectionPool[Any], breaker: _Breaker) -> psycopg.Connection[Any]:
    """A connection from `pool` that answers, the caller to `putconn()` it."""
    for attempt in (1, 2):
        try:
            conn: psycopg.Connection[Any] = pool.getconn(timeout=5)
        except PoolTimeout as e:
            reason = _unreachable(pool)
            if reason is None:
                raise DatabaseUnavailable("no database connection was free within 5 s: the service is busy") from e
            breaker.trip(reason)
            raise DatabaseUnavailable(f"the database is unavailable: {reason}") from e
        except psycopg.OperationalError as e:  # the pool is closed: the service is stopping
            raise DatabaseUnavailable(f"the database is unavailable: {first_line(e)}") from e
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error as e:
            pool.putconn(conn)  # broken: the pool replaces it
            reason = _unreachable(pool)
            if reason is not None:
                breaker.trip(reason)
                raise DatabaseUnavailable(f"the database is unavailable: {reason}") from e
            if attempt == 2:
                raise DatabaseUnavailable(f"the database is unavailable: {first_line(e)}") from e
            # The server is up: this connection predates a restart, and so may the others.
            pool.drain()
            continue
        return conn
    raise AssertionError("unreachable")


@contextlib.contextmanager
def pooled_connection(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A working connection from `pool` for the block (one request).

    Raises DatabaseUnavailable (503, with retry_after) when none can be had: at once while
    the database is known to be down (from a lost connection, or `report_down`) until a
    probe, at most one per PROBE_INTERVAL, finds it back; else after 5 s without a free
    connection. A driver error raised in the block comes out as knowledge.dberrors.translate
    makes it (409, 503 or 507), or unchanged when it has no translation.
    """
    breaker = _breaker(pool)
    breaker.admit(pool)
    conn = _working_connection(pool, breaker)
    try:
        yield conn  # autocommit: nothing to commit or roll back before the pool takes it back
    except psycopg.Error as e:
        translated = translate(e)
        if translated is None:
            raise
        if isinstance(translated, DatabaseUnavailable) and conn.broken:
            breaker.trip(first_line(e))
        raise translated from e
    finally:
        pool.putconn(conn)
