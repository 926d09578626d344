"""Connections: the database URL (embedded or external, the embedded server watched and
restarted when it dies) and a connection's errors turned into ours. The service's pools,
which fail fast while the database is down, are knowledge.pools."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from knowledge.config import Settings, describe_url
from knowledge.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from knowledge.db.embedded import EmbeddedPostgres
    from knowledge.health import Health

__all__ = ["Watchdog", "connect", "database", "translate_connect_error"]

log = logging.getLogger("hq_knowledge.db")


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
        from knowledge.db.embedded import postmaster_pid

        return f"embedded PostgreSQL in {self.server.pgdata}, pid {postmaster_pid(self.server.pgdata)}"

    def _run(self) -> None:
        from knowledge.db.embedded import postmaster_pid

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
    from knowledge.db.keyword_index import repair_bm25_index

    with connect(url, autocommit=True) as conn:
        repair_bm25_index(conn)


def _mend_keyword_index(server: EmbeddedPostgres, url: str) -> None:
    """Repair the BM25 index; if rebuilding did not mend it (pg_textsearch 1.0 after a failed
    read, until the server restarts), restart the embedded server, unless another process
    uses it too: the rebuilt index is whole after the restart."""
    from knowledge.db.embedded import postmaster_pid
    from knowledge.db.keyword_index import bm25_unsound, repair_bm25_index

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
    from knowledge.db.embedded import EmbeddedPostgres
    from knowledge.db.pools import report_down  # here: knowledge.db.pools imports this module

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
