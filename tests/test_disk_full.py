"""A full disk: writes that need space answer 507 "disk full" and write nothing, /readyz says
503 naming the disk, searches keep answering; once space is freed, documents are created and
indexed again without a restart. And the worse case PostgreSQL has: a WAL segment it cannot
create is a PANIC, after which the server will not start until space is freed; the API
answers 503 meanwhile and serves again once the server is restarted (the watchdog's job).

The database lives on a tmpfs of its own, filled by a file beside the data directory.
Mounting needs root: without it these tests are skipped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from embeddings.model import FakeEmbedder
from knowledge.api import create_app
from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid
from knowledge.db.migrations import migrate
from knowledge.ingest.worker import Worker
from knowledge.search.setup import forget_setup

from .apiclient import local_client, rows_snapshot

SIZE = "128m"  # a migrated cluster takes ~45 MB, and one more WAL segment 16 MB
TABLES = ("documents", "knowledge_chunks", "assets")


def _mount(path: Path) -> None:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs to fill ({done.stderr.strip() or done.returncode}): the disk-full tests need root"
        )


def _fill(path: Path) -> None:
    """Write `path` until the disk has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == 28, e  # ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A migrated embedded server alone on a tmpfs, with one indexed document ('Refunds')
    and the fake embedder's model active; and where to put the filler."""
    mount = tmp_path / "disk"
    _mount(mount)
    server = EmbeddedPostgres(mount)
    filler = mount / "filler"
    try:
        url = server.start()
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            migrate(conn)
            conn.execute(
                "INSERT INTO documents (title, content_text) VALUES "
                "('Refunds', 'Customers get their refunds within 30 days.')"
            )
            Worker(url, FakeEmbedder()).run(once=True)
            conn.execute("UPDATE embedding_models SET is_active = (name = 'fake-hash-384'), activated_at = now()")
            conn.execute("CHECKPOINT")  # which also makes the next WAL segment
        forget_setup()
        yield server, filler
    finally:
        filler.unlink(missing_ok=True)  # the server cannot even stop on a full disk
        if postmaster_pid(server.pgdata) is None:
            server.restart()
        server.stop()
        forget_setup()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _big_document(word: str) -> dict[str, Any]:
    """~260 kB that does not compress: new pages of the TOAST table, which a full disk refuses."""
    return {
        "title": f"Handbook {word}",
        "content_text": f"{word} " + " ".join(secrets.token_urlsafe(12) for _ in range(16000)),
    }


def _components(client: TestClient) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    r = client.get("/readyz")
    body = r.json()
    return r.status_code, {c["name"]: c for c in body["components"]}, {**body, **dict(r.headers)}


def test_a_full_disk_refuses_writes_with_507_and_recovers_when_space_is_freed(
    small_disk: tuple[EmbeddedPostgres, Path],
) -> None:
    server, filler = small_disk
    postmaster = postmaster_pid(server.pgdata)
    with local_client(create_app(server.url)) as client, psycopg.connect(server.url, autocommit=True) as conn:
        assert client.get("/readyz").status_code == 200
        before = rows_snapshot(conn, TABLES)

        _fill(filler)
        r = client.post("/documents", json=_big_document("tangerine"))
        assert r.status_code == 507, r.text
        assert r.json()["detail"].startswith("disk full: ") and "No space left on device" in r.json()["detail"]
        assert "nothing was written" in r.json()["detail"] and r.headers["retry-after"] == "30"
        assert rows_snapshot(conn, TABLES) == before  # nothing half-written

        status, parts, body = _components(client)
        assert status == 503 and body["retry-after"] == "30"
        assert parts["disk"]["state"] == "failed" and parts["disk"]["detail"].startswith("disk full")
        assert parts["database"]["state"] == "ok" and parts["schema"]["state"] == "ok"
        assert body["detail"].startswith("not ready: disk failed (disk full")
        full_since = parts["disk"]["since"]

        hits = client.get("/search", params={"q": "refunds"})
        assert hits.status_code == 200 and hits.json()["hits"][0]["title"] == "Refunds"
        assert client.get("/healthz").status_code == 200
        assert postmaster_pid(server.pgdata) == postmaster  # an ERROR, not a PANIC

        filler.unlink()
        status, parts, _ = _components(client)
        assert status == 200 and parts["disk"]["state"] == "ok" and parts["disk"]["since"] > full_since
        created = client.post("/documents", json=_big_document("tangerine"))
        assert created.status_code == 201, created.text
        assert Worker(server.url, FakeEmbedder()).run(once=True).indexed == 1
        hits = client.get("/search", params={"q": "tangerine", "mode": "keyword"}).json()["hits"]
        assert [h["title"] for h in hits] == ["Handbook tangerine"]
    assert postmaster_pid(server.pgdata) == postmaster  # no restart


def test_a_wal_segment_that_cannot_be_created_stops_the_server_until_space_is_freed(
    small_disk: tuple[EmbeddedPostgres, Path],
) -> None:
    """PostgreSQL PANICs when it cannot create a WAL segment, and its crash recovery then
    fails for the same reason: the server stays down. The API answers 503, never 500; after
    space is freed and the server started again, it serves without a restart of its own, and
    nothing committed is lost."""
    server, filler = small_disk
    with local_client(create_app(server.url)) as client:
        assert client.post("/documents", json={"title": "Committed", "content_text": "Kept."}).status_code == 201
        _fill(filler)
        with psycopg.connect(server.url, autocommit=True) as conn, pytest.raises(psycopg.Error):
            for _ in range(8):  # each switch starts a new segment: the next write needs a file
                conn.execute("UPDATE workspace SET name = name WHERE id = 1")
                conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 10
        while postmaster_pid(server.pgdata) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert postmaster_pid(server.pgdata) is None
        assert 'PANIC:  could not write to file "pg_wal/' in (server.pgdata / "log").read_text()

        for attempt in (
            client.get("/search", params={"q": "kept"}),
            client.post("/documents", json={"title": "Lost", "content_text": "x"}),
        ):
            assert attempt.status_code == 503, attempt.text
        status, parts, _ = _components(client)
        assert status == 503 and parts["database"]["state"] == "failed"

        filler.unlink()
        assert server.restart()  # what the embedded server's watchdog does in `serve`
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.get("/readyz").status_code == 200
        listed = client.get("/documents").json()
        assert sorted(d["title"] for d in listed["data"]) == ["Committed", "Refunds"]
        assert client.post("/documents", json={"title": "After", "content_text": "Back."}).status_code == 201
