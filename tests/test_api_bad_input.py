"""Every kind of bad input the API must refuse: a 4xx (never a 500) whose message names the
field and what is accepted, and the database exactly as it was before the request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.api import create_app

from .apiclient import error_message as message
from .apiclient import local_client, rows_snapshot

Conn = psycopg.Connection[dict[str, Any]]
Ids = dict[str, str]

MISSING = "5f0c2b9e-7d41-4c1e-9a57-000000000404"
MIB = 1024 * 1024
TABLES = ("documents", "assets", "document_folders", "asset_folders")
BAD_TIPTAP = {"type": "doc", "content": [{"type": "paragraph", "content": [{"type": "text"}]}]}


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    """With {doc}, {asset}, {parent}, {child}, {aparent}, {achild} for the seeded rows."""
    status: int
    names: tuple[str, ...]
    """Each must appear in the error message (ids as {placeholders} too)."""
    body: Any = None
    """A JSON value, or a function of the seeded ids returning one."""
    raw: bytes | None = None
    """Sent as is, as application/json, instead of `body`."""


def doc(**fields: Any) -> dict[str, Any]:
    return {"title": "T", "content_text": "x", **fields}


CASES = [
    # TipTap structure and the content/format pairing
    Case(
        "tiptap-malformed",
        "POST",
        "/documents",
        422,
        ("content", "content[0].content[0]", "text"),
        doc(content_format="tiptap", content_text=None, content=BAD_TIPTAP),
    ),
    Case(
        "tiptap-not-a-doc",
        "POST",
        "/documents",
        422,
        ("content", '"type" must be "doc"'),
        doc(content_format="tiptap", content_text=None, content={"type": "paragraph"}),
    ),
    Case(
        "tiptap-array",
        "POST",
        "/documents",
        422,
        ("content",),
        doc(content_format="tiptap", content_text=None, content=[{"type": "doc"}]),
    ),
    Case(
        "tiptap-missing",
        "POST",
        "/documents",
        422,
        ("content", "tiptap"),
        doc(content_format="tiptap", content_text=None),
    ),
    Case(
        "tiptap-with-text",
        "POST",
        "/documents",
        422,
        ("content_text",),
        doc(content_format="tiptap", content={"type": "doc"}),
    ),
    Case("markdown-with-json", "POST", "/documents", 422, ("content",), doc(content={"type": "doc"})),
    Case(
        "patch-tiptap-malformed",
        "PATCH",
        "/documents/{doc}",
        422,
        ("content[0].content[0]",),
        {"content_format": "tiptap", "content": BAD_TIPTAP},
    ),
    # sizes
    Case(
        "document-20MB",
        "POST",
        "/documents",
        413,
        ("request body", "limit", "8 MiB"),
        lambda ids: doc(content_text="a" * (20 * MIB)),
    ),
    Case(
        "content_text-9MiB",
        "POST",
        "/documents",
        413,
        ("content_text", "limit", "8 MiB"),
        lambda ids: doc(content_text="é" * (9 * MIB // 2 + 1)),
    ),
    Case(
        "tiptap-9MiB",
        "POST",
        "/documents",
        413,
        ("content", "limit", "8 MiB"),
        lambda ids: doc(
            content_format="tiptap",
            content_text=None,
            content={
                "type": "doc",
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": "a" * (9 * MIB)}]}],
            },
        ),
    ),
    Case(
        "patch-content-9MiB",
        "PATCH",
        "/documents/{doc}",
        413,
        ("content_text", "8 MiB"),
        lambda ids: {"content_text": "a" * (9 * MIB)},
    ),
    # unknown references
    Case("unknown-folder-create", "POST", "/documents", 404, ("folder_id", MISSING), doc(folder_id=MISSING)),
    Case("unknown-folder-patch", "PATCH", "/documents/{doc}", 404, ("folder_id", MISSING), {"folder_id": MISSING}),
    Case("unknown-asset-folder", "POST", "/assets", 404, ("folder_id", MISSING), {"name": "A", "folder_id": MISSING}),
    Case(
        "unknown-agent", "POST", "/documents", 404, ("created_by_agent_id", MISSING), doc(created_by_agent_id=MISSING)
    ),
    Case("unknown-document", "PATCH", f"/documents/{MISSING}", 404, (MISSING,), {"title": "x"}),
    Case(
        "unknown-parent-folder",
        "POST",
        "/document-folders",
        404,
        ("parent_id", MISSING),
        {"name": "X", "parent_id": MISSING},
    ),
    Case(
        "unknown-move-target", "PATCH", "/asset-folders/{achild}", 404, ("parent_id", MISSING), {"parent_id": MISSING}
    ),
    Case("unknown-folder-delete", "DELETE", f"/document-folders/{MISSING}", 404, (MISSING,)),
    Case("unknown-folder-filter", "GET", f"/documents?folder_id={MISSING}", 404, ("folder_id", MISSING)),
    # folder moves and names
    Case(
        "folder-cycle",
        "PATCH",
        "/document-folders/{parent}",
        409,
        ("parent_id", "{parent}", "{child}"),
        lambda ids: {"parent_id": ids["child"]},
    ),
    Case(
        "folder-into-itself",
        "PATCH",
        "/document-folders/{parent}",
        409,
        ("{parent}",),
        lambda ids: {"parent_id": ids["parent"]},
    ),
    Case(
        "asset-folder-cycle",
        "PATCH",
        "/asset-folders/{aparent}",
        409,
        ("{aparent}", "{achild}"),
        lambda ids: {"parent_id": ids["achild"]},
    ),
    Case(
        "folder-name-clash",
        "POST",
        "/document-folders",
        409,
        ("name", "CHILD"),
        lambda ids: {"name": "CHILD", "parent_id": ids["parent"]},
    ),
    Case("folder-name-slash", "POST", "/document-folders", 422, ("name", "/"), {"name": "a/b"}),
    Case("folder-name-blank", "PATCH", "/document-folders/{child}", 422, ("name",), {"name": "  "}),
    Case("folder-name-null", "PATCH", "/document-folders/{child}", 422, ("name", "null"), {"name": None}),
    # tags
    Case("tag-space-path", "POST", "/documents/{doc}/tags/has%20space", 422, ("tag", "whitespace")),
    Case("tag-tab-body", "POST", "/documents", 422, ("tags[1]", "whitespace"), doc(tags=["ok", "a\tb"])),
    Case("tag-101-path", "POST", "/assets/{asset}/tags/" + "t" * 101, 422, ("tag", "100")),
    Case("tag-101-put", "PUT", "/documents/{doc}/tags", 422, ("tags[0]", "100"), {"tags": ["t" * 101]}),
    Case("tag-empty-put", "PUT", "/assets/{asset}/tags", 422, ("tags[0]", "empty"), {"tags": [""]}),
    Case("tag-control-char", "PATCH", "/documents/{doc}", 422, ("tags[0]", "control"), {"tags": ["bell\x07"]}),
    Case("tag-nul", "PUT", "/documents/{doc}/tags", 422, ("tags[0]",), {"tags": ["a\x00"]}),
    Case("tags-101", "POST", "/documents", 422, ("tags", "100"), doc(tags=[f"t{i}" for i in range(101)])),
    Case("tags-not-list", "POST", "/documents", 422, ("tags",), doc(tags="pricing")),
    Case("tag-filter-space", "GET", "/documents?tags_any=a%20b", 422, ("tags_any", "whitespace")),
    # UUIDs
    Case("uuid-path-get", "GET", "/documents/not-a-uuid", 422, ("document_id", "UUID")),
    Case("uuid-path-patch", "PATCH", "/assets/123", 422, ("asset_id",), {"name": "x"}),
    Case("uuid-path-tags", "POST", "/documents/zzz/tags/x", 422, ("document_id",)),
    Case("uuid-path-folder", "DELETE", "/document-folders/xyz", 422, ("folder_id",)),
    Case("uuid-body-folder", "POST", "/documents", 422, ("folder_id", "UUID"), doc(folder_id="nope")),
    Case("uuid-body-parent", "PATCH", "/asset-folders/{achild}", 422, ("parent_id",), {"parent_id": "12-34"}),
    Case("uuid-query-folder", "GET", "/assets?folder_id=nope", 422, ("folder_id", "root")),
    # bytes PostgreSQL text cannot hold, and bodies that are not JSON text
    Case(
        "invalid-utf8",
        "POST",
        "/documents",
        422,
        ("request body", "UTF-8", "offset"),
        raw=b'{"title": "T", "content_format": "html", "content_text": "<p>\xc3\x28</p>"}',
    ),
    Case("binary-garbage", "POST", "/documents", 422, ("request body", "UTF-8"), raw=bytes(range(256)) * 4),
    Case("nul-markdown", "POST", "/documents", 422, ("content_text", "NUL"), doc(content_text="# a\x00b")),
    Case(
        "nul-html",
        "PATCH",
        "/documents/{doc}",
        422,
        ("content_text", "NUL"),
        {"content_format": "html", "content_text": "<p>\x00</p>"},
    ),
    Case("nul-raw-byte", "POST", "/documents", 422, ("body", "JSON"), raw=b'{"title": "T", "content_text": "a\x00b"}'),
    Case(
        "lone-surrogate",
        "POST",
        "/documents",
        422,
        ("content_text", "UTF-8"),
        raw=b'{"title": "T", "content_text": "a\\udc80b"}',
    ),
    Case(
        "surrogate-in-echoed-input",
        "POST",
        "/documents",
        422,
        ("pinned",),
        raw=b'{"title": "T", "content_text": "x", "pinned": "\\ud800"}',
    ),
    Case("nan-in-echoed-input", "POST", "/document-folders", 422, ("name", "string"), raw=b'{"name": NaN}'),
    Case("nul-title", "POST", "/documents", 422, ("title", "NUL"), doc(title="a\x00")),
    Case("nul-asset-text", "POST", "/assets", 422, ("content_text", "NUL"), {"name": "A", "content_text": "\x00"}),
    Case("nul-metadata-value", "POST", "/documents", 422, ("metadata.k", "NUL"), doc(metadata={"k": "\x00"})),
    Case("nul-metadata-key", "POST", "/assets", 422, ("metadata", "NUL"), {"name": "A", "metadata": {"\x00": 1}}),
    Case(
        "nan-metadata",
        "POST",
        "/documents",
        422,
        ("metadata.x", "finite"),
        raw=b'{"title": "T", "content_text": "x", "metadata": {"x": NaN}}',
    ),
    # enums
    Case(
        "unknown-content-format",
        "POST",
        "/documents",
        422,
        ("content_format", "tiptap", "markdown", "html"),
        doc(content_format="rst"),
    ),
    Case(
        "unknown-asset-type",
        "POST",
        "/assets",
        422,
        ("asset_type", "sop", "spreadsheet", "link", "other"),
        {"name": "A", "asset_type": "movie"},
    ),
    Case("unknown-archived", "GET", "/documents?archived=maybe", 422, ("archived", "any")),
    Case("unknown-embedding-status", "GET", "/documents?embedding_status=done", 422, ("embedding_status", "indexed")),
    # titles and names
    Case("title-empty", "POST", "/documents", 422, ("title", "empty"), doc(title="")),
    Case("title-blank", "PATCH", "/documents/{doc}", 422, ("title", "blank"), {"title": " \t "}),
    Case("title-501", "POST", "/documents", 422, ("title", "500"), doc(title="x" * 501)),
    Case("title-null", "PATCH", "/documents/{doc}", 422, ("title", "null"), {"title": None}),
    Case("title-missing", "POST", "/documents", 422, ("title",), {"content_text": "x"}),
    Case("asset-name-501", "PATCH", "/assets/{asset}", 422, ("name", "500"), {"name": "n" * 501}),
    # metadata and other fields
    Case("metadata-array", "POST", "/documents", 422, ("metadata",), doc(metadata=[1, 2])),
    Case("metadata-string", "PATCH", "/assets/{asset}", 422, ("metadata",), {"metadata": "{}"}),
    Case(
        "metadata-too-deep",
        "POST",
        "/documents",
        422,
        ("metadata", "deeper"),
        lambda ids: doc(metadata=json.loads('{"a":' * 300 + "1" + "}" * 300)),
    ),
    Case("link-without-url", "POST", "/assets", 422, ("url", "link"), {"name": "A", "asset_type": "link"}),
    Case("size-negative", "POST", "/assets", 422, ("size_bytes",), {"name": "A", "size_bytes": -1}),
    Case("source-path-read-only", "POST", "/documents", 422, ("source_path",), doc(source_path="kb/x.md")),
    Case("limit-too-big", "GET", "/documents?limit=500", 422, ("limit", "200")),
    Case("offset-negative", "GET", "/assets?offset=-1", 422, ("offset",)),
    Case("offset-past-bigint", "GET", "/documents?offset=99999999999999999999", 422, ("offset",)),
]


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


@pytest.fixture
def ids(client: TestClient) -> Ids:
    """A document, an asset and a parent/child folder pair in each tree."""

    def post(path: str, body: dict[str, Any]) -> str:
        r = client.post(path, json=body)
        assert r.status_code == 201, r.text
        new_id: str = r.json()["id"]
        return new_id

    seeded = {"doc": post("/documents", doc(tags=["pricing"])), "asset": post("/assets", {"name": "A"})}
    seeded["parent"] = post("/document-folders", {"name": "Parent"})
    seeded["child"] = post("/document-folders", {"name": "Child", "parent_id": seeded["parent"]})
    seeded["aparent"] = post("/asset-folders", {"name": "Parent"})
    seeded["achild"] = post("/asset-folders", {"name": "Child", "parent_id": seeded["aparent"]})
    return seeded


def snapshot(conn: Conn) -> dict[str, Any]:
    return rows_snapshot(conn, TABLES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_stores_nothing(client: TestClient, conn: Conn, ids: Ids, case: Case) -> None:
    path = case.path.format(**ids)
    before = snapshot(conn)
    if case.raw is not None:
        response = client.request(case.method, path, content=case.raw, headers={"content-type": "application/json"})
    else:
        body = case.body(ids) if callable(case.body) else case.body
        response = (
            client.request(case.method, path, json=body) if body is not None else client.request(case.method, path)
        )
    assert response.status_code == case.status, response.text[:2000]
    text = message(response)
    for name in case.names:
        assert name.format(**ids) in text, f"{name!r} not in {text[:2000]!r}"
    assert snapshot(conn) == before


def test_every_case_has_a_unique_id() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
