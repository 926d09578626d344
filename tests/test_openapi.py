"""The OpenAPI document lists what each route answers, and methods are handled as it says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from knowledge.api import create_app

from .apiclient import local_client


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/documents/markdown", "POST"),  # a literal path, not /documents/{document_id}
        ("GET", "/documents/markdown", "POST"),
        ("OPTIONS", "/documents", "GET, HEAD, POST"),
        ("PUT", "/documents/5f0c2b9e-7d41-4c1e-9a57-3d2f9b7c1a10", "DELETE, GET, HEAD, PATCH"),
        ("DELETE", "/search", "GET, HEAD"),
        ("POST", "/documents/5f0c2b9e-7d41-4c1e-9a57-3d2f9b7c1a10/tags/a", "DELETE, POST"),
    ],
)
def test_a_method_a_path_does_not_take_is_405_naming_those_it_does(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    if method == "POST" and "/tags/" in path:  # taken: answered by the route (404 for this id)
        assert client.request(method, path).status_code == 404
        return
    r = client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert method in r.json()["detail"] and allow in r.json()["detail"]


def test_undocumented_paths_are_left_to_the_router(client: TestClient) -> None:
    assert client.get("/nowhere").status_code == 404
    assert client.get("/").status_code == 200  # the search page, not in the document


def test_every_operation_documents_its_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["Error"]["required"] == ["detail"]
    for path, method, op in _operations(schema):
        statuses = set(op["responses"])
        assert {"401", "403", "503"} <= statuses, (method, path)
        if "{" in path or op.get("requestBody"):
            assert {"404", "422"} <= statuses, (method, path)
        if method != "get":
            assert "409" in statuses, (method, path)
        if op.get("requestBody"):
            assert {"400", "413"} <= statuses, (method, path)
        if "422" in statuses:
            members = op["responses"]["422"]["content"]["application/json"]["schema"]["anyOf"]
            assert {"$ref": "#/components/schemas/Error"} in members
        for parameter in op.get("parameters", []):  # a parameter is left out, never null
            assert "null" not in str(parameter["schema"].get("anyOf", "")), (method, path, parameter["name"])


def test_the_documented_patterns_are_the_checks(client: TestClient) -> None:
    """The tag and title patterns accept exactly what the service accepts, character by
    character over the Basic Multilingual Plane (the rest is checked in test_hostile_input)."""
    from knowledge.errors import InvalidInput
    from knowledge.store.validation import check_name, normalize_tag

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    tag = re.compile(schemas["DocumentCreate"]["properties"]["tags"]["items"]["pattern"])
    title = re.compile(schemas["DocumentCreate"]["properties"]["title"]["pattern"])

    def accepted(check: Any, value: str) -> bool:
        try:
            check(value)
        except InvalidInput:
            return False
        return True

    for cp in [*range(0xD800), *range(0xE000, 0x10000)]:
        ch = chr(cp)
        assert bool(tag.fullmatch(f"a{ch}b")) == accepted(normalize_tag, f"a{ch}b"), hex(cp)
        assert bool(title.fullmatch(ch)) == accepted(lambda v: check_name("t", v, max_chars=10), ch), hex(cp)


def test_a_malformed_if_match_writes_nothing(client: TestClient) -> None:
    doc = client.post("/documents", json={"title": "Refunds", "content_text": "30 days."}).json()
    r = client.patch(f"/documents/{doc['id']}", json={"title": "Changed"}, headers={"If-Match": "0"})
    assert r.status_code == 412 and "not an ETag" in r.json()["detail"]
    assert client.get(f"/documents/{doc['id']}").json()["title"] == "Refunds"
