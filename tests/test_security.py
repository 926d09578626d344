"""Who may call the service, from where: API keys and their scopes on REST, /mcp, /reembed
and key management; the Host and Origin checks that stop DNS rebinding and cross-site
requests; and a service that refuses to listen beyond loopback without keys.

Every refused request is checked to have changed nothing: `state()` hashes every row of the
knowledge tables (api_keys without its last_used_at) before and after."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import AccessPolicy, create_app
from knowledge.client import KnowledgeClient
from knowledge.errors import Forbidden, Unauthorized
from knowledge.store.documents import create_document
from knowledge.store.keys import SCOPES, create_key, revoke_key

from .apiclient import LOCAL, local_client
from .commands import free_port
from .mcp_clients import http_service, mcp_client, structured, text

TABLES = (
    "documents",
    "assets",
    "document_folders",
    "asset_folders",
    "knowledge_chunks",
    "embedding_models",
    "reembed_jobs",
    "agents",
    "api_keys",
)


def state(url: str) -> dict[str, str | None]:
    """An md5 of every row of each knowledge table (api_keys without last_used_at, which a
    refused request with a live key may touch)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            t: conn.execute(
                f"SELECT md5(string_agg((to_jsonb(t) - 'last_used_at')::text, ',' "
                f"ORDER BY to_jsonb(t)::text)) FROM {t} t"
            ).fetchone()[0]  # type: ignore[index]
            for t in TABLES
        }


@dataclass
class Keyed:
    url: str
    keys: dict[str, str]  # read, write, admin, closer (write, bound to agent closer), revoked
    doc: uuid.UUID
    key_id: uuid.UUID  # the read key's id


@pytest.fixture
def keyed(db_url: str) -> Keyed:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO agents (slug, name) VALUES ('closer', 'Closer'), ('scout', 'Scout')")
        made = {scope: create_key(conn, scope=scope, name=f"{scope} key") for scope in SCOPES}
        keys: dict[str, str] = {scope: k.secret for scope, k in made.items()}
        keys["closer"] = create_key(conn, scope="write", agent="closer").secret
        old = create_key(conn, scope="admin", name="old admin")
        revoke_key(conn, str(old.key.id))
        keys["revoked"] = old.secret
        doc = create_document(conn, title="Refund policy", content_text="Refunds within 30 days.").id
    return Keyed(db_url, keys, doc, made["read"].key.id)


def keyed_client(url: str) -> TestClient:
    """The app as it runs where keys are required (any bind but loopback, or HQ_REQUIRE_KEYS)."""
    return local_client(create_app(url, access=AccessPolicy.for_bind("127.0.0.1", 8765, require_keys=True)))


# (method, path, JSON body, the scope it needs); {doc} and {key} are filled in.
ROUTES = [
    ("GET", "/documents", None, "read"),
    ("GET", "/documents/{doc}", None, "read"),
    ("GET", "/search?q=refunds", None, "read"),
    ("GET", "/boot/closer", None, "read"),
    ("POST", "/documents", {"title": "New", "content_text": "text"}, "write"),
    ("PATCH", "/documents/{doc}", {"title": "Renamed"}, "write"),
    ("POST", "/documents/markdown", {"title": "Notes", "markdown": "Notes."}, "write"),
    ("POST", "/documents/{doc}/tags/urgent", None, "write"),
    ("POST", "/document-folders", {"name": "Research"}, "write"),
    ("POST", "/documents/{doc}/archive", None, "admin"),
    ("DELETE", "/documents/{doc}", None, "admin"),
    ("GET", "/models", None, "read"),
    ("POST", "/reembed", {"dry_run": True}, "admin"),
    ("GET", "/keys", None, "admin"),
    ("POST", "/keys", {"scope": "read", "name": "made over HTTP"}, "admin"),
    ("DELETE", "/keys/{key}", None, "admin"),
]


def _send(
    client: TestClient, route: tuple[str, str, Any, str], kb: Keyed, headers: dict[str, str] | None = None
) -> Any:  # TestClient's response: httpx's, or httpx2's where that is installed
    method, path, body, _ = route
    return client.request(method, path.format(doc=kb.doc, key=kb.key_id), json=body, headers=headers or {})


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_each_route_needs_a_live_key_with_its_scope(keyed: Keyed, route: tuple[str, str, Any, str]) -> None:
    needed = route[3]
    with keyed_client(keyed.url) as client:
        before = state(keyed.url)
        refused = {
            "no key": _send(client, route, keyed),
            "wrong key": _send(client, route, keyed, _bearer("hqk_" + "x" * 43)),
            "revoked key": _send(client, route, keyed, _bearer(keyed.keys["revoked"])),
            "not a bearer": _send(client, route, keyed, {"Authorization": f"Basic {keyed.keys['admin']}"}),
        }
        for why, r in refused.items():
            assert r.status_code == 401, (why, r.status_code, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.json()["detail"], why
        for scope in SCOPES[: SCOPES.index(needed)]:  # each scope below the one needed
            r = _send(client, route, keyed, _bearer(keyed.keys[scope]))
            assert r.status_code == 403, (scope, r.status_code, r.text)
            assert f"needs a key with the {needed} scope" in r.json()["detail"]
        assert state(keyed.url) == before, "a refused request changed something"
        allowed = _send(client, route, keyed, _bearer(keyed.keys[needed]))
        assert allowed.status_code < 300, (allowed.status_code, allowed.text)


def test_a_revoked_key_is_refused_from_its_next_request(keyed: Keyed) -> None:
    with keyed_client(keyed.url) as client:
        assert client.get("/documents", headers=_bearer(keyed.keys["read"])).status_code == 200
        r = client.delete(f"/keys/{keyed.key_id}", headers=_bearer(keyed.keys["admin"]))
        assert r.status_code == 200 and r.json()["revoked_at"]
        assert client.get("/documents", headers=_bearer(keyed.keys["read"])).status_code == 401


def test_keys_are_shown_once_and_stored_as_hashes(keyed: Keyed) -> None:
    with keyed_client(keyed.url) as client:
        made = client.post("/keys", json={"scope": "write", "agent": "scout"}, headers=_bearer(keyed.keys["admin"]))
        assert made.status_code == 201, made.text
        secret = made.json()["key"]
        listed = client.get("/keys", headers=_bearer(keyed.keys["admin"])).json()
        assert secret not in str(listed) and {k["name"] for k in listed} >= {"read key", "scout key"}
        assert client.get("/documents", headers=_bearer(secret)).status_code == 200
        bad = client.post("/keys", json={"scope": "owner"}, headers=_bearer(keyed.keys["admin"]))
        assert bad.status_code == 422 and "scope" in bad.text
        ghost = client.post("/keys", json={"scope": "read", "agent": "ghost"}, headers=_bearer(keyed.keys["admin"]))
        assert ghost.status_code == 404 and "agent: no agent has the slug 'ghost'" in ghost.json()["detail"]
    with psycopg.connect(keyed.url) as conn:
        stored = conn.execute(
            "SELECT string_agg(encode(key_hash, 'escape') || prefix || name, '') FROM api_keys"
        ).fetchone()
        assert stored is not None and secret not in stored[0] and secret[12:] not in stored[0]


def _agent_of(url: str, doc_id: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT a.slug FROM documents d LEFT JOIN agents a ON a.id = d.created_by_agent_id WHERE d.id = %s",
            (doc_id,),
        ).fetchone()
    assert row is not None
    return str(row[0]) if row[0] is not None else None


def test_an_agent_key_fixes_the_writer_whatever_the_header_says(keyed: Keyed) -> None:
    with keyed_client(keyed.url) as client:
        r = client.post(
            "/documents/markdown",
            json={"title": "Call notes", "markdown": "Asked about plans."},
            headers={**_bearer(keyed.keys["closer"]), "X-HQ-Agent": "scout"},
        )
        assert r.status_code == 201, r.text
        assert _agent_of(keyed.url, r.json()["id"]) == "closer"
        # an unbound write key may name the writer
        r = client.post(
            "/documents/markdown",
            json={"title": "Scouting", "markdown": "Found a lead."},
            headers={**_bearer(keyed.keys["write"]), "X-HQ-Agent": "scout"},
        )
        assert _agent_of(keyed.url, r.json()["id"]) == "scout"
        # GET /boot: the key's agent's bundle, named in X-HQ-Agent
        boot = client.get("/boot", headers={**_bearer(keyed.keys["closer"]), "Accept": "text/markdown"})
        assert boot.status_code == 200 and boot.headers["X-HQ-Agent"] == "closer"
        unbound = client.get("/boot", headers=_bearer(keyed.keys["read"]))
        assert unbound.status_code == 403 and "bound to no agent" in unbound.json()["detail"]


def _agent_ids(url: str) -> dict[str, uuid.UUID]:
    with psycopg.connect(url) as conn:
        return {slug: id_ for slug, id_ in conn.execute("SELECT slug, id FROM agents").fetchall()}


def test_an_agent_key_writes_only_as_its_own_agent_by_id(keyed: Keyed) -> None:
    ids = _agent_ids(keyed.url)
    closer, scout = _bearer(keyed.keys["closer"]), str(ids["scout"])
    before = state(keyed.url)
    with keyed_client(keyed.url) as client:
        for path, body in (
            ("/documents", {"title": "Forged", "content_text": "x"}),
            ("/assets", {"name": "Forged", "asset_type": "link", "url": "https://example.com"}),
        ):
            forged = client.post(path, json={**body, "created_by_agent_id": scout}, headers=closer)
            assert forged.status_code == 403, forged.text
            assert "created_by_agent_id" in forged.json()["detail"] and "closer" in forged.json()["detail"]
        forged = client.patch(
            f"/documents/{keyed.doc}", json={"title": "Forged", "updated_by_agent_id": scout}, headers=closer
        )
        assert forged.status_code == 403, forged.text
        assert state(keyed.url) == before  # nothing written
        # left out: recorded as the key's agent; an unbound key may still name any agent
        made = client.post("/documents", json={"title": "Mine", "content_text": "x"}, headers=closer).json()
        assert made["created_by_agent_id"] == made["updated_by_agent_id"] == str(ids["closer"])
        asset = client.post(
            "/assets", json={"name": "Mine", "asset_type": "link", "url": "https://example.com"}, headers=closer
        ).json()
        assert asset["created_by_agent_id"] == str(ids["closer"])
        edited = client.patch(f"/documents/{keyed.doc}", json={"title": "Refunds"}, headers=closer).json()
        assert edited["updated_by_agent_id"] == str(ids["closer"])
        named = client.post(
            "/documents",
            json={"title": "Theirs", "content_text": "x", "created_by_agent_id": scout},
            headers=_bearer(keyed.keys["write"]),
        ).json()
        assert named["created_by_agent_id"] == scout


def test_the_python_client_sends_its_key(keyed: Keyed) -> None:
    with http_service(keyed.url, require_keys=True) as base:
        with KnowledgeClient(base) as anonymous, pytest.raises(Unauthorized, match="needs an API key"):
            anonymous.search("refunds")
        with KnowledgeClient(base, key=keyed.keys["read"]) as reader:
            assert reader.get_document(keyed.doc).title == "Refund policy"
            assert reader.search("refunds").hits == []  # answered (nothing is indexed yet)
            with pytest.raises(Forbidden, match="write scope"):
                reader.save_document("Notes", "text")
        with KnowledgeClient(base, key=keyed.keys["closer"], agent="scout") as closer:
            saved = closer.save_document("Pricing call", "Asked for a discount.")
            assert _agent_of(keyed.url, str(saved.id)) == "closer"
        with KnowledgeClient(base, key=keyed.keys["closer"]) as closer:
            assert closer.boot().agent == "closer"  # GET /boot: the key's agent


def test_mcp_over_http_needs_a_key_and_the_write_scope_to_write(keyed: Keyed) -> None:
    async def scenario(base: str) -> None:
        for key in (None, "hqk_" + "y" * 43, keyed.keys["revoked"]):
            with pytest.raises(BaseException):  # noqa: B017 - the SDK wraps the 401 in its own errors
                async with mcp_client("http", keyed.url, base_url=base, key=key) as c:
                    await c.list_tools()
        async with mcp_client("http", keyed.url, base_url=base, key=keyed.keys["read"]) as c:
            found = await c.call_tool("search_knowledge", {"query": "refunds", "mode": "keyword"})
            assert not found.is_error, text(found)
            refused = await c.call_tool("save_document", {"title": "Notes", "markdown": "x"})
            assert refused.is_error and "save_document needs a key with the write scope" in text(refused)
        async with mcp_client("http", keyed.url, base_url=base, key=keyed.keys["closer"], agent="scout") as c:
            saved = structured(await c.call_tool("save_document", {"title": "Call", "markdown": "Plans."}))
            assert _agent_of(keyed.url, saved["id"]) == "closer"
            boot = structured(await c.call_tool("boot_context", {}))
            assert boot["agent"] == "closer"

    with http_service(keyed.url, require_keys=True) as base:
        before = state(keyed.url)
        anyio.run(scenario, base)
    after = state(keyed.url)
    assert after["documents"] != before["documents"]  # the closer's save, and only through its key


# --- DNS rebinding and cross-site requests, on the keyless loopback default ----------------


def _state_changing_routes() -> list[tuple[str, str]]:
    """Every REST route that changes state, with its path parameters filled in."""
    paths = create_app("postgresql:///unused").openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method.upper() not in ("GET", "HEAD", "OPTIONS")
    ]


def _fill(path: str, kb_doc: uuid.UUID) -> str:
    return (
        path.replace("{document_id}", str(kb_doc))
        .replace("{asset_id}", str(uuid.uuid4()))
        .replace("{folder_id}", str(uuid.uuid4()))
        .replace("{key_id}", str(uuid.uuid4()))
        .replace("{tag:path}", "urgent")
        .replace("{tag}", "urgent")
    )


STATE_CHANGING = _state_changing_routes()


def test_every_state_changing_route_is_listed() -> None:
    assert len(STATE_CHANGING) >= 25, STATE_CHANGING  # documents, assets, folders, tags, reembed, keys
    assert ("POST", "/reembed") in STATE_CHANGING and ("DELETE", "/keys/{key_id}") in STATE_CHANGING


@pytest.fixture
def local(db_url: str) -> Iterator[tuple[TestClient, uuid.UUID]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        doc = create_document(conn, title="Refund policy", content_text="Refunds within 30 days.").id
    with local_client(create_app(db_url)) as client:
        yield client, doc


@pytest.mark.parametrize(("method", "path"), STATE_CHANGING, ids=lambda v: str(v))
def test_a_foreign_origin_cannot_change_anything(
    local: tuple[TestClient, uuid.UUID], db_url: str, method: str, path: str
) -> None:
    client, doc = local
    before = state(db_url)
    for origin in ("http://evil.example", "null", "http://localhost:3000", "http://127.0.0.1:8766"):
        r = client.request(method, _fill(path, doc), headers={"Origin": origin})  # a body-less simple request
        assert r.status_code == 403, (origin, r.status_code, r.text)
        assert "Origin" in r.json()["detail"]
    r = client.request(method, _fill(path, doc), headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert state(db_url) == before


def test_the_services_own_page_may_change_state(local: tuple[TestClient, uuid.UUID]) -> None:
    client, doc = local
    r = client.post(f"/documents/{doc}/archive", headers={"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200, r.text
    assert client.post(f"/documents/{doc}/unarchive").status_code == 200  # no Origin: not a browser


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8765", "127.0.0.1:9999", "localhost", "127.0.0.2:8765", ""]
)
def test_a_foreign_host_is_misdirected(local: tuple[TestClient, uuid.UUID], db_url: str, host: str) -> None:
    client, doc = local
    before = state(db_url)
    for method, path, body in (
        ("GET", f"/documents/{doc}", None),
        ("GET", "/search?q=refunds", None),
        ("POST", "/documents", {"title": "Planted", "content_text": "x"}),
        ("DELETE", f"/documents/{doc}", None),
        ("GET", "/", None),
    ):
        r = client.request(method, path, json=body, headers={"Host": host})
        assert r.status_code == 421, (method, path, r.status_code, r.text)
        assert "HQ_ALLOWED_HOSTS" in r.json()["detail"]
    assert state(db_url) == before
    for name in ("127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765"):
        assert client.get(f"/documents/{doc}", headers={"Host": name}).status_code == 200


def test_allowed_hosts_and_origins_serve_a_proxy(db_url: str) -> None:
    access = AccessPolicy.for_bind(
        "127.0.0.1", 8765, allowed_hosts=["kb.example.com"], allowed_origins=["https://hq.example.com"]
    )
    with TestClient(create_app(db_url, access=access), base_url="https://kb.example.com") as client:
        assert client.get("/documents").status_code == 200
        made = client.post(
            "/documents", json={"title": "Via proxy", "content_text": "x"}, headers={"Origin": "https://hq.example.com"}
        )
        assert made.status_code == 201, made.text
        assert (
            client.post(
                "/documents", json={"title": "x", "content_text": "x"}, headers={"Origin": "https://evil.example"}
            ).status_code
            == 403
        )


def test_mcp_refuses_foreign_hosts_and_origins(db_url: str) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with http_service(db_url) as base, httpx.Client(base_url=base, timeout=30) as http:
        port = base.rsplit(":", 1)[1]
        before = state(db_url)
        for headers, status in (
            ({"Origin": "http://localhost:3000"}, 403),
            ({"Origin": "http://evil.example"}, 403),
            ({"Host": f"evil.example:{port}"}, 421),
        ):
            r = http.post("/mcp", json=init, headers={**accept, **headers})
            assert r.status_code == status, (headers, r.status_code, r.text)
        assert state(db_url) == before
        ok = http.post("/mcp", json=init, headers={**accept, "Origin": base})
        assert ok.status_code == 200, ok.text


def test_headers_over_the_limit_get_431(local: tuple[TestClient, uuid.UUID]) -> None:
    client, _ = local
    r = client.get("/documents", headers={"X-Padding": "a" * 20_000})
    assert r.status_code == 431 and "limit" in r.json()["detail"]


# --- Binding beyond loopback --------------------------------------------------------------


def _serve(db_url: str, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "knowledge", "serve", "--no-worker", "--port", str(port)],
        env={**os.environ, "HQ_DATABASE_URL": db_url, "HQ_EMBEDDER": "fake", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_binding_beyond_loopback_without_keys_refuses_to_start(db_url: str) -> None:
    proc = _serve(db_url, free_port(), HQ_HOST="0.0.0.0")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hq-knowledge keys create" in errors[0], err
    assert "Traceback" not in err


def test_binding_beyond_loopback_with_a_key_serves_only_with_keys(keyed: Keyed) -> None:
    port = free_port()
    proc = _serve(keyed.url, port, HQ_HOST="0.0.0.0")
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(proc.communicate()[1])
                anyio.run(anyio.sleep, 0.1)
        assert httpx.get(f"{base}/documents").status_code == 401
        assert httpx.get(f"{base}/documents", headers=_bearer(keyed.keys["read"])).status_code == 200
        assert httpx.get(f"{base}/", headers={"Host": "anything.example"}).status_code == 200  # the page
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_oversized_headers_and_a_client_gone_mid_body_on_a_real_server(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import socket
    import time

    with http_service(db_url) as base, caplog.at_level("INFO"):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"GET /documents HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: {'a' * 1_000_000}\r\n\r\n".encode())
            assert s.recv(200).startswith(b"HTTP/1.1 431 ")
        before = state(db_url)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                f"POST /documents HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f'Content-Length: 1000\r\n\r\n{{"title": "Half'.encode()
            )
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while "went away" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].getMessage() == (
        "POST /documents: the client went away before sending the whole request body"
    )
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert "Exception in ASGI application" not in caplog.text
    assert state(db_url) == before
