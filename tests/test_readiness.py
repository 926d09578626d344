"""Health that tells the truth: /healthz answers 200 while the process runs and says
"degraded" when a part of it is broken; /readyz answers 200 only when every required part
is ok (database, schema, disk, the worker when this process runs one, the embedded server
when it has one), else 503 with Retry-After naming what is not; `hq-knowledge status`
prints the same and exits 1 when not ready."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import AccessPolicy, create_app
from knowledge.cli.main import main
from knowledge.db.readiness import check_readiness
from knowledge.errors import DatabaseUnavailable
from knowledge.health import Health

from .apiclient import local_client
from .commands import free_port
from .mcp_clients import http_service


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def client(db_url: str, health: Health) -> Iterator[TestClient]:
    """Keys required: /healthz and /readyz answer without one."""
    with local_client(
        create_app(db_url, health=health, access=AccessPolicy.for_bind("127.0.0.1", 8765, require_keys=True))
    ) as c:
        yield c


def _by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in body["components"]}


def test_ready_without_a_worker_in_this_process(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and body["detail"] == "ready"
    parts = _by_name(body)
    assert [c["name"] for c in body["components"]] == ["database", "schema", "disk", "worker"]
    for name in ("database", "schema", "disk"):
        assert parts[name]["state"] == "ok" and parts[name]["required"] is True
        datetime.fromisoformat(parts[name]["since"])
    assert "PostgreSQL" in parts["database"]["detail"]
    assert parts["worker"] == {
        "name": "worker",
        "state": "not run",
        "required": False,
        "since": None,
        "detail": parts["worker"]["detail"],
    }
    assert "--no-worker" in parts["worker"]["detail"]
    assert client.get("/status").status_code == 401  # the counts still need a key


def test_since_moves_only_when_the_state_changes(client: TestClient, health: Health) -> None:
    first = _by_name(client.get("/readyz").json())
    time.sleep(0.01)
    second = _by_name(client.get("/readyz").json())
    assert first["database"]["since"] == second["database"]["since"]
    health.set("worker", "ok", "waiting for work", stale_after=60)
    health.beat("worker")
    since = _by_name(client.get("/readyz").json())["worker"]["since"]
    health.set("worker", "recovering", "the database is unavailable: retrying in 2 s")
    now = _by_name(client.get("/readyz").json())["worker"]
    assert now["state"] == "recovering" and now["since"] > since


def test_a_failed_worker_makes_it_not_ready_but_still_alive(client: TestClient, health: Health) -> None:
    health.set("worker", "ok", "waiting for work", stale_after=60)
    health.beat("worker")
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"

    health.set("worker", "failed", "OperationalError: connection refused")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    body = r.json()
    assert body["ready"] is False
    assert body["detail"] == "not ready: worker failed (OperationalError: connection refused)"
    assert _by_name(body)["worker"]["required"] is True
    live = client.get("/healthz")
    assert live.status_code == 200
    assert live.json()["status"] == "degraded"
    assert live.json()["schema"] == {"complete": True, "missing": []}
    assert [(c["name"], c["state"]) for c in live.json()["components"]] == [("worker", "failed")]


def test_a_worker_whose_loop_stopped_going_round_is_stuck(client: TestClient, health: Health) -> None:
    health.set("worker", "ok", "embedding 64 records", stale_after=0.05)
    health.beat("worker")
    time.sleep(0.1)
    r = client.get("/readyz")
    assert r.status_code == 503
    worker = _by_name(r.json())["worker"]
    assert worker["state"] == "stuck" and "last went round" in worker["detail"]
    assert client.get("/healthz").json()["status"] == "degraded"
    health.beat("worker")
    assert client.get("/readyz").status_code == 200


def test_the_embedded_server_watchdog_counts(client: TestClient, health: Health) -> None:
    health.set("database_server", "recovering", "the postmaster died: restarting")
    r = client.get("/readyz")
    assert r.status_code == 503 and "database_server recovering" in r.json()["detail"]
    health.set("database_server", "ok", "running")
    assert client.get("/readyz").status_code == 200
    health.set("reembed", "failed", "job 3 failed")  # listed, not required
    r = client.get("/readyz")
    assert r.status_code == 200 and _by_name(r.json())["reembed"]["required"] is False


def test_an_incomplete_schema_is_not_ready(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")  # what the service's connections need; nothing else
    with local_client(create_app(empty_db_url)) as c:
        r = c.get("/readyz")
        live = c.get("/healthz")
    assert r.status_code == 503
    schema = _by_name(r.json())["schema"]
    assert schema["state"] == "failed" and "hq-knowledge db migrate" in schema["detail"]
    assert live.status_code == 200 and live.json()["status"] == "degraded"
    assert live.json()["schema"]["complete"] is False and live.json()["keyword_search"] is None


def test_an_unreachable_database_fails_the_database_and_leaves_the_rest_unknown() -> None:
    def down() -> contextlib.AbstractContextManager[Any]:
        raise DatabaseUnavailable("the database is unavailable: connection refused")

    readiness = check_readiness(down, Health())
    states = {c.name: (c.state, c.detail) for c in readiness.components}
    assert not readiness.ready
    assert states["database"] == ("failed", "the database is unavailable: connection refused")
    assert states["schema"][0] == states["disk"][0] == "unknown"
    assert readiness.summary.startswith("not ready: database failed (the database is unavailable")


def test_the_openapi_document_says_readyz_may_answer_503(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    readyz = schema["paths"]["/readyz"]["get"]
    assert {"200", "503"} <= set(readyz["responses"]) and readyz["security"] == []
    assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_status_against_the_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HQ_DATABASE_URL", db_url)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "ready"
    assert "disk" in out and "unknown: ask the running service with --url" in out
    assert "queue 0, failed 0, passages 0" in out and "model all-MiniLM-L6-v2" in out
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is True and report["counts"]["keyword_path"] in ("bm25", "ts_rank_cd")
    assert _by_name(report)["worker"]["state"] == "unknown"


def test_status_of_a_running_service(db_url: str, health: Health, capsys: pytest.CaptureFixture[str]) -> None:
    health.set("worker", "ok", "waiting for work", stale_after=60)
    health.beat("worker")
    with http_service(db_url, health=health) as base:
        httpx.post(f"{base}/documents", json={"title": "Refunds", "content_text": "30 days."}).raise_for_status()
        assert main(["status", "--url", base]) == 0
        out = capsys.readouterr().out
        health.set("worker", "failed", "the embedder could not be loaded")
        assert main(["status", "--url", base, "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert main(["status", "--url", base]) == 1
        failing = capsys.readouterr().out
    assert "worker           ok" in out and "queue 1, failed 0" in out
    assert report["ready"] is False and report["counts"]["queue"] == 1
    assert failing.splitlines()[0] == "NOT READY: worker failed (the embedder could not be loaded)"


def test_status_of_a_service_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach the service at http://127.0.0.1:" in capsys.readouterr().err
