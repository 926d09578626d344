"""Assets, both folder trees and tags through the API, on a real PostgreSQL: asset round
trips and filters, folder create / rename / move / delete with the cascade and the counts,
and tag editing and counting."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import create_app

from .apiclient import local_client

Conn = psycopg.Connection[dict[str, Any]]
TREES = [("document", "/document-folders", "/documents"), ("asset", "/asset-folders", "/assets")]


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


def _item(
    client: TestClient, items: str, title: str, folder_id: str | None = None, tags: list[str] | None = None
) -> str:
    body: dict[str, Any] = {"folder_id": folder_id, "tags": tags or []}
    if items == "/documents":
        body |= {"title": title, "content_text": "x"}
    else:
        body |= {"name": title, "asset_type": "sop", "content_text": "x"}
    r = client.post(items, json=body)
    assert r.status_code == 201, r.text
    item_id: str = r.json()["id"]
    return item_id


def _folder(client: TestClient, folders: str, name: str, parent_id: str | None = None) -> str:
    r = client.post(folders, json={"name": name, "parent_id": parent_id})
    assert r.status_code == 201, r.text
    folder_id: str = r.json()["id"]
    return folder_id


# ---- assets ----------------------------------------------------------------------------------


def test_asset_round_trip_and_partial_update(client: TestClient, conn: Conn) -> None:
    created = client.post(
        "/assets",
        json={
            "name": "Logo",
            "asset_type": "image",
            "storage_path": "media/logo.png",
            "mime_type": "image/png",
            "size_bytes": 12345,
            "description": "The logo, ✓",
            "tags": ["brand", "brand"],
            "metadata": {"w": 512},
        },
    )
    assert created.status_code == 201, created.text
    asset = created.json()
    assert (asset["asset_type"], asset["size_bytes"], asset["tags"], asset["metadata"]) == (
        "image",
        12345,
        ["brand"],
        {"w": 512},
    )
    assert asset["folder_path"] == "/" and asset["embedding_status"] == "pending"

    conn.execute("UPDATE assets SET embedding_status = 'indexed' WHERE id = %s", [asset["id"]])
    pinned = client.patch(f"/assets/{asset['id']}", json={"pinned": True, "tags": ["brand", "logo"]}).json()
    assert pinned["pinned"] and pinned["embedding_status"] == "indexed"
    assert pinned["description"] == "The logo, ✓" and pinned["storage_path"] == "media/logo.png"
    described = client.patch(f"/assets/{asset['id']}", json={"description": None}).json()
    assert described["description"] is None and described["embedding_status"] == "pending"

    link = client.post("/assets", json={"name": "Site", "asset_type": "link", "url": "https://example.com"})
    assert link.status_code == 201
    unlinked = client.patch(f"/assets/{link.json()['id']}", json={"url": None})
    assert unlinked.status_code == 409 and "url" in unlinked.json()["detail"]  # the stored type needs it
    assert client.get(f"/assets/{link.json()['id']}").json()["url"] == "https://example.com"


def test_asset_filters_archive_and_delete(client: TestClient) -> None:
    sop = _item(client, "/assets", "SOP", tags=["boot:all"])
    client.post("/assets", json={"name": "Video", "asset_type": "video", "storage_path": "v.mp4"})
    client.post("/assets", json={"name": "Script", "asset_type": "script", "content_text": "print(1)"})

    def names(**params: Any) -> list[str]:
        body = client.get("/assets", params=params).json()
        assert body["count"] == len(body["data"])
        return sorted(a["name"] for a in body["data"])

    assert names() == ["SOP", "Script", "Video"]
    assert names(asset_type="video") == ["Video"]
    assert names(tags_any=["boot:all"]) == ["SOP"]
    assert client.get("/assets", params={"asset_type": "movie"}).status_code == 422

    client.post(f"/assets/{sop}/archive")
    assert names() == ["Script", "Video"] and names(archived="true") == ["SOP"]
    client.post(f"/assets/{sop}/unarchive")
    assert names(archived="true") == []
    assert client.delete(f"/assets/{sop}").status_code == 204
    assert names(archived="any") == ["Script", "Video"]
    page = client.get("/assets", params={"limit": 1, "offset": 1}).json()
    assert page["count"] == 2 and len(page["data"]) == 1


# ---- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tree, folders, items", TREES)
def test_folder_tree_with_counts(client: TestClient, tree: str, folders: str, items: str) -> None:
    ops = _folder(client, folders, "Ops")
    sales = _folder(client, folders, "Sales", ops)
    emea = _folder(client, folders, "EMEA", sales)
    _folder(client, folders, "Archive")
    _item(client, items, "a", ops)
    _item(client, items, "b", sales)
    _item(client, items, "c", emea)
    _item(client, items, "d", emea)
    archived = _item(client, items, "e", emea)
    client.post(f"{items}/{archived}/archive")
    _item(client, items, "unfiled")

    found = client.get(folders).json()
    assert found["count"] == 4 and found["unfiled_count"] == 1
    assert [n["name"] for n in found["data"]] == ["Archive", "Ops"]
    ops_node = found["data"][1]
    assert (ops_node["path"], ops_node["item_count"], ops_node["total_item_count"]) == ("/Ops", 1, 4)
    sales_node = ops_node["children"][0]
    assert (sales_node["name"], sales_node["item_count"], sales_node["total_item_count"]) == ("Sales", 1, 3)
    emea_node = sales_node["children"][0]
    assert (emea_node["path"], emea_node["item_count"], emea_node["children"]) == ("/Ops/Sales/EMEA", 2, [])

    assert client.get(f"{folders}/{emea}").json()["path"] == "/Ops/Sales/EMEA"


@pytest.mark.parametrize("tree, folders, items", TREES)
def test_rename_and_move(client: TestClient, tree: str, folders: str, items: str) -> None:
    ops = _folder(client, folders, "Ops")
    sales = _folder(client, folders, "Sales", ops)
    other = _folder(client, folders, "Other")
    item = _item(client, items, "a", sales)

    renamed = client.patch(f"{folders}/{sales}", json={"name": "Revenue"})
    assert renamed.status_code == 200 and renamed.json()["path"] == "/Ops/Revenue"
    assert client.get(f"{items}/{item}").json()["folder_path"] == "/Ops/Revenue"

    moved = client.patch(f"{folders}/{sales}", json={"parent_id": other})
    assert moved.json()["path"] == "/Other/Revenue"
    to_root = client.patch(f"{folders}/{sales}", json={"parent_id": None})
    assert to_root.json()["path"] == "/Revenue" and to_root.json()["parent_id"] is None
    both = client.patch(f"{folders}/{sales}", json={"parent_id": ops, "name": "Sales"})
    assert both.json()["path"] == "/Ops/Sales"

    clash = client.patch(f"{folders}/{other}", json={"name": "ops"})
    assert clash.status_code == 409 and "ops" in clash.json()["detail"]
    clash = client.post(folders, json={"name": "SALES", "parent_id": ops})
    assert clash.status_code == 409 and "/Ops" in clash.json()["detail"]
    assert client.post(folders, json={"name": "SALES"}).status_code == 201  # another parent: fine

    cycle = client.patch(f"{folders}/{ops}", json={"parent_id": sales})
    assert cycle.status_code == 409
    assert ops in cycle.json()["detail"] and sales in cycle.json()["detail"]
    assert client.get(f"{folders}/{ops}").json()["parent_id"] is None


@pytest.mark.parametrize("tree, folders, items", TREES)
def test_delete_folder_cascades_and_moves_items_to_the_root(
    client: TestClient, conn: Conn, tree: str, folders: str, items: str
) -> None:
    ops = _folder(client, folders, "Ops")
    sales = _folder(client, folders, "Sales", ops)
    emea = _folder(client, folders, "EMEA", sales)
    keep = _folder(client, folders, "Keep")
    inside = [_item(client, items, "a", ops), _item(client, items, "b", emea), _item(client, items, "c", emea)]
    client.post(f"{items}/{inside[2]}/archive")
    outside = _item(client, items, "d", keep)

    deleted = client.delete(f"{folders}/{sales}")
    assert deleted.status_code == 200
    assert deleted.json() == {"folders_deleted": 2, "items_moved_to_root": 2}
    assert client.get(f"{folders}/{emea}").status_code == 404
    for item in inside[1:]:
        moved = client.get(f"{items}/{item}").json()
        assert moved["folder_id"] is None and moved["folder_path"] == "/"
    assert client.get(f"{items}/{inside[0]}").json()["folder_path"] == "/Ops"

    deleted = client.delete(f"{folders}/{ops}").json()
    assert deleted == {"folders_deleted": 1, "items_moved_to_root": 1}
    table = "documents" if tree == "document" else "assets"
    assert conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone() == {"n": 4}  # nothing lost
    assert client.get(f"{items}/{outside}").json()["folder_path"] == "/Keep"
    tree_now = client.get(folders).json()
    assert tree_now["count"] == 1 and tree_now["unfiled_count"] == 2  # the archived one is not counted
    assert client.delete(f"{folders}/{ops}").status_code == 404


def test_the_two_trees_are_separate(client: TestClient) -> None:
    doc_folder = _folder(client, "/document-folders", "Shared")
    assert client.post("/asset-folders", json={"name": "Shared"}).status_code == 201
    wrong = client.post("/assets", json={"name": "x", "folder_id": doc_folder})
    assert wrong.status_code == 404 and "folder_id" in wrong.json()["detail"]
    assert client.get(f"/asset-folders/{doc_folder}").status_code == 404


# ---- tags ------------------------------------------------------------------------------------


def test_tag_editing_on_documents_and_assets(client: TestClient) -> None:
    doc = _item(client, "/documents", "d", tags=["pricing"])
    asset = _item(client, "/assets", "a")

    assert client.post(f"/documents/{doc}/tags/boot:all").json()["tags"] == ["pricing", "boot:all"]
    assert client.post(f"/documents/{doc}/tags/boot:all").json()["tags"] == ["pricing", "boot:all"]
    assert client.post(f"/documents/{doc}/tags/Pricing").json()["tags"] == ["pricing", "boot:all", "Pricing"]
    assert client.delete(f"/documents/{doc}/tags/Pricing").json()["tags"] == ["pricing", "boot:all"]
    assert client.delete(f"/documents/{doc}/tags/absent").json()["tags"] == ["pricing", "boot:all"]
    slash = client.post(f"/documents/{doc}/tags/team/ops").json()
    assert slash["tags"][-1] == "team/ops"

    decomposed = unicodedata.normalize("NFD", "café")
    added = client.post(f"/assets/{asset}/tags/{decomposed}").json()
    assert added["tags"] == ["café"] and added["tags"][0] == unicodedata.normalize("NFC", "café")
    put = client.put(f"/assets/{asset}/tags", json={"tags": ["boot:scout", "boot:all", "boot:scout"]})
    assert put.json() == {"id": asset, "kind": "asset", "tags": ["boot:scout", "boot:all"]}
    assert client.get(f"/assets/{asset}").json()["tags"] == ["boot:scout", "boot:all"]

    missing = "00000000-0000-4000-8000-000000000000"
    assert client.post(f"/documents/{missing}/tags/x").status_code == 404
    assert client.put(f"/assets/{missing}/tags", json={"tags": []}).status_code == 404


def test_tag_counts_and_prefix(client: TestClient) -> None:
    _item(client, "/documents", "d1", tags=["boot:all", "pricing"])
    _item(client, "/documents", "d2", tags=["boot:all", "boot:scout"])
    archived = _item(client, "/documents", "d3", tags=["boot:all", "old"])
    client.post(f"/documents/{archived}/archive")
    _item(client, "/assets", "a1", tags=["boot:all", "pricing"])

    found = client.get("/tags").json()
    assert found["count"] == 3
    assert found["data"] == [
        {"tag": "boot:all", "documents": 2, "assets": 1},
        {"tag": "boot:scout", "documents": 1, "assets": 0},
        {"tag": "pricing", "documents": 1, "assets": 1},
    ]
    boot = client.get("/tags", params={"prefix": "boot:"}).json()
    assert [t["tag"] for t in boot["data"]] == ["boot:all", "boot:scout"]
    assert client.get("/tags", params={"prefix": "BOOT:"}).json()["count"] == 0
    assert client.get("/tags", params={"prefix": "%"}).json()["count"] == 0


def test_the_hundred_and_first_tag_is_refused(client: TestClient) -> None:
    doc = _item(client, "/documents", "d", tags=[f"t{i}" for i in range(100)])
    r = client.post(f"/documents/{doc}/tags/one-more")
    assert r.status_code == 422 and "100" in r.json()["detail"]
    assert len(client.get(f"/documents/{doc}").json()["tags"]) == 100
    assert client.post(f"/documents/{doc}/tags/t5").status_code == 200  # already there: no change
