"""The embedded server's life cycle across processes: persistence, sharing, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import psycopg

from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from knowledge.db.embedded import EmbeddedPostgres
    server = EmbeddedPostgres(Path(sys.argv[1]))
    print(server.start(), flush=True)
    sys.stdin.readline()
    server.stop()
""")


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    """A process that starts (or joins) the server and holds it until its stdin gets a line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("postgresql://")
    return proc


def _postmasters(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("/postgres") and str(pgdata) in cmd:
            found.append(proc)
    return found


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path) as server, psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    assert postmaster_pid(tmp_path / "pg") is None
    with EmbeddedPostgres(tmp_path) as server, psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]


def test_last_user_stops_the_server(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    pid = postmaster_pid(tmp_path / "pg")
    assert pid is not None
    mine = EmbeddedPostgres(tmp_path)
    mine.start()
    assert postmaster_pid(tmp_path / "pg") == pid  # joined, not a second server
    mine.stop()
    assert postmaster_pid(tmp_path / "pg") == pid  # the holder still uses it
    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert postmaster_pid(tmp_path / "pg") is None


def test_orphaned_postmaster_is_reused_then_stopped(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    orphan = postmaster_pid(tmp_path / "pg")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    assert postmaster_pid(tmp_path / "pg") == orphan  # the postmaster outlived its owner

    server = EmbeddedPostgres(tmp_path)
    server.start()
    assert postmaster_pid(tmp_path / "pg") == orphan
    assert [p.pid for p in _postmasters(tmp_path / "pg")] == [orphan]
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.stop()
    assert postmaster_pid(tmp_path / "pg") is None
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE


def test_server_without_bm25_still_migrates_and_says_so(tmp_path: Path) -> None:
    """pg_textsearch only loads when preloaded: without it 001 notes the gap, the passages get
    no pg_textsearch index, and `db check` reports the SQL BM25 keyword path. Nothing else is
    missing."""
    from knowledge.db.keyword_index import keyword_path
    from knowledge.db.migrations import migrate
    from knowledge.db.schema_check import check_database

    with EmbeddedPostgres(tmp_path, preload=()) as server, psycopg.connect(server.url, autocommit=True) as conn:
        result = migrate(conn)
        assert any("pg_textsearch" in n for n in result.notices["001_extensions.sql"])
        assert any("BM25" in n for n in result.notices["011_assets_documents.sql"])
        assert keyword_path(conn) == "sql-bm25"
        report = check_database(conn)
        assert report.complete, report.missing
        assert {i.name: i.detail for i in report.items}["keyword search"].startswith("sql-bm25")


def test_restart_after_the_postmaster_was_killed(tmp_path: Path) -> None:
    """kill -9 of the postmaster leaves its backends running until they notice; one that
    cannot (stopped here) keeps the shared memory attached, and PostgreSQL refuses to start
    while it does. `restart()` kills it, starts the server again, and the data is there."""
    server = EmbeddedPostgres(tmp_path)
    server.start()
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('committed before the kill')")
        stuck = psycopg.connect(server.url)
        row = stuck.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = psutil.Process(row[0])
        backend.suspend()
        old = postmaster_pid(tmp_path / "pg")
        assert old is not None
        os.kill(old, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(old)], timeout=10)

        assert server.restart() is True
        assert not backend.is_running() or backend.status() == psutil.STATUS_ZOMBIE
        assert postmaster_pid(tmp_path / "pg") not in (None, old)
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("committed before the kill",)]
        assert server.restart() is False  # running: nothing to do
        stuck.close()
    finally:
        server.stop()
    assert postmaster_pid(tmp_path / "pg") is None
