"""Fixtures: one embedded PostgreSQL for the session, a migrated template database, and a
fresh copy of it for every test that asks for `db_url` or `conn`.

Set HQ_TEST_DATABASE_URL (a superuser URL) to run the suite against another server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid
from knowledge.db.migrations import load_migrations, migrate

TEMPLATE = "hq_test_template"


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


class Server:
    """The test server: make and drop databases on it."""

    def __init__(self, admin_url: str, embedded: EmbeddedPostgres | None = None) -> None:
        self.admin_url = admin_url
        self.embedded = embedded  # None when HQ_TEST_DATABASE_URL names another server

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def create_db(self, template: str | None = None) -> str:
        name = f"hq_test_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            tpl = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{tpl}")
        return name

    def drop_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, dbname: str) -> str:
        return with_dbname(self.admin_url, dbname)


def _reap_orphans(root: Path) -> None:
    """Stop test servers left running by killed test sessions under `root`: joining and
    releasing one stops it when no live process uses it (a running session keeps its own).
    Only pytest's own numbered session directories are looked at: a directory given with
    --basetemp may be another run's, started a moment ago."""
    for pid_file in root.glob("pytest-*/embedded*/pg/postmaster.pid"):
        if postmaster_pid(pid_file.parent) is not None:
            server = EmbeddedPostgres(pid_file.parent.parent)
            server.start()
            server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    external = os.environ.get("HQ_TEST_DATABASE_URL")
    if external:
        yield Server(external)
        return
    _reap_orphans(tmp_path_factory.getbasetemp().parent)
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("embedded")))
    server.start()
    try:
        yield Server(with_dbname(server.url, "postgres"), server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    """A database with every migration applied, copied for each test."""
    pg_server.drop_db(TEMPLATE)
    with pg_server.admin() as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(pg_server.url(TEMPLATE), autocommit=True) as conn:
        migrate(conn, load_migrations())
    yield TEMPLATE
    pg_server.drop_db(TEMPLATE)


def _own_bm25_index(url: str) -> None:
    """Give the copy's BM25 index an OID of its own. pg_textsearch keeps each index's state in
    shared memory keyed by the index OID alone, and a database copied from a template has the
    template's OIDs: two copies would read each other's postings (timescale/pg_textsearch#464:
    "could not read blocks ... read only 0 of 8192 bytes")."""
    with psycopg.connect(url, autocommit=True) as conn:
        definition = conn.execute(
            "SELECT pg_get_indexdef('knowledge_chunks_bm25_idx'::regclass)"
            " WHERE to_regclass('knowledge_chunks_bm25_idx') IS NOT NULL"
        ).fetchone()
        if definition:
            conn.execute("DROP INDEX knowledge_chunks_bm25_idx")
            conn.execute(definition[0])


@pytest.fixture
def db_url(pg_server: Server, template_db: str) -> Iterator[str]:
    """URL of a fresh, fully migrated database of this test's own."""
    name = pg_server.create_db(template=template_db)
    try:
        _own_bm25_index(pg_server.url(name))
        yield pg_server.url(name)
    finally:
        pg_server.drop_db(name)


@pytest.fixture
def empty_db_url(pg_server: Server) -> Iterator[str]:
    """URL of a fresh, empty database of this test's own."""
    name = pg_server.create_db()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_db(name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection (rows as dicts) to this test's migrated database."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture
def connect(db_url: str) -> Iterator[Any]:
    """A factory of further autocommit connections to this test's database, for concurrency tests."""
    opened: list[psycopg.Connection[Any]] = []

    def _connect() -> psycopg.Connection[dict[str, Any]]:
        c = psycopg.connect(db_url, autocommit=True, row_factory=dict_row)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()
