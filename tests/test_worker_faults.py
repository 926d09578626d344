"""The ingestion worker under faults, against real servers: a database restart under a
standalone worker, connections terminated by an administrator, a worker killed holding a
full batch, and the errors that must stop it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from embeddings.model import FakeEmbedder
from knowledge.db.embedded import EmbeddedPostgres
from knowledge.db.migrations import migrate
from knowledge.db.pools import configure_for_search
from knowledge.health import Health
from knowledge.ingest.leases import node_name
from knowledge.ingest.worker import Worker
from knowledge.search import SearchQuery
from knowledge.search.setup import search_active

from .commands import environment
from .factories import add_document
from .test_worker import statuses

Conn = psycopg.Connection[dict[str, Any]]
ROOT = Path(__file__).resolve().parent.parent


def _run(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python *args` on the database at `db_url` with the fake embedder, to its end (at most 2 minutes)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environment(HQ_DATABASE_URL=db_url, HQ_EMBEDDER="fake"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _until(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait for `check()`; the seconds it took. Fails after `seconds` (a bound, not a measure)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


def _indexed(url: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as c:
                row = c.execute("SELECT count(*) FROM documents WHERE embedding_status = 'indexed'").fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and row[0] == n

    return check


def _add(url: str, n: int, prefix: str) -> None:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c:
        for i in range(n):
            add_document(c, f"{prefix} {i}", f"# {prefix} {i}\n\nText number {i} of {prefix}.")


# -- must-show: a standalone worker outlives a restart of its database ----------------------


def test_standalone_worker_outlives_a_restart_of_its_database(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "external")
    url = server.start()
    log_file = tmp_path / "worker.log"
    try:
        with psycopg.connect(url, autocommit=True) as c:
            migrate(c)
        with log_file.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "knowledge", "worker"],
                cwd=ROOT,
                env=environment(HQ_DATABASE_URL=url, HQ_EMBEDDER="fake"),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            _add(url, 5, "Before")
            _until(_indexed(url, 5), 60, "the first documents indexed")

            server.stop()  # fast shutdown: every backend gets 'terminating connection' (57P01)
            with pytest.raises(psycopg.OperationalError):
                _add(url, 1, "Meanwhile")
            time.sleep(3)  # the worker finds the database gone and backs off several times
            assert proc.poll() is None, log_file.read_text()

            server.start()
            restarted = time.monotonic()
            # The restart emptied pg_textsearch's statistics (keyword search finds nothing until
            # they are rebuilt, and writes after the restart only hide it): the worker rebuilds
            # them as it reconnects, before anything else is written.
            _until(lambda: "the database is back after" in log_file.read_text(), 60, "the worker back")
            with psycopg.connect(url, autocommit=True) as c:
                configure_for_search(c)
                hits = search_active(c, SearchQuery(q="text number before", mode="keyword", limit=20)).hits
            assert {h.title for h in hits} == {f"Before {i}" for i in range(5)}
            _add(url, 5, "After")
            _until(_indexed(url, 10), 60, "every document indexed after the restart")
            seconds = time.monotonic() - restarted
            print(f"\nrestart to all 10 documents indexed: {seconds:.2f} s")
            assert proc.poll() is None, log_file.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        output = log_file.read_text()
        assert proc.returncode == 0, output
        assert output.count("trying again until the database is back") == 1, output
        assert output.count("the database is back after") == 1, output
        assert "Traceback" not in output, output
        with psycopg.connect(url) as c:
            assert c.execute("SELECT count(*) FROM documents WHERE embedding_lease_owner IS NOT NULL").fetchone() == (
                0,
            )
    finally:
        server.stop()


# -- must-show: kill -9 of a worker holding a full batch -------------------------------------


HOLDING_WORKER = textwrap.dedent("""
    import sys, time
    from embeddings.model import FakeEmbedder
    from knowledge.ingest.worker import Worker

    class Stuck(FakeEmbedder):
        def embed(self, texts):
            print("embedding", len(texts), flush=True)
            time.sleep(600)
            return super().embed(texts)

    Worker(sys.argv[1], Stuck(), batch_records=64).run()
""")


def test_a_batch_of_a_worker_killed_with_9_is_indexed_at_once_by_the_next(conn: Conn, db_url: str) -> None:
    for i in range(64):
        add_document(conn, f"Doc {i}", f"# Doc {i}\n\nParagraph {i} of the batch.")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDING_WORKER, db_url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().startswith("embedding")
    assert statuses(conn) == {"processing": 64}
    lease = conn.execute("SELECT min(embedding_lease_expires_at - now()) AS left FROM documents").fetchone()
    assert lease is not None and lease["left"].total_seconds() > 60  # expiry would take minutes
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)

    start = time.monotonic()
    result = _run(db_url, "-m", "knowledge", "worker", "--once")
    seconds = time.monotonic() - start
    print(f"\nnew worker started to 64 records indexed: {seconds:.2f} s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("indexed 64, failed 0"), result.stdout + result.stderr
    assert "reclaimed 64 lease(s) of dead worker(s)" in result.stderr
    assert statuses(conn) == {"indexed": 64}
    assert seconds < 30
    attempts = conn.execute("SELECT DISTINCT embedding_attempts AS n FROM documents").fetchall()
    # The dead worker's try counts (a record that crashes its worker must end failed), the
    # new worker's is the second.
    assert attempts == [{"n": 2}]


# -- a live worker's lease is never reclaimed ----------------------------------------------------


def _owners(conn: Conn) -> dict[str | None, int]:
    rows = conn.execute(
        "SELECT embedding_lease_owner AS o, count(*) AS n FROM documents"
        " WHERE embedding_status = 'processing' GROUP BY 1"
    ).fetchall()
    return {r["o"]: r["n"] for r in rows}


def test_only_leases_of_dead_processes_of_this_host_are_reclaimed(conn: Conn, db_url: str) -> None:
    for i in range(8):
        add_document(conn, f"Doc {i}", f"Text {i}.")
    holder = Worker(db_url, FakeEmbedder(), batch_records=2)
    reaper = Worker(db_url, FakeEmbedder())
    assert len(holder._lease()) == 2  # a live worker of this process, mid-batch

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)  # exited and reaped: its pid runs nothing (or something unrelated)
    node = node_name()
    owners = {
        "live": f"{node}:{alive.pid}:aaaaaa",
        "dead": f"{node}:{dead.pid}:bbbbbb",
        "elsewhere": f"another-host:{dead.pid}:cccccc",
        "odd": "not a worker id",
    }
    try:
        for owner in owners.values():
            conn.execute(
                "UPDATE documents SET embedding_status = 'processing', embedding_lease_owner = %s,"
                " embedding_lease_expires_at = now() + interval '1 hour', embedding_attempts = 1"
                " WHERE id IN (SELECT id FROM documents WHERE embedding_status = 'pending' LIMIT 1)",
                [owner],
            )
        before = _owners(conn)
        assert before == {holder.worker_id: 2} | {o: 1 for o in owners.values()}

        assert reaper._reclaim_dead() == 1
        assert _owners(conn) == {holder.worker_id: 2, owners["live"]: 1, owners["elsewhere"]: 1, owners["odd"]: 1}

        alive.kill()
        alive.wait(timeout=10)
        assert reaper._reclaim_dead() == 1
        assert owners["live"] not in _owners(conn)
        released = conn.execute(
            "SELECT embedding_attempts, embedding_lease_owner, embedding_error"
            " FROM documents WHERE embedding_status = 'pending'"
            " AND embedding_error IS NOT NULL"
        ).fetchall()
        assert (
            released
            == [
                {
                    "embedding_attempts": 1,
                    "embedding_lease_owner": None,
                    "embedding_error": "its worker stopped while embedding it (process gone)",
                }
            ]
            * 2
        )
    finally:
        alive.kill()
        alive.wait(timeout=10)
        holder.close()
        reaper.close()


# -- supervision ---------------------------------------------------------------------------------


def _worker_backends(conn: Conn) -> list[int]:
    return [
        r["pid"]
        for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'hq-knowledge-worker'"
            " AND datname = current_database()"
        ).fetchall()
    ]


def _new_backends(conn: Conn, old: list[int], n: int) -> Callable[[], bool]:
    return lambda: len(set(_worker_backends(conn)) - set(old)) == n


def test_worker_survives_its_connections_being_terminated(
    conn: Conn, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    health = Health()
    stop = threading.Event()
    # A poll of two minutes: only a NOTIFY on the re-opened LISTEN connection wakes it in time.
    worker = Worker(db_url, FakeEmbedder(), poll_seconds=120, health=health)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    caplog.set_level(logging.INFO, logger="hq_knowledge.worker")
    thread.start()
    try:
        add_document(conn, "First", "Written before the outage.")
        _until(_indexed(db_url, 1), 20, "the first document indexed")
        for outage in range(2):
            backends = _worker_backends(conn)
            assert len(backends) == 2  # the work connection and the LISTEN connection
            for pid in backends:
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
            _until(
                lambda: (c := health.get("worker")) is not None and c.state == "recovering", 20, "the worker noticing"
            )
            _until(_new_backends(conn, backends, 2), 20, "the worker reconnecting both connections")
            _until(lambda: (c := health.get("worker")) is not None and c.state == "ok", 20, "the worker ok")
            add_document(conn, f"After outage {outage}", "Written once the worker is back.")
            _until(_indexed(db_url, 2 + outage), 20, "a document written after the outage indexed")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    component = health.get("worker")
    assert component is not None and component.state == "stopped"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("trying again until the database is back" in r.getMessage() for r in warnings), [
        r.getMessage() for r in warnings
    ]
    assert sum("the database is back after" in r.getMessage() for r in caplog.records) == 2
    assert not any(r.exc_info for r in caplog.records)


def test_worker_beats_while_idle(db_url: str) -> None:
    health = Health()
    stop = threading.Event()
    thread = threading.Thread(
        target=Worker(db_url, FakeEmbedder(), poll_seconds=60, health=health).run, kwargs={"stop": stop}
    )
    thread.start()
    try:
        _until(lambda: (c := health.get("worker")) is not None and c.state == "ok", 20, "the worker ok")
        first = health.get("worker")
        assert first is not None and first.last_beat is not None
        beat = first.last_beat
        _until(
            lambda: (c := health.get("worker")) is not None and (c.last_beat or 0) > beat + 1, 10, "a beat while idle"
        )
        component = health.get("worker")
        assert component is not None and not component.stuck
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_programming_error_stops_the_worker(conn: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    add_document(conn, "Doc", "Some text.")
    health = Health()
    worker = Worker(db_url, FakeEmbedder(), health=health)

    def broken(records: list[Any]) -> dict[str, Any]:
        raise KeyError("a bug")

    monkeypatch.setattr(worker, "_embed", broken)
    with pytest.raises(KeyError, match="a bug"):
        worker.run(once=True)
    component = health.get("worker")
    assert component is not None and component.state == "failed" and "KeyError" in component.detail


def test_a_non_transient_database_error_stops_the_worker(conn: Conn, db_url: str) -> None:
    add_document(conn, "Doc", "Some text.")
    # A schema broken by hand: no amount of reconnecting fixes it.
    conn.execute("ALTER TABLE documents RENAME COLUMN embedding_lease_owner TO lease_holder")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        Worker(db_url, FakeEmbedder()).run(once=True)


BROKEN_WORKER = textwrap.dedent("""
    import sys
    from knowledge.ingest.worker import Worker
    from knowledge.cli.main import main

    def broken(self, records):
        raise TypeError("unsupported operand type(s)")

    Worker._embed = broken
    sys.exit(main(sys.argv[1:]))
""")


def test_the_worker_command_exits_non_zero_on_a_programming_error(conn: Conn, db_url: str) -> None:
    add_document(conn, "Doc", "Some text.")
    result = _run(db_url, "-c", BROKEN_WORKER, "worker")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the ingestion worker stopped: TypeError: unsupported operand"), result.stderr
    assert "Traceback" not in result.stderr


def _serve_with(script: str, conn: Conn, db_url: str) -> subprocess.CompletedProcess[str]:
    """`serve` run by `script` (which patches the worker) over one queued document, to its end."""
    import socket

    add_document(conn, "Doc", "Some text.")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _run(db_url, "-c", script, "serve", "--port", str(port))


def test_serve_exits_non_zero_when_its_worker_stops(conn: Conn, db_url: str) -> None:
    result = _serve_with(BROKEN_WORKER, conn, db_url)
    assert result.returncode == 1, result.stderr
    assert "the ingestion worker stopped" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the ingestion worker stopped (TypeError")


PRIORITY_PROBE = textwrap.dedent("""
    import os, sys, threading
    from knowledge.ingest.worker import Worker
    from knowledge.cli.main import main

    def probe(self, records):
        main_nice = os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id)
        print(f"nice {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())} {main_nice}", file=sys.stderr)
        raise TypeError("probed")

    Worker._embed = probe
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_serve_runs_its_worker_below_the_searches_cpu_priority(conn: Conn, db_url: str) -> None:
    """Searches come first: the worker thread of `serve` (and the torch threads it starts)
    embeds at nice 10, the threads that answer requests keep the process's priority."""
    if os.getpriority(os.PRIO_PROCESS, 0) >= 10:
        pytest.skip("the tests already run at nice 10 or more")
    result = _serve_with(PRIORITY_PROBE, conn, db_url)
    probed = [line.split() for line in result.stderr.splitlines() if line.startswith("nice ")]
    assert probed, result.stderr
    assert probed[0][1:] == ["10", str(os.getpriority(os.PRIO_PROCESS, 0))]


def _embedded_beyond(conn: Conn, job_id: Any, done: int) -> Callable[[], bool]:
    from knowledge.ingest.reembed_jobs import get_job

    return lambda: get_job(conn, job_id).embedded > done


def test_reembed_runner_survives_its_connection_being_terminated(
    conn: Conn, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from embeddings.registry import resolve_model
    from knowledge.ingest.reembed_jobs import Selection, get_job, start_job
    from knowledge.ingest.reembedder import ReembedRunner

    from .test_reembed import NEW, SlowFake, build_base

    total = build_base(conn, db_url, docs=20)
    job, _ = start_job(conn, resolve_model(NEW), Selection(), activate=True)
    runner = ReembedRunner(db_url, job.id, SlowFake(delay=0.05), batch=10)
    caplog.set_level(logging.INFO, logger="hq_knowledge.reembed")
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        for _ in range(2):
            done = get_job(conn, job.id).embedded
            _until(_embedded_beyond(conn, job.id, done), 30, "the runner embedding")
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
                " WHERE application_name = 'hq-knowledge-reembed'"
                " AND datname = current_database()"
            ).fetchone()
            assert killed == {"n": 1}
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive()
    final = get_job(conn, job.id)
    assert (final.status, final.failed, final.done) == ("completed", 0, total)
    assert runner.stats.activated
    vectors = conn.execute("SELECT count(*) AS n FROM chunk_embeddings WHERE model = %s", [NEW]).fetchone()
    assert vectors == {"n": total}
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "hq_knowledge.reembed"
    ]
    assert len(warnings) == 2 and all("trying again until the database is back" in w for w in warnings), warnings


def test_a_lost_race_while_writing_gives_the_batch_back_uncounted(
    conn: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        add_document(conn, f"Doc {i}", f"Text {i}.")
    worker = Worker(db_url, FakeEmbedder())
    write = worker._write
    raised: list[int] = []

    def deadlocked(record: Any, vectors: dict[str, Any]) -> str:
        if not raised:
            raised.append(1)
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return write(record, vectors)

    monkeypatch.setattr(worker, "_write", deadlocked)
    stats = worker.run(once=True)
    assert raised and stats.indexed == 4 and stats.failed == stats.retried == 0
    rows = conn.execute("SELECT embedding_status, embedding_attempts, embedding_error FROM documents").fetchall()
    assert rows == [{"embedding_status": "indexed", "embedding_attempts": 1, "embedding_error": None}] * 4
