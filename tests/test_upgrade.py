"""Upgrades: a database migrated by an earlier release of HQ, by that release's own code, is
upgraded by today's `db migrate` and `serve` without a flag, to the schema of a fresh install,
with its data kept and searchable.

The earlier releases are taken from this repository's history (`git archive`), so the test
runs the code that really shipped: its runner, its ledger, its worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from knowledge.db.migrations import (
    applied_migrations,
    current_release,
    database_release,
    load_migrations,
    load_releases,
    migrate,
    migrations_dir,
)
from knowledge.db.schema_check import check_database

from .commands import free_port
from .conftest import Server
from .pgtools import schema_dump

ROOT = Path(__file__).resolve().parents[1]
FIRST = "6b897b5"  # the first landed schema: migrations and runner only
BEFORE_UPGRADE_FIX = "8e75917"  # 2026-12-01: its database made later releases refuse to start


def _release_tree(commit: str, dest: Path) -> Path:
    """The package as it was at `commit`, extracted into `dest`."""
    if (
        shutil.which("git") is None
        or subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
        ).returncode
        != 0
    ):
        pytest.skip(f"needs this repository's history (commit {commit}); a shallow copy lacks it")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "knowledge", "embeddings", "db"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _run_old(tree: Path, url: str, code: str) -> None:
    """Run `code` with the old release's packages first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HQ_DATABASE_URL": url, "HQ_EMBEDDER": "fake"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _old_database(tree: Path, url: str, *, index: bool) -> None:
    """Migrate with the old runner; add documents; with `index`, embed them with the old worker."""
    _run_old(
        tree,
        url,
        "import os, psycopg, knowledge.migrations as m; "
        "m.migrate(psycopg.connect(os.environ['HQ_DATABASE_URL'], autocommit=True))",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        for i, (title, text) in enumerate(DOCUMENTS):
            conn.execute(
                "INSERT INTO documents (title, content_format, content_text, tags) VALUES (%s, 'markdown', %s, %s)",
                [title, text, [f"upgrade-{i}"]],
            )
    if index:
        _run_old(tree, url, "import sys; from knowledge.cli import main; sys.exit(main(['worker', '--once']))")


DOCUMENTS = [
    ("Refund policy", "Refunds are issued within fourteen days of a cancelled subscription."),
    ("Onboarding checklist", "Every new agent reads the escalation matrix before its first shift."),
    ("Quarterly planning", "Pipeline reviews happen on the first Monday of each quarter."),
]


def _rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, title, content_text, tags FROM documents ORDER BY title").fetchall()


def _fresh_dump(pg_server: Server) -> str:
    name = pg_server.create_db()
    try:
        url = pg_server.url(name)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        return schema_dump(url)
    finally:
        pg_server.drop_db(name)


def test_the_newest_release_is_these_files() -> None:
    """releases.json ends with the checksums of the files as they are: a change to a migration
    file is a new release, recorded there, so that databases of the one before can upgrade."""
    releases = load_releases()
    files = {m.name: m.checksum for m in load_migrations()}
    newest = releases[-1].files
    changed = sorted(name for name in files if newest.get(name) != files[name])
    assert not changed, (
        f"{', '.join(changed)} changed since release {releases[-1].number}: add a release to "
        f"{migrations_dir().name}/releases.json with these checksums: {json.dumps(files, indent=1)}"
    )
    assert newest.keys() == files.keys()
    assert [r.number for r in releases] == list(range(1, len(releases) + 1))
    assert current_release(load_migrations(), releases) == releases[-1].number


@pytest.mark.parametrize("commit", [FIRST, BEFORE_UPGRADE_FIX])
def test_migrate_upgrades_an_earlier_release_to_a_fresh_install(
    commit: str, pg_server: Server, empty_db_url: str, tmp_path: Path
) -> None:
    tree = _release_tree(commit, tmp_path / "release")
    _old_database(tree, empty_db_url, index=False)
    before = _rows(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        state = database_release(applied_migrations(conn), load_migrations(), load_releases())
        assert state.release is not None and state.release.commit == commit
        assert state.upgradable and not state.edited
        assert not check_database(conn).complete  # "upgrade from release N" until migrated

        result = migrate(conn)  # no flag

        assert result.upgraded_from == state.release.label
        assert result.applied == [m.name for m in load_migrations()]
        assert check_database(conn).complete
        after = database_release(applied_migrations(conn), load_migrations(), load_releases())
        assert after.current and after.release is not None
        assert after.release.number == load_releases()[-1].number
        assert migrate(conn).applied == []  # and then nothing more to do
    assert _rows(empty_db_url) == before
    assert schema_dump(empty_db_url) == _fresh_dump(pg_server)


def test_a_file_edited_after_it_was_applied_is_still_reported(empty_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        migrate(conn, load_migrations(folder))
        edited = folder / "012_audit_notifications.sql"
        edited.write_text(edited.read_text() + "\n-- a local change\n")
        with pytest.raises(Exception, match=r"012_audit_notifications\.sql .*neither text is one of a release"):
            migrate(conn, load_migrations(folder))
        state = database_release(applied_migrations(conn), load_migrations(folder), load_releases())
        assert state.edited == ["012_audit_notifications.sql"] and not state.upgradable


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    """A function starting `hq-knowledge serve` on a database; the processes are stopped after."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str) -> str:
        port = free_port()
        env = {**os.environ, "HQ_DATABASE_URL": url, "HQ_EMBEDDER": "fake"}
        log = open(tmp_path / f"serve-{port}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "knowledge", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(
                    f"serve exited with {proc.returncode}: " + (tmp_path / f"serve-{port}.log").read_text()[-3000:]
                )
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve did not answer within 120 s")

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize(("commit", "indexed_by_old_worker"), [(FIRST, False), (BEFORE_UPGRADE_FIX, True)])
def test_serve_starts_on_a_database_of_an_earlier_release(
    commit: str, indexed_by_old_worker: bool, empty_db_url: str, tmp_path: Path, served: Any
) -> None:
    tree = _release_tree(commit, tmp_path / "release")
    _old_database(tree, empty_db_url, index=indexed_by_old_worker)
    if indexed_by_old_worker:
        with psycopg.connect(empty_db_url) as conn:
            assert conn.execute("SELECT count(*) FROM documents WHERE embedding_status = 'indexed'").fetchone() == (
                len(DOCUMENTS),
            )

    base = served(empty_db_url)

    check = subprocess.run(
        [sys.executable, "-m", "knowledge", "db", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HQ_DATABASE_URL": empty_db_url},
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"database at release {load_releases()[-1].number}" in check.stdout
    deadline = time.monotonic() + 60
    for i, (title, _) in enumerate(DOCUMENTS):
        while True:
            hits = httpx.get(f"{base}/search", params={"q": title, "tags_any": f"upgrade-{i}"}, timeout=30).json()
            if any(h["title"] == title for h in hits["hits"]):
                break
            assert time.monotonic() < deadline, f"{title!r} not found after the upgrade: {hits}"
            time.sleep(0.3)
