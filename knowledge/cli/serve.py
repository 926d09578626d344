"""Long-running commands: `serve` (API + ingestion worker) and `worker`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from knowledge.config import Settings, describe_url
from knowledge.db.connect import connect, database
from knowledge.db.keyword_index import repair_bm25_index
from knowledge.db.migrations import migrate
from knowledge.db.pools import open_search_pool
from knowledge.db.replicas import ReadRouter
from knowledge.errors import KnowledgeError
from knowledge.health import Health
from knowledge.ingest import queue
from knowledge.search.admission import admission_for

if TYPE_CHECKING:
    import uvicorn

__all__ = ["http_config", "run_mcp", "run_worker", "serve"]

log = logging.getLogger("hq_knowledge")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command's output at INFO


def _prepare(url: str, *, sample: bool = False) -> None:
    with connect(url, autocommit=True) as conn:
        result = migrate(conn)
        if result.upgraded_from:
            log.info(
                "database %s upgraded from %s: every migration re-applied (they are idempotent)",
                describe_url(url),
                result.upgraded_from,
            )
        else:
            log.info(
                "database %s: %d migration(s) applied, %d already there",
                describe_url(url),
                len(result.applied),
                len(result.skipped),
            )
        repair_bm25_index(conn)
        _log_keyword_path(conn)
        if sample:
            from knowledge.store.importer import import_folder, import_sample_agents, sample_dir

            import_sample_agents(conn)
            imported = import_folder(conn, sample_dir())
            log.info(
                "sample knowledge base: %d created, %d updated, %d unchanged, %d failed",
                imported.created,
                imported.updated,
                imported.unchanged,
                len(imported.errors),
            )


def _log_keyword_path(conn: Any) -> None:
    """Say which keyword index searches use; warn when HQ_KEYWORD_INDEX asks for one the
    database does not have."""
    from knowledge.db.keyword_index import configured_keyword_index, keyword_path

    choice = configured_keyword_index()
    path = keyword_path(conn, choice)
    if choice == "pg_textsearch" and path != "bm25":
        log.warning(
            "HQ_KEYWORD_INDEX=pg_textsearch, but this database has no pg_textsearch BM25 index: keyword search uses %s",
            path,
        )
    elif path == "ts_rank_cd":
        log.warning("keyword search ranks with ts_rank_cd: the SQL BM25 tables are missing (run db migrate)")
    else:
        log.info("keyword search: %s (HQ_KEYWORD_INDEX=%s)", path, choice)


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    worker: bool = True,
    sample: bool = False,
    mcp_read_only: bool = False,
) -> int:
    """Run until SIGINT/SIGTERM; the embedded server (if used) is released on the way out.

    Returns 1 when the ingestion worker stopped on an error it cannot ride out: the service
    shuts down rather than serve search over an index nobody keeps up to date, so that its
    supervisor restarts it."""
    import uvicorn

    from knowledge.api import create_app
    from knowledge.api.security import AccessPolicy

    _logging()
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again with the
    # handler found at start: make that handler an exit that unwinds through `database()`,
    # so the embedded server is released instead of orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    address, port = host or settings.host, port or settings.port
    access = AccessPolicy.for_bind(
        address,
        port,
        require_keys=settings.require_keys,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )
    health = Health()
    with database(settings, health) as url:
        _prepare(url, sample=sample)
        _check_keys(url, address, access)
        warming = _warm_query_embedder(url)
        app = create_app(
            url,
            mcp_read_only=mcp_read_only,
            host=address,
            port=port,
            access=access,
            health=health,
            read_urls=settings.read_database_urls,
            read_max_lag=settings.read_max_lag,
            admission=admission_for(settings.search_concurrency, settings.search_queue),
            prepared_statements=settings.prepared_statements,
        )
        server = uvicorn.Server(http_config(app, address, port, settings))
        stop = threading.Event()
        failed: list[BaseException] = []

        def worker_failed(e: BaseException) -> None:
            failed.append(e)
            server.should_exit = True  # uvicorn checks it every tick, from any thread

        thread = _start_worker(url, settings, stop, health, worker_failed) if worker else None
        try:
            server.run()
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=120)
            if warming is not None:
                # Exiting while the model runtime starts its threads aborts the process
                # (std::terminate), which would hide the exit status.
                warming.join(timeout=60)
    if failed:
        print(
            f"error: the ingestion worker stopped ({type(failed[0]).__name__}: {failed[0]}); "
            "the service shut down so that it can be restarted",
            file=sys.stderr,
        )
        return 1
    return 0


def http_config(app: Any, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """How `serve` runs the app: its access log and idle keep-alive as `settings` say, and
    request heads bounded (MAX_HEADER_BYTES)."""
    import uvicorn

    from knowledge.api.security import MAX_HEADER_BYTES

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=settings.access_log,
        timeout_keep_alive=settings.keep_alive,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def _check_keys(url: str, address: str, access: Any) -> None:
    """Refuse to serve where every request needs a key and no key exists."""
    from knowledge.api.security import is_loopback
    from knowledge.store.keys import active_key_count

    if not access.require_keys:
        return
    with connect(url) as conn:
        if active_key_count(conn):
            return
    why = (
        "HQ_REQUIRE_KEYS is set"
        if is_loopback(address)
        else f"{address} is not a loopback address, so every request needs an API key,"
    )
    raise KnowledgeError(
        f"refusing to listen on {address}: {why} and no key exists; create one with "
        "`hq-knowledge keys create --scope admin` (or listen on 127.0.0.1)"
    )


def run_mcp(settings: Settings, *, read_only: bool = False, agent: str | None = None) -> int:
    """`mcp`: the MCP server over stdio until the client closes it. Standard output carries
    the protocol only: logs go to standard error."""
    from knowledge.agents.mcp_server import build_mcp_server
    from knowledge.store.validation import check_slug

    _logging()
    if agent is not None:
        check_slug(agent)
    with database(settings) as url:
        _prepare(url)
        _warm_query_embedder(url)
        prepared = settings.prepared_statements
        pool = open_search_pool(url, max_size=4, application_name="hq-knowledge-mcp", prepared=prepared)
        replicas = [
            (
                read_url,
                open_search_pool(
                    read_url, max_size=4, application_name="hq-knowledge-mcp-read", replica=True, prepared=prepared
                ),
            )
            for read_url in settings.read_database_urls
        ]
        reads = ReadRouter(url, pool, replicas, max_lag=settings.read_max_lag)
        reads.start()
        try:
            build_mcp_server(
                lambda: pool, read_only=read_only, agent=agent, read_router=(lambda: reads) if replicas else None
            ).run("stdio")
        finally:
            reads.close()
            for _url, replica_pool in replicas:
                replica_pool.close()
            pool.close()
    return 0


def _warm_query_embedder(url: str) -> threading.Thread | None:
    """Load (on a first start: export) the query model in the background, so that the
    first search does not wait for it. Returns the loading thread (None: no model)."""
    from knowledge.search.setup import query_embedder, search_setup

    with connect(url) as conn:
        setup = search_setup(conn)
    spec = setup.spec
    if spec is None:
        return None

    def warm() -> None:
        try:
            query_embedder(spec)("warm up")
        except Exception:
            log.warning("could not load the query model %s", spec.name, exc_info=True)

    thread = threading.Thread(target=warm, name="hq-knowledge-warm-up", daemon=True)
    thread.start()
    return thread


# The worker thread's nice value (and its torch threads', which inherit it). Searches come
# first: a passage waits a little longer to be embedded, a search does not wait for the
# worker's batch (benchmarks/load.py measures searches while documents are embedded).
WORKER_NICE = 10


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority to `nice`, and that of the threads it starts (Linux
    keeps a nice value per thread); elsewhere a no-op, as it would change the whole process."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:
        log.warning("could not lower the worker's CPU priority: %s", e)


def _start_worker(
    url: str, settings: Settings, stop: threading.Event, health: Health, on_failure: Callable[[BaseException], None]
) -> threading.Thread:
    """The worker's thread, started. It rides out database outages by itself; on any other
    error it logs the traceback and calls `on_failure`, which must stop the process."""
    from embeddings.model import load_embedder
    from knowledge.ingest.worker import Worker

    worker = Worker(url, load_embedder(settings.embedder) if settings.embedder else None, health=health)

    def run() -> None:
        _lower_priority(WORKER_NICE)
        try:
            worker.run(stop=stop)
        except Exception as e:
            log.exception("the ingestion worker stopped")
            on_failure(e)

    thread = threading.Thread(target=run, name="hq-knowledge-worker", daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings, *, once: bool = False, batch: int = 64) -> int:
    """`worker`: embed until SIGTERM/SIGINT (the current batch is finished or released),
    or with `once` until nothing is pending, waiting out database outages. Exit 1 when a
    record failed for good, or when the worker stopped on an error it cannot ride out."""
    from embeddings.model import load_embedder
    from knowledge.cli.progress import progress
    from knowledge.ingest.worker import Worker

    _logging()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping after the current batch")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with database(settings) as url:
        _prepare(url)
        with connect(url) as conn:
            pending = queue.depth(conn).queued
        with progress(pending if once else None, "embedding", unit="record") as advance:
            worker = Worker(
                url,
                load_embedder(settings.embedder) if settings.embedder else None,
                batch_records=batch,
                on_record=lambda kind, id_, outcome: advance(f"{kind} {outcome}"),
            )
            error: Exception | None = None
            try:
                stats = worker.run(once=once, stop=stop)
            except Exception as e:
                error = e
    if error is not None:
        print(
            f"error: the ingestion worker stopped: {type(error).__name__}: {error} ({_where(error)})", file=sys.stderr
        )
        return 1
    print(
        f"indexed {stats.indexed}, failed {stats.failed}, retrying {stats.retried}, "
        f"superseded by edits {stats.stale}; passages embedded {stats.passages_embedded}, "
        f"reused {stats.passages_reused}"
    )
    if stats.failed:
        print(f"error: {stats.failed} record(s) failed to embed; their errors are in embedding_error", file=sys.stderr)
        return 1
    return 0


def _where(e: BaseException) -> str:
    """`file:line in function` of the frame that raised `e`."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "no traceback"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
