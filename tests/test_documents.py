"""Documents through the API and the domain functions, on a real PostgreSQL: content round
trips, the embedding re-queue, listing (filters, subtree, pagination), archive and delete,
and the importer's upsert."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import create_app
from knowledge.errors import Conflict, InvalidInput
from knowledge.store.documents import (
    create_document,
    get_document,
    list_documents,
    update_document,
    upsert_document_by_source_path,
)
from knowledge.store.folders import create_folder
from knowledge.store.items import ItemFilters

from . import tiptap
from .apiclient import local_client

Conn = psycopg.Connection[dict[str, Any]]

TIPTAP = tiptap.doc(
    tiptap.heading(1, "Pricing"),
    tiptap.para(tiptap.text("Starter is "), tiptap.text("$49", "bold"), tiptap.text(" a month, 0.5 % off — ünïcödé ✓")),
    tiptap.bullets(tiptap.item(tiptap.para(tiptap.text("nested")))),
)
MARKDOWN = "# Pricing\r\n\r\n* Starter: $49  \n* Pro: `$99`\t\n\n> ünïcödé ✓ 🚀\n\n\n"
HTML = "<!doctype html>\n<h1 class='x'>Pricing</h1>\r\n<p>Starter &amp; Pro: <b>$49</b></p>  \n<!-- ✓ -->"


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


def _mark_indexed(conn: Conn, doc_id: str | UUID) -> None:
    conn.execute(
        "UPDATE documents SET embedding_status = 'indexed', embedding_model = 'm', "
        "embedded_at = now(), embedding_attempts = 1 WHERE id = %s",
        [doc_id],
    )


# ---- content round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, field, value",
    [
        ("markdown", "content_text", MARKDOWN),
        ("html", "content_text", HTML),
        ("tiptap", "content", TIPTAP),
    ],
)
def test_content_comes_back_unchanged(client: TestClient, fmt: str, field: str, value: Any) -> None:
    created = client.post("/documents", json={"title": "Pricing", "content_format": fmt, field: value})
    assert created.status_code == 201, created.text
    doc = created.json()
    assert doc[field] == value
    other = "content" if field == "content_text" else "content_text"
    assert doc[other] is None
    fetched = client.get(f"/documents/{doc['id']}").json()
    assert fetched[field] == value and fetched["content_format"] == fmt
    if isinstance(value, str):  # byte for byte, CRLF and trailing blanks included
        assert fetched[field].encode("utf-8") == value.encode("utf-8")
    assert fetched["embedding_status"] == "pending" and fetched["passage_count"] == 0
    assert fetched["folder_path"] == "/" and fetched["source_path"] is None


def test_format_switch_replaces_the_content(client: TestClient) -> None:
    doc = client.post("/documents", json={"title": "T", "content_text": "# md"}).json()
    switched = client.patch(f"/documents/{doc['id']}", json={"content_format": "tiptap", "content": TIPTAP})
    assert switched.status_code == 200, switched.text
    assert switched.json()["content"] == TIPTAP and switched.json()["content_text"] is None
    # tiptap -> markdown needs the text
    bad = client.patch(f"/documents/{doc['id']}", json={"content_format": "markdown"})
    assert bad.status_code == 422 and "content_text" in bad.json()["detail"]
    back = client.patch(f"/documents/{doc['id']}", json={"content_format": "html", "content_text": "<p>x</p>"})
    assert back.json()["content"] is None and back.json()["content_text"] == "<p>x</p>"
    # markdown <-> html keeps the text
    kept = client.patch(f"/documents/{doc['id']}", json={"content_format": "markdown"})
    assert kept.json()["content_format"] == "markdown" and kept.json()["content_text"] == "<p>x</p>"


# ---- the embedding queue ---------------------------------------------------------------------


def test_content_or_title_change_requeues_but_tags_do_not(client: TestClient, conn: Conn) -> None:
    doc = client.post("/documents", json={"title": "T", "content_text": "one"}).json()
    _mark_indexed(conn, doc["id"])

    tags_only = client.patch(
        f"/documents/{doc['id']}", json={"tags": ["pricing"], "pinned": True, "metadata": {"k": 1}}
    )
    assert tags_only.json()["embedding_status"] == "indexed"
    assert tags_only.json()["embedding_attempts"] == 1
    added = client.post(f"/documents/{doc['id']}/tags/boot:all")
    assert added.json()["tags"] == ["pricing", "boot:all"]
    assert client.get(f"/documents/{doc['id']}").json()["embedding_status"] == "indexed"

    same = client.patch(f"/documents/{doc['id']}", json={"content_text": "one"})
    assert same.json()["embedding_status"] == "indexed"

    changed = client.patch(f"/documents/{doc['id']}", json={"content_text": "two"})
    assert changed.json()["embedding_status"] == "pending"
    assert changed.json()["embedding_attempts"] == 0
    assert changed.json()["tags"] == ["pricing", "boot:all"]

    _mark_indexed(conn, doc["id"])
    retitled = client.patch(f"/documents/{doc['id']}", json={"title": "T2"})
    assert retitled.json()["embedding_status"] == "pending"


def test_retry_puts_a_failed_document_back_in_the_queue(client: TestClient, conn: Conn) -> None:
    doc = client.post("/documents", json={"title": "T", "content_text": "x"}).json()
    not_failed = client.post(f"/documents/{doc['id']}/retry")
    assert not_failed.status_code == 409 and "pending" in not_failed.json()["detail"]

    conn.execute(
        "UPDATE documents SET embedding_status = 'failed', embedding_attempts = 5, "
        "embedding_error = 'model exploded' WHERE id = %s",
        [doc["id"]],
    )
    retried = client.post(f"/documents/{doc['id']}/retry")
    assert retried.status_code == 200
    body = retried.json()
    assert (body["embedding_status"], body["embedding_attempts"], body["embedding_error"]) == ("pending", 0, None)
    missing = client.post("/documents/00000000-0000-0000-0000-000000000000/retry")
    assert missing.status_code == 404


# ---- listing ---------------------------------------------------------------------------------


def test_pagination_counts_and_order(client: TestClient) -> None:
    ids = [client.post("/documents", json={"title": f"d{i}", "content_text": "x"}).json()["id"] for i in range(7)]
    pinned = ids[2]
    client.patch(f"/documents/{pinned}", json={"pinned": True})
    seen: list[str] = []
    for offset, size in ((0, 3), (3, 3), (6, 1), (9, 0)):
        page = client.get("/documents", params={"limit": 3, "offset": offset}).json()
        assert page["count"] == 7
        assert len(page["data"]) == size
        seen += [d["id"] for d in page["data"]]
    assert seen[0] == pinned  # pinned first ...
    assert seen[1:] == [i for i in reversed(ids) if i != pinned]  # ... then newest updated
    assert client.get("/documents", params={"pinned": "true"}).json()["count"] == 1
    assert client.get("/documents", params={"limit": 200}).status_code == 200
    assert client.get("/documents", params={"limit": 201}).status_code == 422


def test_folder_filter_takes_the_whole_subtree_and_root_means_unfiled(conn: Conn) -> None:
    ops = create_folder(conn, "document", name="Ops")
    sales = create_folder(conn, "document", name="Sales", parent_id=ops.id)
    emea = create_folder(conn, "document", name="EMEA", parent_id=sales.id)
    other = create_folder(conn, "document", name="Other")
    made = {
        name: create_document(conn, title=name, content_text="x", folder_id=folder)
        for name, folder in [
            ("in-ops", ops.id),
            ("in-sales", sales.id),
            ("in-emea", emea.id),
            ("in-other", other.id),
            ("unfiled", None),
        ]
    }
    assert made["in-emea"].folder_path == "/Ops/Sales/EMEA"

    def titles(folder: Any) -> set[str]:
        return {d.title for d in list_documents(conn, ItemFilters(folder_id=folder)).items}

    assert titles(ops.id) == {"in-ops", "in-sales", "in-emea"}
    assert titles(sales.id) == {"in-sales", "in-emea"}
    assert titles(emea.id) == {"in-emea"}
    assert titles("root") == {"unfiled"}
    assert len(titles(None)) == 5


def test_tag_status_and_archive_filters(client: TestClient, conn: Conn) -> None:
    def make(title: str, tags: list[str]) -> str:
        doc: str = client.post("/documents", json={"title": title, "content_text": "x", "tags": tags}).json()["id"]
        return doc

    a = make("a", ["boot:all", "pricing"])
    b = make("b", ["boot:scout"])
    c = make("c", ["pricing"])
    _mark_indexed(conn, c)

    def titles(**params: Any) -> list[str]:
        body = client.get("/documents", params=params).json()
        assert body["count"] == len(body["data"])
        return sorted(d["title"] for d in body["data"])

    assert titles(tags_any=["boot:all", "boot:scout"]) == ["a", "b"]
    assert titles(tags_all=["boot:all", "pricing"]) == ["a"]
    assert titles(tags_all=["pricing"], tags_any=["boot:all", "boot:scout"]) == ["a"]
    assert titles(embedding_status="indexed") == ["c"]

    archived = client.post(f"/documents/{a}/archive").json()
    assert archived["archived_at"] is not None
    again = client.post(f"/documents/{a}/archive").json()
    assert again["archived_at"] == archived["archived_at"]
    assert titles() == ["b", "c"]
    assert titles(archived="true") == ["a"]
    assert titles(archived="any") == ["a", "b", "c"]
    assert client.get(f"/documents/{a}").status_code == 200  # archived, still readable

    assert client.post(f"/documents/{a}/unarchive").json()["archived_at"] is None
    assert titles() == ["a", "b", "c"]

    assert client.delete(f"/documents/{b}").status_code == 204
    assert client.get(f"/documents/{b}").status_code == 404
    assert client.delete(f"/documents/{b}").status_code == 404
    assert titles(archived="any") == ["a", "c"]


def test_unknown_folder_filter_is_a_404_naming_it(client: TestClient) -> None:
    missing = "9b2e58e4-0000-4000-8000-000000000000"
    r = client.get("/documents", params={"folder_id": missing})
    assert r.status_code == 404 and missing in r.json()["detail"]


# ---- the importer's upsert -------------------------------------------------------------------


def test_upsert_by_source_path_creates_updates_and_leaves_unchanged_rows_alone(conn: Conn) -> None:
    folder = create_folder(conn, "document", name="kb").id
    args: dict[str, Any] = {
        "source_path": "kb/pricing.md",
        "title": "Pricing",
        "content_format": "markdown",
        "content_text": "# Pricing\n",
        "folder_id": folder,
        "tags": ["pricing"],
        "metadata": {"front_matter": {"owner": "ops"}},
    }
    doc, outcome = upsert_document_by_source_path(conn, **args)
    assert outcome == "created" and doc.source_path == "kb/pricing.md" and doc.folder_id == folder

    _mark_indexed(conn, doc.id)
    before = get_document(conn, doc.id)
    same, outcome = upsert_document_by_source_path(conn, **{**args, "metadata": {"other": True}})
    assert outcome == "unchanged"
    assert same == before  # not touched: still indexed, same updated_at, metadata kept

    changed, outcome = upsert_document_by_source_path(conn, **{**args, "content_text": "# Pricing v2\n"})
    assert outcome == "updated" and changed.id == doc.id
    assert changed.embedding_status == "pending" and changed.content_text == "# Pricing v2\n"

    _mark_indexed(conn, doc.id)
    retagged, outcome = upsert_document_by_source_path(
        conn, **{**args, "content_text": "# Pricing v2\n", "tags": ["pricing", "boot:all"]}
    )
    assert outcome == "updated" and retagged.tags == ["pricing", "boot:all"]
    assert retagged.embedding_status == "indexed"  # tags alone do not re-embed

    moved, outcome = upsert_document_by_source_path(
        conn, **{**args, "content_text": "# Pricing v2\n", "tags": ["pricing", "boot:all"], "folder_id": None}
    )
    assert outcome == "updated" and moved.folder_id is None
    assert conn.execute("SELECT count(*) AS n FROM documents").fetchone() == {"n": 1}


def test_upsert_rejects_bad_input_and_stores_nothing(conn: Conn) -> None:
    for tags, text, field in ((["has space"], "x", "tags"), ([], "nul\x00", "content_text")):
        with pytest.raises(InvalidInput, match=field):
            upsert_document_by_source_path(
                conn,
                source_path="kb/a.md",
                title="A",
                content_format="markdown",
                content_text=text,
                folder_id=None,
                tags=tags,
                metadata={},
            )
    assert conn.execute("SELECT count(*) AS n FROM documents").fetchone() == {"n": 0}


def test_source_path_is_unique(conn: Conn) -> None:
    create_document(conn, title="A", content_text="x", source_path="kb/a.md")
    with pytest.raises(Conflict):
        create_document(conn, title="B", content_text="y", source_path="kb/a.md")


def test_domain_update_works_on_a_tuple_row_connection(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as plain:  # the API's pool gives tuple rows
        doc = create_document(plain, title="T", content_format="tiptap", content=TIPTAP)
        updated = update_document(plain, doc.id, title="T2", tags=["x", "x", "y"])
        assert updated.content == TIPTAP and updated.tags == ["x", "y"]
