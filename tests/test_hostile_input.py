"""Hostile input that cannot hurt: nesting deep enough to exhaust a recursive renderer (folder
chains, HTML, TipTap), tags that only look like another tag, and titles that steer a terminal.
Each is a 4xx naming the field and the limit, with every stored row as it was; trees and HTML
stored before the limits existed still render."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import psycopg
import pytest
from fastapi.testclient import TestClient

from embeddings.model import FakeEmbedder
from knowledge.api import create_app
from knowledge.api.routes.folders import FolderTreePublic
from knowledge.errors import InvalidInput
from knowledge.ingest.worker import Worker
from knowledge.store.folders import MAX_FOLDER_DEPTH, create_folder, update_folder
from knowledge.store.importer import import_folder

from .apiclient import error_message as message
from .apiclient import local_client, rows_snapshot

Conn = psycopg.Connection[dict[str, Any]]
Ids = dict[str, str]

TABLES = ("documents", "assets", "document_folders", "asset_folders", "reembed_jobs")
FOLDER_TABLES = {"/document-folders": "document_folders", "/asset-folders": "asset_folders"}
DEEP_HTML = "<div>" * 300 + "<p>deep</p>" + "</div>" * 300


def tiptap(levels: int) -> dict[str, Any]:
    """A TipTap document whose text sits at node level `levels` (blockquotes around a paragraph)."""
    node: dict[str, Any] = {"type": "paragraph", "content": [{"type": "text", "text": "deep"}]}
    for _ in range(levels - 2):
        node = {"type": "blockquote", "content": [node]}
    return {"type": "doc", "content": [node]}


def chain(conn: Conn, table: str, length: int) -> list[UUID]:
    """A chain of `length` folders named f0, f1, ... each inside the previous one, written with
    SQL as rows from before the depth limit would be. Returns their ids, top first."""
    ids = [uuid4() for _ in range(length)]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {table} (id, parent_id, name) VALUES (%s, %s, %s)",
            [(folder_id, ids[i - 1] if i else None, f"f{i}") for i, folder_id in enumerate(ids)],
        )
    return ids


@dataclass(frozen=True)
class Case:
    request: str
    """The method and the path, with {doc}, {markup_doc}, {asset}, {level63}, {level64}, {alevel64}, {top}
    for the seeded rows."""
    body: Any
    names: tuple[str, ...]
    """Each must appear in the error message."""
    status: int = 422
    headers: dict[str, str] | None = None


CASES = {
    # folders nest at most 64 levels
    "folder-under-level-64": Case(
        "POST /document-folders",
        {"name": "x", "parent_id": "{level64}"},
        ("parent_id", "{level64}", "level 64", "at most 64 levels"),
    ),
    "asset-folder-under-level-64": Case(
        "POST /asset-folders", {"name": "x", "parent_id": "{alevel64}"}, ("parent_id", "at most 64 levels")
    ),
    "folder-move-to-level-65": Case(
        "PATCH /document-folders/{top}",
        {"parent_id": "{level63}"},
        ("parent_id", "{top}", "level 65", "at most 64 levels"),
    ),
    "folder-move-and-rename": Case(
        "PATCH /document-folders/{top}", {"name": "Y", "parent_id": "{level64}"}, ("parent_id", "at most 64 levels")
    ),
    # HTML and TipTap deeper than the converters render
    "html-300-deep": Case(
        "POST /documents",
        {"title": "T", "content_format": "html", "content_text": DEEP_HTML},
        ("content_text", "HTML", "301 deep", "limit is 100"),
    ),
    "html-patch": Case(
        "PATCH /documents/{doc}",
        {"content_format": "html", "content_text": DEEP_HTML},
        ("content_text", "limit is 100"),
    ),
    "html-unclosed": Case(
        "POST /documents",
        {"title": "T", "content_format": "html", "content_text": "<li><span>" * 60 + "x"},
        ("content_text", "120 deep"),
    ),
    "markdown-to-html": Case(
        "PATCH /documents/{markup_doc}", {"content_format": "html"}, ("content_text", "limit is 100")
    ),
    "tiptap-300-deep": Case(
        "POST /documents",
        {"title": "T", "content_format": "tiptap", "content": tiptap(300)},
        ("content", "300 levels", "limit is 100"),
    ),
    "tiptap-patch": Case(
        "PATCH /documents/{doc}", {"content_format": "tiptap", "content": tiptap(101)}, ("content", "limit is 100")
    ),
    # tags that would only look like another tag
    "tag-zero-width-space": Case(
        "POST /documents",
        {"title": "T", "content_text": "x", "tags": ["pricing", "boot:\u200ball"]},
        ("tags[1]", "invisible", "U+200B", "offset 5"),
    ),
    "tag-bidi-override": Case("PUT /documents/{doc}/tags", {"tags": ["boot:all\u202e"]}, ("tags[0]", "U+202E")),
    "tag-bom-in-path": Case("POST /documents/{doc}/tags/" + quote("\ufeffboot:all"), None, ("tag", "U+FEFF")),
    "tag-zwj-asset": Case("POST /assets", {"name": "A", "tags": ["boot\u200d:all"]}, ("tags[0]", "U+200D")),
    "tag-zwnj-patch": Case("PATCH /assets/{asset}", {"tags": ["boot:al\u200cl"]}, ("tags[0]", "U+200C")),
    "tag-variation-selector": Case("POST /assets/{asset}/tags/" + quote("boot:all\ufe0f"), None, ("tag", "U+FE0F")),
    "tag-filter-invisible": Case("GET /documents?tags_any=" + quote("boot:\u2060all"), None, ("tags_any[0]", "U+2060")),
    # titles and names that would drive a terminal
    "title-ansi-escape": Case(
        "POST /documents",
        {"title": "a\x1b[31mred", "content_text": "x"},
        ("title", "control character", "U+001B", "offset 1"),
    ),
    "title-bel": Case("PATCH /documents/{doc}", {"title": "bell\x07"}, ("title", "U+0007", "offset 4")),
    "title-carriage-return": Case("POST /documents", {"title": "ok\rEVIL", "content_text": "x"}, ("title", "U+000D")),
    "asset-name-bidi-override": Case(
        "POST /assets", {"name": "invoice\u202efdp.exe"}, ("name", "U+202E", "bidirectional")
    ),
    "folder-name-newline": Case("POST /document-folders", {"name": "a\nb"}, ("name", "U+000A")),
    "folder-rename-escape": Case(
        "PATCH /asset-folders/{alevel64}", {"name": "\x1b]0;pwned\x07"}, ("name", "U+001B", "offset 0")
    ),
    # a server path as a model tells nothing about the server's disk: it is only an unknown name
    "reembed-server-path": Case(
        "POST /reembed",
        {"model": "/etc", "dry_run": True},
        ("model", "'/etc' is not a model name this service knows"),
        status=404,
    ),
    "reembed-register-directory": Case("POST /reembed", {"model": "/tmp", "name": "mine"}, ("name", "command line")),
    # concurrent edits: a stale or malformed If-Match writes nothing
    "stale-if-match": Case(
        "PATCH /documents/{doc}", {"title": "Mine"}, ("changed since", '"1"'), status=412, headers={"If-Match": '"1"'}
    ),
    "malformed-if-match": Case(
        "DELETE /assets/{asset}", None, ("If-Match", "not an ETag"), status=412, headers={"If-Match": "0"}
    ),
    # headers beyond 16 KiB
    "headers-over-16-kib": Case(
        "POST /documents",
        {"title": "T", "content_text": "x"},
        ("request headers are", "the limit is 16384"),
        status=431,
        headers={"X-Padding": "p" * 17_000},
    ),
}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


@pytest.fixture
def ids(client: TestClient, conn: Conn) -> Ids:
    """A document, a markdown document whose text is deep HTML, an asset; in each tree a chain
    of 64 folders whose last level is made through the API (level 64 is allowed); and a
    top-level document folder with one subfolder (a subtree two levels high)."""

    def post(path: str, body: dict[str, Any]) -> str:
        r = client.post(path, json=body)
        assert r.status_code == 201, r.text
        new_id: str = r.json()["id"]
        return new_id

    seeded = {
        "doc": post("/documents", {"title": "T", "content_text": "x", "tags": ["pricing"]}),
        "markup_doc": post("/documents", {"title": "M", "content_text": DEEP_HTML}),
        "asset": post("/assets", {"name": "A"}),
    }
    for key, path in (("level", "/document-folders"), ("alevel", "/asset-folders")):
        upper = chain(conn, FOLDER_TABLES[path], MAX_FOLDER_DEPTH - 1)
        seeded[f"{key}63"] = str(upper[-1])
        seeded[f"{key}64"] = post(path, {"name": "last", "parent_id": str(upper[-1])})
    seeded["top"] = post("/document-folders", {"name": "Top"})
    post("/document-folders", {"name": "Sub", "parent_id": seeded["top"]})
    return seeded


def snapshot(conn: Conn) -> dict[str, Any]:
    return rows_snapshot(conn, TABLES)


def fill(value: Any, ids: Ids) -> Any:
    if isinstance(value, str):
        return value.format(**ids) if value.startswith("{") and value.endswith("}") else value
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hostile_input_is_refused_and_stores_nothing(client: TestClient, conn: Conn, ids: Ids, case: Case) -> None:
    before = snapshot(conn)
    body = fill(case.body, ids)
    method, path = case.request.split(" ", 1)
    path = path.format(**ids)
    response = (
        client.request(method, path, json=body, headers=case.headers)
        if body is not None
        else client.request(method, path, headers=case.headers)
    )
    assert response.status_code == case.status, response.text[:2000]
    text = message(response)
    for name in case.names:
        assert name.format(**ids) in text, f"{name!r} not in {text[:2000]!r}"
    assert len(text) < 1000, text
    assert snapshot(conn) == before


def test_every_case_has_a_unique_id() -> None:
    """The ids are the keys of CASES (a repeated key is a lint error); each is a slug and names a case of its own."""
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", case_id) for case_id in CASES)
    assert len({repr(case) for case in CASES.values()}) == len(CASES)


# ---- trees from before the limit --------------------------------------------------------------


@pytest.mark.parametrize("folders", FOLDER_TABLES)
def test_a_tree_256_deep_from_before_the_limit_renders(client: TestClient, conn: Conn, folders: str) -> None:
    ids = chain(conn, FOLDER_TABLES[folders], 256)
    items = "documents" if folders == "/document-folders" else "assets"
    body = {"title": "At the bottom", "content_text": "x"} if items == "documents" else {"name": "At the bottom"}
    item = client.post(f"/{items}", json={**body, "folder_id": str(ids[-1])})
    assert item.status_code == 201, item.text

    response = client.get(folders)
    assert response.status_code == 200, response.text[:500]
    tree = response.json()
    assert (tree["count"], tree["unfiled_count"]) == (256, 0)
    node, level = tree["data"][0], 1
    assert node["total_item_count"] == 1
    while node["children"]:
        (node,) = node["children"]
        level += 1
    assert level == 256
    assert node["id"] == str(ids[-1]) and node["parent_id"] == str(ids[-2])
    assert node["path"] == "".join(f"/f{i}" for i in range(256))
    assert (node["name"], node["item_count"], node["total_item_count"], node["children"]) == ("f255", 1, 1, [])
    assert client.get(f"{folders}/{ids[-1]}").json()["path"] == node["path"]

    # Such a tree can be repaired: a move that makes nothing deeper is allowed, one that does is not.
    assert client.patch(f"{folders}/{ids[200]}", json={"parent_id": None}).status_code == 200
    assert client.patch(f"{folders}/{ids[150]}", json={"parent_id": str(ids[100])}).status_code == 200
    deeper = client.patch(f"{folders}/{ids[201]}", json={"parent_id": str(ids[199])})
    assert deeper.status_code == 422 and "parent_id" in message(deeper), deeper.text
    assert client.get(folders).json()["count"] == 256


def test_the_tree_json_is_what_the_schema_says(client: TestClient) -> None:
    """The hand-written tree JSON matches the pydantic rendering it replaced, key for key."""
    top = client.post("/document-folders", json={"name": 'Ops "ü" ✓'}).json()["id"]
    client.post("/document-folders", json={"name": "Sales", "parent_id": top})
    client.post("/document-folders", json={"name": "EMEA", "parent_id": top})
    client.post("/document-folders", json={"name": "Archive"})
    response = client.get("/document-folders")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    parsed = FolderTreePublic.model_validate_json(response.content)
    assert response.json() == parsed.model_dump(mode="json")
    assert [n.name for n in parsed.data] == ["Archive", 'Ops "ü" ✓']
    assert [n.name for n in parsed.data[1].children] == ["EMEA", "Sales"]


def test_the_depth_check_and_a_concurrent_create_do_not_race(conn: Conn, connect: Callable[[], Conn]) -> None:
    """A move computes the moved subtree's height under the tree lock that folder creation also
    takes: a subfolder created meanwhile is counted, and the move that would now reach level 65
    is refused instead of landing there."""
    upper = chain(conn, "document_folders", MAX_FOLDER_DEPTH - 2)  # levels 1..62
    top = create_folder(conn, "document", name="Top").id
    sub = create_folder(conn, "document", name="Sub", parent_id=top).id  # moved under 62: level 64
    creator, mover = connect(), connect()
    outcome: list[InvalidInput | None] = []

    def move() -> None:
        try:
            update_folder(mover, "document", top, parent_id=upper[-1])
            outcome.append(None)
        except InvalidInput as e:  # handed to the test thread
            outcome.append(e)

    mover_pid = mover.info.backend_pid
    with creator.transaction():
        create_folder(creator, "document", name="Deeper", parent_id=sub)  # the subtree is 3 high now
        thread = threading.Thread(target=move)
        thread.start()
        deadline = time.monotonic() + 10
        waiting = None
        while time.monotonic() < deadline and thread.is_alive():
            waiting = conn.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", [mover_pid]).fetchone()
            if waiting and waiting["wait_event"] == "advisory":
                break
            time.sleep(0.02)
        assert waiting == {"wait_event": "advisory"}, f"the move did not wait for the create: {outcome}"
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidInput), outcome
    assert "level 65" in str(outcome[0])
    parent = conn.execute("SELECT parent_id FROM document_folders WHERE id = %s", [top]).fetchone()
    assert parent == {"parent_id": None}


# ---- look-alike tags --------------------------------------------------------------------------


def test_look_alike_tags_are_one_tag_and_old_spellings_can_be_removed(client: TestClient, conn: Conn) -> None:
    created = client.post(
        "/documents", json={"title": "Boot", "content_text": "x", "tags": ["boot\uff1aall", "boot:all", "\uff50ricing"]}
    )
    assert created.status_code == 201, created.text
    doc = created.json()
    assert doc["tags"] == ["boot:all", "pricing"]
    assert client.post(f"/documents/{doc['id']}/tags/" + quote("\uff42oot:all")).json()["tags"] == [
        "boot:all",
        "pricing",
    ]
    found = client.get("/documents", params={"tags_all": "boot\uff1aall"}).json()
    assert [d["id"] for d in found["data"]] == [doc["id"]]
    assert [t["tag"] for t in client.get("/tags", params={"prefix": "boot\uff1a"}).json()["data"]] == ["boot:all"]

    # Tags stored before the rule keep working: removable by the spelling they were stored in.
    conn.execute(
        "UPDATE documents SET tags = %s WHERE id = %s", [["boot:\u200ball", "boot\uff1aall", "pricing"], doc["id"]]
    )
    first = client.delete(f"/documents/{doc['id']}/tags/" + quote("boot:\u200ball"))
    assert first.status_code == 200 and first.json()["tags"] == ["boot\uff1aall", "pricing"], first.text
    second = client.delete(f"/documents/{doc['id']}/tags/" + quote("boot\uff1aall"))
    assert second.status_code == 200 and second.json()["tags"] == ["pricing"], second.text
    absent = client.delete(f"/documents/{doc['id']}/tags/" + quote("boot:\u200ball"))
    assert absent.status_code == 422 and "U+200B" in message(absent), absent.text


# ---- what the ingestion worker is given -------------------------------------------------------


def test_markup_at_the_limits_and_deep_html_from_before_them_is_indexed(
    client: TestClient, conn: Conn, db_url: str
) -> None:
    """HTML and TipTap at the write limits convert; an asset's HTML (not checked at write time)
    and a document stored before the limits, both 300 levels deep, are indexed with their text
    instead of failing on RecursionError."""
    html_100 = "<ul><li>" * 50 + "htmlneedle" + "</li></ul>" * 50
    for body in (
        {"title": "H", "content_format": "html", "content_text": html_100},
        {"title": "J", "content_format": "tiptap", "content": tiptap(100)},
    ):
        assert client.post("/documents", json=body).status_code == 201
    deep = "<ul><li>" * 150 + "assetneedle <b>bold</b>" + "</li></ul>" * 150
    conn.execute(
        "INSERT INTO assets (name, asset_type, mime_type, content_text) VALUES ('Deep', 'other', 'text/html', %s)",
        [deep],
    )
    conn.execute(
        "INSERT INTO documents (title, content_format, content_text) VALUES ('Old', 'html', %s)",
        [deep.replace("assetneedle", "oldneedle")],
    )

    stats = Worker(db_url, FakeEmbedder()).run(once=True)

    assert (stats.indexed, stats.failed, stats.retried) == (4, 0, 0)
    text = conn.execute("SELECT string_agg(content, ' ') AS t FROM knowledge_chunks").fetchone()
    assert text is not None
    for needle in ("htmlneedle", "deep", "assetneedle", "bold", "oldneedle"):
        assert needle in text["t"]


def test_the_importer_refuses_deep_html_and_keeps_the_rest(conn: Conn, tmp_path: Path) -> None:
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "deep.html").write_text(f"<html><body>{DEEP_HTML}</body></html>", encoding="utf-8")
    (root / "fine.html").write_text("<html><body><p>fine</p></body></html>", encoding="utf-8")

    result = import_folder(conn, root)

    assert (result.created, len(result.errors)) == (1, 1), result
    assert "deep.html" in result.errors[0] and "content_text" in result.errors[0]
    assert "limit is 100" in result.errors[0]
    titles = [r["source_path"] for r in conn.execute("SELECT source_path FROM documents")]
    assert titles == ["kb/fine.html"]
    assert [r["name"] for r in conn.execute("SELECT name FROM document_folders")] == ["kb"]
