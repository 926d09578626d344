"""The command line, run as a user would: a subprocess, its exit code and what it prints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from knowledge.db.embedded import postmaster_pid
from knowledge.db.migrations import LEDGER

from .commands import environment, free_port, hq
from .conftest import Server
from .pgtools import psql_file


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_migrate_then_check_passes(empty_db_url: str) -> None:
    env = {"HQ_DATABASE_URL": empty_db_url}
    check = hq("db", "check", env=env)
    assert check.returncode == 1
    assert "MISSING" in check.stdout and "table documents" in check.stdout

    migrate = hq("db", "migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    assert "applied 20 migration(s)" in migrate.stdout
    assert hq("db", "migrate", env=env).stdout.strip().endswith("schema up to date (20 migrations applied)")

    check = hq("db", "check", env=env)
    assert check.returncode == 0, check.stdout
    assert "complete: the schema is ready" in check.stdout
    report = json.loads(hq("db", "check", "--json", env=env).stdout)
    assert report["complete"] is True
    assert {i["name"]: i["detail"] for i in report["items"]}["keyword search"].startswith("bm25")


def test_bundle_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.sql"
    result = hq("db", "bundle", "-o", str(out))
    assert result.returncode == 0
    text = out.read_text()
    assert text.count("-- ==== ") == 20 and text.rstrip().endswith("COMMIT;")


def test_unreachable_server() -> None:
    line = one_line_error(hq("db", "migrate", env={"HQ_DATABASE_URL": "postgresql://hq:s3cret@127.0.0.1:9/hq"}))
    assert "cannot connect to PostgreSQL at postgresql://hq:***@127.0.0.1:9/hq (connection refused)" in line
    assert "HQ_DATABASE_URL" in line and "s3cret" not in line


def test_malformed_url() -> None:
    line = one_line_error(hq("db", "check", env={"HQ_DATABASE_URL": "not a url"}))
    assert "HQ_DATABASE_URL is not a valid PostgreSQL URL" in line


@pytest.fixture
def password_role(pg_server: Server) -> Iterator[str]:
    """A role that must log in with a password (scram) on the test server."""
    if pg_server.embedded is None:
        pytest.skip("needs the embedded test server, whose pg_hba.conf the test can edit")
    hba = pg_server.embedded.pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local all hq_pw scram-sha-256\n" + original)
    with pg_server.admin() as admin:
        admin.execute("CREATE ROLE hq_pw LOGIN PASSWORD 'right-password'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        yield "hq_pw"
    finally:
        hba.write_text(original)
        with pg_server.admin() as admin:
            admin.execute("DROP ROLE hq_pw")
            admin.execute("SELECT pg_reload_conf()")


def test_wrong_password(pg_server: Server, password_role: str) -> None:
    assert pg_server.embedded is not None
    socket_dir = pg_server.embedded.socket_dir
    wrong = f"postgresql://{password_role}:wrong-password@/postgres?host={socket_dir}"
    line = one_line_error(hq("db", "check", env={"HQ_DATABASE_URL": wrong}))
    assert f"password authentication failed for postgresql://{password_role}:***@/postgres" in line
    assert "check the user and password in HQ_DATABASE_URL" in line
    right = wrong.replace("wrong-password", "right-password")
    assert "password authentication failed" not in hq("db", "check", env={"HQ_DATABASE_URL": right}).stderr


def _debian_postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


@pytest.fixture
def server_without_pgvector(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL from the system's packages, which has no pgvector."""
    bindir = _debian_postgres_bin()
    if bindir is None:
        pytest.skip("no system PostgreSQL in /usr/lib/postgresql (apt install postgresql)")
    if list(Path("/usr/share/postgresql").glob("*/extension/vector.control")):
        pytest.skip("the system PostgreSQL has pgvector installed")
    from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    user = None
    data = tmp_path / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        user = "pgserver"
        ensure_user_exists(user)
        ensure_prefix_permissions(data)
        shutil.chown(data, user, user)
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
        user=user,
    )
    subprocess.run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "log"),
            "-o",
            f"-c listen_addresses='' -k {data}",
            "start",
        ],
        check=True,
        capture_output=True,
        user=user,
    )
    try:
        yield f"postgresql://postgres@/postgres?host={data}"
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            user=user,
            check=False,
        )


def test_server_without_pgvector(server_without_pgvector: str, tmp_path: Path) -> None:
    url = server_without_pgvector
    line = one_line_error(hq("db", "migrate", env={"HQ_DATABASE_URL": url}))
    assert "the pgvector extension is not installed on this PostgreSQL" in line
    assert "apt install postgresql-" in line and "-pgvector" in line
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)

    # The bundle stops at its first file with the same advice, and leaves nothing behind.
    script = tmp_path / "bundle.sql"
    assert hq("db", "bundle", "-o", str(script)).returncode == 0
    result = psql_file(url, script)
    assert result.returncode != 0 and "the pgvector extension is not installed" in result.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_type WHERE typname = 'task_status'").fetchone() == (0,)


def test_migration_changed_after_it_was_applied(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {LEDGER} SET checksum = repeat('0', 64) WHERE name = '005_crm.sql'")
        before = conn.execute(f"SELECT name, checksum FROM {LEDGER} ORDER BY name").fetchall()
    line = one_line_error(hq("db", "migrate", env={"HQ_DATABASE_URL": db_url}))
    assert "005_crm.sql" in line and "changed after it was applied" in line and "new migration" in line
    with psycopg.connect(db_url) as conn:
        assert conn.execute(f"SELECT name, checksum FROM {LEDGER} ORDER BY name").fetchall() == before
    check = hq("db", "check", env={"HQ_DATABASE_URL": db_url})
    assert check.returncode == 1 and "005_crm.sql (changed since applied)" in check.stdout
    # After an upgrade of HQ's own files: --reapply runs them again and records the new checksums.
    again = hq("db", "migrate", "--reapply", env={"HQ_DATABASE_URL": db_url})
    assert again.returncode == 0, again.stderr
    assert hq("db", "check", env={"HQ_DATABASE_URL": db_url}).returncode == 0


@pytest.mark.slow
def test_serve_on_the_embedded_database(tmp_path: Path) -> None:
    """What the README's run command does: a service on a fresh embedded database that
    passes `db check`, and that stops its database when it stops."""
    port = free_port()
    env = {"HQ_DATA_DIR": str(tmp_path / "data"), "HQ_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "knowledge", "serve"],
        env=environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert health is not None, proc.stdout.read() if proc.stdout else ""
        assert health["status"] == "ok" and health["schema"] == {"complete": True, "missing": []}
        assert health["keyword_search"] == "bm25"

        check = hq("db", "check", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert postmaster_pid(tmp_path / "data" / "pg") is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert postmaster_pid(tmp_path / "data" / "pg") is None
    output = proc.stdout.read() if proc.stdout else ""
    assert "Uvicorn running on" in output
    assert "GET /healthz" not in output  # no access log unless HQ_ACCESS_LOG=1
