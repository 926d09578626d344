"""Optimistic concurrency over the API, on a real PostgreSQL: reads and writes of documents and
assets answer with an ETag (the item's version), writes given If-Match happen only while the
item is still at that version (else 412 and the row untouched), and the check is atomic: of
writers naming the same version exactly one wins, and read-modify-write clients that retry on
412 lose no update."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import create_app

from .apiclient import local_client

Conn = psycopg.Connection[dict[str, Any]]

CLIENTS = 20
KINDS = {
    "documents": {"title": "Pricing", "content_text": "Starter is $49."},
    "assets": {"name": "Logo", "asset_type": "image", "storage_path": "media/logo.png"},
}
MISSING = "5f0c2b9e-7d41-4c1e-9a57-000000000404"


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url, pool_size=CLIENTS)) as c:
        yield c


def create(client: TestClient, kind: str) -> str:
    r = client.post(f"/{kind}", json={**KINDS[kind], "tags": ["start"]})
    assert r.status_code == 201, r.text
    item_id: str = r.json()["id"]
    return item_id


def row(conn: Conn, kind: str, item_id: str) -> dict[str, Any] | None:
    """The item's row as stored, every column."""
    return conn.execute(f"SELECT * FROM {kind} WHERE id = %s", [item_id]).fetchone()


def etag(client: TestClient, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    value: str = r.headers["ETag"]
    return value


def race(work: Callable[[int, threading.Barrier], Any]) -> list[Any]:
    """Run work(i, barrier) for i in 0..CLIENTS-1 at once, each on its own thread; the results in
    order of i. `barrier` lets every client finish its read before any of them writes."""
    barrier = threading.Barrier(CLIENTS, timeout=30)
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda i: work(i, barrier), range(CLIENTS)))


# ---- ETags and a stale If-Match ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_with_the_read_etag_wins_and_a_stale_one_is_412(client: TestClient, conn: Conn, kind: str) -> None:
    created = client.post(f"/{kind}", json=KINDS[kind])
    item_id, path = created.json()["id"], f"/{kind}/{created.json()['id']}"
    read = etag(client, path)
    assert read.startswith('"') and read.endswith('"') and not read.startswith("W/")
    assert created.headers.get("ETag") == read

    r = client.patch(path, json={"tags": ["start", "first"]}, headers={"If-Match": read})
    assert r.status_code == 200, r.text
    written = r.headers["ETag"]
    assert written != read
    assert etag(client, path) == written

    before = row(conn, kind, item_id)
    r = client.patch(path, json={"tags": ["start", "second"]}, headers={"If-Match": read})
    assert r.status_code == 412, r.text
    singular = kind[:-1]
    assert r.json()["detail"] == (
        f"{singular} {item_id} changed since version {read} (now {written}): GET it again and reapply your change"
    )
    assert row(conn, kind, item_id) == before
    assert client.get(path).json()["tags"] == ["start", "first"]

    r = client.patch(path, json={"pinned": True}, headers={"If-Match": "*"})
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] not in (read, written)
    r = client.patch(path, json={"pinned": False}, headers={"If-Match": f'"0", {r.headers["ETag"]}'})
    assert r.status_code == 200, r.text  # one of the listed versions is current


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("PATCH", "/documents/{id}", {"title": "Renamed"}),
        ("PATCH", "/documents/{id}", {"pinned": True}),
        ("PATCH", "/documents/{id}", {"metadata": {"owner": "ops"}}),
        ("PATCH", "/documents/{id}/markdown", {"markdown": "Starter is $59."}),
        ("POST", "/documents/{id}/archive", None),
        ("PUT", "/documents/{id}/tags", {"tags": ["start", "put"]}),
        ("POST", "/documents/{id}/tags/boot:all", None),
        ("DELETE", "/documents/{id}/tags/start", None),
        ("PATCH", "/assets/{id}", {"description": "The square one"}),
        ("POST", "/assets/{id}/archive", None),
        ("PUT", "/assets/{id}/tags", {"tags": ["put"]}),
        ("POST", "/assets/{id}/tags/brand", None),
        ("DELETE", "/assets/{id}/tags/start", None),
    ],
)
def test_every_write_moves_the_etag_and_refuses_a_stale_one(
    client: TestClient, conn: Conn, method: str, path: str, body: Any
) -> None:
    kind = path.split("/")[1]
    item_id = create(client, kind)
    item = f"/{kind}/{item_id}"
    url = path.format(id=item_id)
    read = etag(client, item)

    r = client.request(method, url, json=body, headers={"If-Match": read})
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] != read
    assert r.headers["ETag"] == etag(client, item)

    before = row(conn, kind, item_id)
    r = client.request(method, url, json=body, headers={"If-Match": read})
    assert r.status_code == 412, r.text
    assert item_id in r.json()["detail"] and read in r.json()["detail"]
    assert row(conn, kind, item_id) == before


def test_unarchive_and_the_markdown_read_share_the_document_version(client: TestClient, conn: Conn) -> None:
    item_id = create(client, "documents")
    archived = client.post(f"/documents/{item_id}/archive").headers["ETag"]
    assert client.get(f"/documents/{item_id}/markdown").headers["ETag"] == archived

    stale = client.post(f"/documents/{item_id}/unarchive", headers={"If-Match": '"1"'})
    assert stale.status_code == 412, stale.text
    assert row(conn, "documents", item_id)["archived_at"] is not None  # type: ignore[index]
    r = client.post(f"/documents/{item_id}/unarchive", headers={"If-Match": archived})
    assert r.status_code == 200, r.text
    assert r.json()["archived_at"] is None and r.headers["ETag"] != archived


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_delete_is_412_and_keeps_the_item(client: TestClient, conn: Conn, kind: str) -> None:
    item_id = create(client, kind)
    path = f"/{kind}/{item_id}"
    read = etag(client, path)
    assert client.patch(path, json={"pinned": True}).status_code == 200  # someone else's change

    before = row(conn, kind, item_id)
    r = client.delete(path, headers={"If-Match": read})
    assert r.status_code == 412, r.text
    assert row(conn, kind, item_id) == before
    assert client.get(path).status_code == 200

    r = client.delete(path, headers={"If-Match": etag(client, path)})
    assert r.status_code == 204, r.text
    assert row(conn, kind, item_id) is None


def test_if_match_errors_name_the_header_or_the_item(client: TestClient, conn: Conn) -> None:
    item_id = create(client, "documents")
    before = row(conn, "documents", item_id)
    for bad in ("12345", "W/12345", '"1" "2"', ""):
        r = client.patch(f"/documents/{item_id}", json={"title": "x"}, headers={"If-Match": bad})
        assert r.status_code == 412, (bad, r.text)  # names no version: the condition cannot hold
        assert "If-Match" in r.json()["detail"] and "not an ETag" in r.json()["detail"]
    weak = etag(client, f"/documents/{item_id}").join(["W/", ""])
    r = client.patch(f"/documents/{item_id}", json={"title": "x"}, headers={"If-Match": weak})
    assert r.status_code == 412, r.text  # If-Match compares strongly: a weak tag never matches
    assert row(conn, "documents", item_id) == before
    r = client.patch(f"/documents/{MISSING}", json={"title": "x"}, headers={"If-Match": "*"})
    assert r.status_code == 404 and MISSING in r.json()["detail"]


def test_writes_without_if_match_still_win_and_answer_the_new_etag(client: TestClient) -> None:
    item_id = create(client, "documents")
    path = f"/documents/{item_id}"
    first = client.patch(path, json={"title": "One"})
    second = client.patch(path, json={"title": "Two"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert client.get(path).json()["title"] == "Two"
    assert first.headers.get("ETag") not in (None, second.headers.get("ETag"))
    tagged = client.put(f"{path}/tags", json={"tags": ["x"]})
    assert tagged.status_code == 200
    assert tagged.headers.get("ETag") not in (None, second.headers["ETag"])
    assert tagged.headers["ETag"] == etag(client, path)


def test_openapi_documents_if_match_etag_and_412(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    writes = [
        ("/documents/{document_id}", "patch"),
        ("/documents/{document_id}", "delete"),
        ("/documents/{document_id}/archive", "post"),
        ("/documents/{document_id}/markdown", "patch"),
        ("/documents/{document_id}/tags", "put"),
        ("/assets/{asset_id}", "patch"),
        ("/assets/{asset_id}", "delete"),
        ("/assets/{asset_id}/unarchive", "post"),
        ("/assets/{asset_id}/tags/{tag}", "post"),
    ]
    for path, method in writes:
        operation = paths[path][method]
        headers = [p for p in operation["parameters"] if p["in"] == "header" and p["name"] == "If-Match"]
        assert headers and "412" in headers[0]["description"], (path, method)
        assert "412" in operation["responses"], (path, method)
    for path in ("/documents/{document_id}", "/assets/{asset_id}", "/documents/{document_id}/markdown"):
        assert "ETag" in paths[path]["get"]["responses"]["200"]["headers"], path


# ---- concurrent writers --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_of_twenty_writers_with_the_same_version_exactly_one_wins(client: TestClient, kind: str) -> None:
    item_id = create(client, kind)
    path = f"/{kind}/{item_id}"
    read = client.get(path)
    version, tags = read.headers.get("ETag", '"unknown"'), read.json()["tags"]

    def write(i: int, barrier: threading.Barrier) -> int:
        barrier.wait()
        status: int = client.patch(
            path, json={"tags": [*tags, f"client-{i}"]}, headers={"If-Match": version}
        ).status_code
        return status

    statuses = race(write)
    assert sorted(statuses) == [200] + [412] * (CLIENTS - 1)
    winner = statuses.index(200)
    assert client.get(path).json()["tags"] == ["start", f"client-{winner}"]


@pytest.mark.parametrize("kind", KINDS)
def test_twenty_read_modify_write_clients_lose_no_update(client: TestClient, kind: str) -> None:
    item_id = create(client, kind)
    path = f"/{kind}/{item_id}"

    def read_modify_write(i: int, barrier: threading.Barrier) -> int:
        """Add this client's tag; the number of 412s it had to retry after."""
        retries = 0
        read = client.get(path)
        barrier.wait()
        for _ in range(10 * CLIENTS):
            version = read.headers.get("ETag")
            r = client.patch(
                path,
                json={"tags": [*read.json()["tags"], f"client-{i}"]},
                headers={"If-Match": version} if version else {},
            )
            if r.status_code != 412:
                assert r.status_code == 200, r.text
                return retries
            retries += 1
            read = client.get(path)
        raise AssertionError(f"client {i} gave up after {retries} retries")

    retries = race(read_modify_write)
    tags = client.get(path).json()["tags"]
    assert sorted(tags) == sorted(["start", *(f"client-{i}" for i in range(CLIENTS))])
    assert sum(retries) >= CLIENTS - 1  # all read the same version: all but one had to retry
