"""Read replicas against a real primary (the session's embedded server) and a real streaming
standby of it (pg_basebackup -R): reads go to the standby and writes to the primary, a lagging
or dead standby is skipped without a 5xx, and a write's WAL position makes the writer's next
reads see it (knowledge.db.replicas, knowledge.api.reads)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from mcp_types import CallToolResult
from psycopg.conninfo import conninfo_to_dict

from embeddings.model import FakeEmbedder
from knowledge.agents.mcp_server import build_mcp_server
from knowledge.api import create_app
from knowledge.api.deps import ReadConn
from knowledge.client import AsyncKnowledgeClient, KnowledgeClient
from knowledge.config import Settings
from knowledge.db.replicas import ReadRouter
from knowledge.errors import InvalidInput, NotFound
from knowledge.ingest.worker import Worker
from knowledge.lsn import format_lsn, parse_lsn
from knowledge.search.setup import forget_setup

from .apiclient import LOCAL, local_client
from .conftest import Server
from .fleet import Standby, running_standby

PAUSE = "SELECT pg_wal_replay_pause()"
RESUME = "SELECT pg_wal_replay_resume()"


@pytest.fixture(scope="module")
def standby(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standby]:
    with running_standby(pg_server.embedded, tmp_path_factory) as s:
        yield s


@pytest.fixture
def replica(standby: Standby, db_url: str) -> Iterator[str]:
    """The standby's URL of this test's database, everything replayed; replaying again after."""
    if not standby.running:
        standby.start()
    dbname = str(conninfo_to_dict(db_url)["dbname"])
    standby.wait_until_replayed(db_url, dbname)
    yield standby.url(dbname)
    if standby.running:
        standby.replay(dbname, RESUME)  # before the database is dropped on the primary


def _dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def _replica_state(client: TestClient) -> dict[str, Any]:
    replicas = client.get("/readyz").json()["replicas"]
    assert len(replicas) == 1, replicas
    return dict(replicas[0])


def _wait_for(client: TestClient, state: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (replica := _replica_state(client))["state"] != state:
        assert time.monotonic() < deadline, f"the replica is not {state}: {replica}"
        time.sleep(0.05)
    return replica


@contextmanager
def _served(db_url: str, replica_url: str, *, max_lag: float = 30.0) -> Iterator[TestClient]:
    """The API reading from `replica_url`, once the replica is in use."""
    with local_client(create_app(db_url, read_urls=[replica_url], read_max_lag=max_lag)) as client:
        _wait_for(client, "ok")
        yield client


def _keyword_path(client: TestClient, **headers: str) -> str:
    """Which server answered a search: the standby's keyword path is sql-bm25 (pg_textsearch 1.0's
    index does not reach standbys), the primary's bm25."""
    r = client.get("/search", params={"q": "replicas", "mode": "keyword"}, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["keyword_path"])


def _boot_titles(client: TestClient, **headers: str) -> list[str]:
    r = client.get("/boot/closer", headers=headers)
    assert r.status_code == 200, r.text
    return [item["title"] for item in r.json()["items"]]


def test_reads_go_to_the_standby_writes_to_the_primary_and_a_write_position_reads_it_back(
    db_url: str, replica: str, standby: Standby
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO agents (slug, name) VALUES ('closer', 'Closer')")
    standby.wait_until_replayed(db_url, _dbname(db_url))
    with _served(db_url, replica) as client:
        assert _keyword_path(client) == "sql-bm25"
        standby.replay(_dbname(db_url), PAUSE)
        r = client.post(
            "/documents", json={"title": "Replica note", "content_text": "Replicas replay WAL.", "tags": ["boot:all"]}
        )
        assert r.status_code == 201, r.text
        doc_id, lsn = r.json()["id"], r.headers["HQ-Write-LSN"]
        assert parse_lsn(lsn) is not None
        cookie = r.headers["set-cookie"]
        assert (
            cookie.startswith(f"hq_write_lsn={lsn};")
            and "SameSite=Strict" in cookie
            and "HttpOnly" in cookie
            and "Max-Age=60" in cookie
        )
        with psycopg.connect(db_url) as conn:  # written on the primary
            assert conn.execute("SELECT title FROM documents WHERE id = %s", [doc_id]).fetchone() == ("Replica note",)

        client.cookies.clear()
        # Without the position the standby answers, and it has not replayed the write yet.
        assert client.get(f"/documents/{doc_id}").status_code == 404
        assert _keyword_path(client) == "sql-bm25"
        assert _boot_titles(client) == []
        # With it, in the header or in the cookie, the primary does.
        assert client.get(f"/documents/{doc_id}", headers={"HQ-Write-LSN": lsn}).status_code == 200
        assert _keyword_path(client, **{"HQ-Write-LSN": lsn}) == "bm25"
        assert _boot_titles(client, **{"HQ-Write-LSN": lsn}) == ["Replica note"]
        client.cookies.set("hq_write_lsn", lsn)
        assert client.get(f"/documents/{doc_id}").status_code == 200
        client.cookies.clear()
        # A value that is not a WAL position counts for nothing.
        assert client.get(f"/documents/{doc_id}", headers={"HQ-Write-LSN": "soon"}).status_code == 404

        # Once the standby has replayed the write, reads with its position go to the standby again.
        standby.replay(_dbname(db_url), RESUME)
        deadline = time.monotonic() + 10
        while _keyword_path(client, **{"HQ-Write-LSN": lsn}) != "sql-bm25":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/documents/{doc_id}").status_code == 200


def test_a_standby_lagging_more_than_the_limit_is_skipped_and_said_so(
    db_url: str, replica: str, standby: Standby, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="hq_knowledge.db")
    with _served(db_url, replica, max_lag=1.0) as client, psycopg.connect(db_url, autocommit=True) as conn:
        standby.replay(_dbname(db_url), PAUSE)
        doc_id = conn.execute(
            "INSERT INTO documents (title, content_text) VALUES ('Lag', 'x') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        lagging = _wait_for(client, "lagging")
        assert lagging["lag_seconds"] > 1.0 and "HQ_READ_MAX_LAG" in lagging["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["degraded"] is True
        assert ready.json()["detail"].startswith("ready, degraded: replica postgresql://postgres@/")
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and health["replicas"][0]["state"] == "lagging"
        # Reads go to the primary meanwhile.
        assert client.get(f"/documents/{doc_id}").status_code == 200
        assert _keyword_path(client) == "bm25"

        standby.replay(_dbname(db_url), RESUME)
        back = _wait_for(client, "ok")
        assert back["lag_seconds"] == 0 and parse_lsn(back["replayed_lsn"]) is not None
        assert _keyword_path(client) == "sql-bm25"
    messages = [r.getMessage() for r in caplog.records if r.name == "hq_knowledge.db"]
    assert len([m for m in messages if " is lagging: " in m]) == 1, messages
    assert len([m for m in messages if " is back: " in m]) == 1, messages


def test_clients_send_the_position_of_their_last_write_and_read_it_back(
    db_url: str, replica: str, standby: Standby
) -> None:
    standby.replay(_dbname(db_url), PAUSE)
    with _served(db_url, replica) as client:
        http = cast(httpx.Client, client)  # the TestClient speaks httpx.Client's interface
        writer = KnowledgeClient(http=http)
        saved = writer.save_document("Own write", "Written on the primary, read back at once.")
        assert writer.write_lsn is not None and parse_lsn(writer.write_lsn) is not None
        client.cookies.clear()  # the transport kept the cookie too: this is about the header
        assert writer.get_document(saved.id).title == "Own write"
        with pytest.raises(NotFound):  # a client that did not write reads the standby
            KnowledgeClient(http=http).get_document(saved.id)

        async def async_round_trip() -> tuple[str | None, str]:
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as http:
                hq = AsyncKnowledgeClient(http=http)
                again = await hq.save_document("Async write", "Also read back at once.")
                http.cookies.clear()
                return hq.write_lsn, (await hq.get_document(again.id)).title

        position, title = asyncio.run(async_round_trip())
        assert title == "Async write" and (parse_lsn(position) or 0) > (parse_lsn(writer.write_lsn) or 0)


def test_a_read_whose_standby_dies_mid_request_runs_again_on_the_primary(
    db_url: str, replica: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    app = create_app(db_url, read_urls=[replica])
    ran_on: list[bool] = []

    def probe(conn: ReadConn) -> dict[str, bool]:
        standby = _in_recovery(conn)
        ran_on.append(standby)
        if standby:  # the standby goes away under this request: its connection is terminated
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return {"standby": standby}

    app.add_api_route("/probe", probe, methods=["GET"])
    with local_client(app) as client:
        _wait_for(client, "ok")
        r = client.get("/probe")
        assert r.status_code == 200 and r.json() == {"standby": False} and ran_on == [True, False]
        assert "GET /probe: its replica failed; answering from the primary" in caplog.text

        # The same for work run through the router (search, the MCP search tool).
        _wait_for(client, "ok")
        router: ReadRouter = client.app.state.reads  # type: ignore[attr-defined]
        ran_on.clear()

        def work(conn: psycopg.Connection[Any]) -> bool:
            ran_on.append(_in_recovery(conn))
            if ran_on == [True]:
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return ran_on[-1]

        assert router.run(work) is False and ran_on == [True, False]


def _in_recovery(conn: psycopg.Connection[Any]) -> bool:
    return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]


def test_a_stopped_standby_sends_reads_to_the_primary_without_a_5xx(
    db_url: str, replica: str, standby: Standby, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="hq_knowledge.db")
    with _served(db_url, replica) as client:
        doc_id = client.post("/documents", json={"title": "Replicas", "content_text": "x"}).json()["id"]
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO agents (slug, name) VALUES ('closer', 'Closer')")
        standby.wait_until_replayed(db_url, _dbname(db_url))
        client.cookies.clear()
        stop = threading.Timer(0.5, standby.stop, args=("immediate",))
        stop.start()
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for path, params in (
                ("/search", {"q": "replicas", "mode": "keyword"}),
                (f"/documents/{doc_id}", {}),
                ("/document-folders", {}),
                ("/tags", {}),
                ("/overview", {}),
                ("/boot/closer", {}),
                ("/documents", {}),
            ):
                r = client.get(path, params=params)
                answers.append((r.status_code, r.json()["keyword_path"] if path == "/search" else ""))
        stop.join()
        assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:5]
        paths = [path for _, path in answers if path]
        assert paths[0] == "sql-bm25" and paths[-1] == "bm25"
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["degraded"] is True
        assert ready.json()["replicas"][0]["state"] == "down"
        assert client.get("/healthz").json()["status"] == "degraded"

        standby.start()  # crash recovery, then streaming again: read from once more
        _wait_for(client, "ok", timeout=60)
    messages = [r.getMessage() for r in caplog.records if r.name == "hq_knowledge.db"]
    assert len([m for m in messages if " is down: " in m]) == 1, messages
    assert len([m for m in messages if " is back: " in m]) == 1, messages


def test_the_mcp_search_tool_reads_the_standby(conn: Any, db_url: str, replica: str, standby: Standby) -> None:
    conn.execute("INSERT INTO documents (title, content_text) VALUES ('Standby search', 'Replicas replay WAL.')")
    Worker(db_url, FakeEmbedder()).run(once=True)
    with conn.transaction():
        conn.execute("UPDATE embedding_models SET is_active = (name = 'fake-hash-384')")
    forget_setup()
    standby.wait_until_replayed(db_url, _dbname(db_url))
    with _served(db_url, replica) as client:
        app: Any = client.app
        server = build_mcp_server(lambda: app.state.pool, read_router=lambda: app.state.reads)

        def search() -> str:
            result = asyncio.run(server.call_tool("search_knowledge", {"query": "replicas replay"}))
            assert isinstance(result, CallToolResult)
            return "\n".join(getattr(block, "text", "") for block in result.content)

        assert "Standby search" in search()
        standby.replay(_dbname(db_url), PAUSE)
        conn.execute("UPDATE documents SET title = 'Renamed on the primary'")
        assert "Standby search" in search()  # the standby, which has not replayed the rename
        standby.replay(_dbname(db_url), RESUME)
        standby.wait_until_replayed(db_url, _dbname(db_url))
        assert "Renamed on the primary" in search()


def test_without_replicas_nothing_changes(db_url: str) -> None:
    with local_client(create_app(db_url)) as client:
        r = client.post("/documents", json={"title": "Single pool", "content_text": "x"})
        assert r.status_code == 201 and "HQ-Write-LSN" not in r.headers and "set-cookie" not in r.headers
        ready = client.get("/readyz").json()
        assert ready["replicas"] == [] and ready["degraded"] is False and ready["detail"] == "ready"
        assert client.get("/healthz").json()["replicas"] == []


def test_read_replica_settings() -> None:
    urls = Settings.from_env(
        {
            "HQ_READ_DATABASE_URL": " postgresql://r:pw@a:5432,b:5433/hq, postgres://r@c/hq\npostgresql://d/hq",
            "HQ_READ_MAX_LAG": "0.5",
        }
    )
    assert urls.read_database_urls == ("postgresql://r:pw@a:5432,b:5433/hq", "postgres://r@c/hq", "postgresql://d/hq")
    assert urls.read_max_lag == 0.5
    assert Settings.from_env({}).read_database_urls == () and Settings.from_env({}).read_max_lag == 5.0
    with pytest.raises(
        InvalidInput,
        match=r"^HQ_READ_DATABASE_URL: 'mysql://r:\*\*\*@a/hq' is not a PostgreSQL URL; "
        r"give one or more postgresql://",
    ):
        Settings.from_env({"HQ_READ_DATABASE_URL": "mysql://r:secret@a/hq"})
    for value in ("0", "-1", "soon", "inf"):
        with pytest.raises(InvalidInput, match=r"^HQ_READ_MAX_LAG must be a number of seconds greater than 0"):
            Settings.from_env({"HQ_READ_MAX_LAG": value})
    assert format_lsn(parse_lsn("16/B374D848") or 0) == "16/B374D848"


def test_a_bad_replica_url_is_one_line_naming_the_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "knowledge", "db", "url"],
        capture_output=True,
        text=True,
        env={"HQ_READ_DATABASE_URL": "db.example:5432", "PATH": ""},
        timeout=60,
        check=False,
    )
    assert out.returncode == 1 and out.stderr.startswith("error: HQ_READ_DATABASE_URL: 'db.example:5432' "), out
    assert "Traceback" not in out.stderr
