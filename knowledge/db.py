"""Connections: the database URL (embedded or external, the embedded server watched and
restarted when it dies), pooled connections that fail fast while the database is down, and
driver errors turned into ours."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .config import Settings
from .dberrors import translate
from .errors import DatabaseUnavailable, InvalidInput, first_line

if TYPE_CHECKING:
    from .embedded import EmbeddedPostgres
    from .health import Health

__all__ = [
    "Watchdog",
    "configure_for_search",
    "connect",
    "database",
    "describe_url",
    "open_search_pool",
    "pooled_connection",
    "prepare_threshold",
    "report_down",
    "report_up",
    "translate_connect_error",
]

log = logging.getLogger("hq_knowledge.db")
PROBE_INTERVAL = 0.5
"""Seconds between two tries of a database known to be down."""


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def translate_connect_error(url: str, e: psycopg.OperationalError) -> DatabaseUnavailable:
    """A one-line error naming the problem and the fix, for a failed connection to `url`."""
    text = str(e).strip()
    where = describe_url(url)
    if "password authentication failed" in text or "no password supplied" in text:
        return DatabaseUnavailable(
            f"password authentication failed for {where}: check the user and password in HQ_DATABASE_URL"
        )
    if "does not exist" in text and "database" in text:
        return DatabaseUnavailable(
            f"{text.splitlines()[-1].removeprefix('FATAL:  ')} ({where}): "
            "create it or fix the database name in HQ_DATABASE_URL"
        )
    if "invalid dsn" in text or 'missing "="' in text or "invalid URI" in text:
        return DatabaseUnavailable(
            f"HQ_DATABASE_URL is not a valid PostgreSQL URL ({where}): "
            "expected postgresql://user:password@host:5432/dbname"
        )
    reason = text.splitlines()[-1] if text else type(e).__name__
    for hint in (
        "Connection refused",
        "No such file or directory",
        "timeout expired",
        "could not translate host name",
        "Network is unreachable",
        "No route to host",
    ):
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
        raise DatabaseUnavailable(f"HQ_DATABASE_URL is not a valid PostgreSQL URL ({describe_url(url)}): {e}") from e


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


def open_search_pool(url: str, *, max_size: int, application_name: str, replica: bool = False) -> ConnectionPool[Any]:
    """An opened pool of autocommit connections set up by `configure_for_search`, as the API
    and the MCP server use; take its connections with `pooled_connection`. Raises
    DatabaseUnavailable when no connection can be made. A `replica`'s pool (a read replica,
    knowledge.replicas) is returned at once and connects in the background: a replica that is
    down must not stop the service; its outages are logged by knowledge.replicas, not here."""
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        configure=configure_for_search,
        kwargs={"autocommit": True, "application_name": application_name, "prepare_threshold": prepare_threshold()},
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
        self._quiet = quiet  # a read replica's: knowledge.replicas says when it goes and comes back

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
    """`pool`'s database just answered elsewhere (knowledge.replicas' monitor, on a connection
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


class Watchdog:
    """Restarts the embedded server when its postmaster dies, while this process uses it.

    Checks every `interval` seconds; on a death, calls `on_down` with the reason, restarts
    the server (or joins the one another process restarted first), retrying with back-off
    until it is up or `stop()` is called, then calls `on_up`. Its state is `health`'s "database_server": ok,
    recovering (restarting), or failed (restarts keep failing; still retrying).
    """

    NAME = "database_server"

    def __init__(
        self,
        server: EmbeddedPostgres,
        *,
        health: Health | None = None,
        on_down: Callable[[str], None] | None = None,
        on_up: Callable[[], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.server = server
        self.health = health
        self.on_down = on_down
        self.on_up = on_up
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hq-knowledge-db-watchdog", daemon=True)

    def start(self) -> None:
        self._set("ok", self._running())
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns once the thread is done (an ongoing restart finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=120)

    def _set(self, state: str, detail: str) -> None:
        if self.health is not None:
            self.health.set(self.NAME, state, detail, stale_after=max(10.0, 10 * self.interval))

    def _running(self) -> str:
        from .embedded import postmaster_pid

        return f"embedded PostgreSQL in {self.server.pgdata}, pid {postmaster_pid(self.server.pgdata)}"

    def _run(self) -> None:
        from .embedded import postmaster_pid

        try:
            while not self._stop.wait(self.interval):
                if self.health is not None:
                    self.health.beat(self.NAME)
                if postmaster_pid(self.server.pgdata) is None:
                    self._recover()
        except Exception as e:  # say so where readiness looks, not only in the log
            log.exception("the embedded PostgreSQL's watchdog stopped")
            self._set("failed", f"the watchdog stopped: {type(e).__name__}: {e}")

    def _recover(self) -> None:
        began = time.monotonic()
        log.warning("the embedded PostgreSQL in %s is not running: starting it again", self.server.pgdata)
        self._set("recovering", "the server stopped; starting it again")
        if self.on_down is not None:
            self.on_down("the embedded PostgreSQL stopped and is being started again")
        delay, attempt = 1.0, 0
        while not self._stop.is_set():
            attempt += 1
            try:
                started = self.server.restart()
            except (DatabaseUnavailable, OSError) as e:
                reason = e.message if isinstance(e, DatabaseUnavailable) else f"{type(e).__name__}: {e}"
                log.warning(
                    "restart %d of the embedded PostgreSQL failed (retrying in %.0f s): %s", attempt, delay, reason
                )
                self._set(
                    "failed" if attempt >= 3 else "recovering",
                    f"restart {attempt} failed, retrying in {delay:.0f} s: {reason}",
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            log.info(
                "the embedded PostgreSQL in %s is back after %.1f s (%s)",
                self.server.pgdata,
                time.monotonic() - began,
                "restarted" if started else "restarted by another process",
            )
            self._set("ok", self._running())
            if self.on_up is not None:
                try:
                    self.on_up()
                except Exception:  # the server is back; what follows a restart may fail alone
                    log.warning("after restarting the embedded PostgreSQL", exc_info=True)
            return


def _repair_keyword_index(url: str) -> None:
    """pg_textsearch forgets its corpus statistics when the server restarts: rebuild them."""
    from .keyword_index import repair_bm25_index

    with connect(url, autocommit=True) as conn:
        repair_bm25_index(conn)


def _mend_keyword_index(server: EmbeddedPostgres, url: str) -> None:
    """Repair the BM25 index; if rebuilding did not mend it (pg_textsearch 1.0 after a failed
    read, until the server restarts), restart the embedded server, unless another process
    uses it too: the rebuilt index is whole after the restart."""
    from .embedded import postmaster_pid
    from .keyword_index import bm25_unsound, repair_bm25_index

    with connect(url, autocommit=True) as conn:
        repair_bm25_index(conn)
        if not bm25_unsound(conn):
            return
    before = postmaster_pid(server.pgdata)
    server.stop()  # the last user's stop shuts the server down
    server.start()
    if postmaster_pid(server.pgdata) == before:
        log.error(
            "the BM25 index needs the embedded PostgreSQL restarted, and another process uses it: "
            "stop the other hq-knowledge processes, or restart this one once they are stopped"
        )
        return
    log.warning("restarted the embedded PostgreSQL to finish rebuilding the BM25 index")
    with connect(url, autocommit=True) as conn:
        repair_bm25_index(conn)


@contextlib.contextmanager
def database(settings: Settings, health: Health | None = None) -> Iterator[str]:
    """Yield the URL of the database to use: HQ_DATABASE_URL, or the embedded server.

    The embedded server is started (or joined) on entry, watched while the block runs (a
    `Watchdog` restarts it if it dies, and reports its state in `health`), and released on
    exit. With HQ_DATABASE_URL nothing is watched and `health` is left as it is.
    """
    if settings.database_url:
        yield settings.database_url
        return
    from .embedded import EmbeddedPostgres

    with EmbeddedPostgres(settings.data_dir) as server:
        url = server.url
        _mend_keyword_index(server, url)
        watchdog = Watchdog(
            server,
            health=health,
            on_down=lambda reason: report_down(url, reason),
            on_up=lambda: _repair_keyword_index(url),
        )
        watchdog.start()
        try:
            yield url
        finally:
            watchdog.stop()
