"""The OpenAPI document as the service behaves, and method handling that agrees with it.

FastAPI documents only the 422 of its own request validation; this module adds every error
status a route can answer (`document_errors`), all with one `Error` body, and a middleware
(`MethodTable`) that answers a method a documented path does not take with 405 and an
`Allow` header naming every method of that path. Starlette's router names only the methods of
the first route whose pattern matched, and lets a path parameter swallow a literal path: PATCH
/documents/markdown would reach PATCH /documents/{document_id} and fail as a bad UUID.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from knowledge.api.fields import COMPONENTS, drop_null

__all__ = ["ERROR_SCHEMA", "MethodTable", "document_errors"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "description": "What went wrong, naming the field or item and what is accepted."},
        "field": {
            "type": "string",
            "description": "The parameter or body field the error concerns (as `detail` names it), if any.",
        },
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_WRITES = frozenset({"post", "put", "patch", "delete"})

_STATUSES: dict[str, str] = {
    "400": "The request body could not be read as the content type it names.",
    "401": "No API key where one is needed, or a key that is unknown or revoked.",
    "403": "The key lacks the scope this route needs, writes as another agent than its own, or the "
    "request came from another site.",
    "404": "An item this request names (in the path or the body) does not exist.",
    "409": "The change conflicts with what is stored: a name or source path taken, a folder moved "
    "into itself, a retry of an item that has not failed, a model in use.",
    "413": "The request body or the content is larger than the service accepts.",
    "422": "A parameter or field is invalid: FastAPI's list of validation errors, or one message "
    "naming the field and what is accepted.",
    "503": "The database is unreachable or the service is not ready: retry later.",
}


def _error(status: str) -> dict[str, Any]:
    schema: dict[str, Any] = _ERROR_REF
    if status == "422":
        schema = {"anyOf": [{"$ref": "#/components/schemas/HTTPValidationError"}, _ERROR_REF]}
    return {"description": _STATUSES[status], "content": {"application/json": {"schema": schema}}}


def _merged(standard: dict[str, Any], documented: dict[str, Any]) -> dict[str, Any]:
    """The standard error response, keeping the route's own description and example (FastAPI's
    generated 422 text, "Validation Error", is not kept)."""
    merged = dict(standard)
    if documented.get("description") not in (None, "Validation Error"):
        merged["description"] = documented["description"]
    example = documented.get("content", {}).get("application/json", {}).get("example")
    if example is not None:
        merged["content"] = {"application/json": {**standard["content"]["application/json"], "example": example}}
    return merged


def document_errors(schema: dict[str, Any], public: Callable[[str], bool]) -> dict[str, Any]:
    """Add to each operation of `schema` (in place) the error statuses it can answer:
    401, 403 and 503 everywhere; 404 and 422 where it takes parameters or a body; 409 on
    writes; 413 where it takes a body. Their bodies are `{"detail": "..."}` (Error), and a 422
    may also be FastAPI's validation error list. The API key is the security scheme of every
    path but those `public` accepts."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update({"Error": ERROR_SCHEMA, **COMPONENTS})
    components["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (`hq-knowledge keys create`) as `Authorization: Bearer <key>`. A service "
                "on a loopback address without keys answers its local operator without one."
            ),
        }
    }
    schema["security"] = [{"apiKey": []}]
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            if public(path):
                operation["security"] = []
            # A parameter left out is None to the route; it cannot be sent as null (a client
            # would send the text 'null'), so its schema does not offer null.
            for parameter in operation.get("parameters", []):
                drop_null(parameter.get("schema", {}))
            takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
            needed = ["401", "403", "503"]
            if takes_input or "{" in path:
                needed += ["404", "422"]
            if method in _WRITES:
                needed.append("409")
            if operation.get("requestBody"):
                needed += ["400", "413"]
            responses = operation.setdefault("responses", {})
            for status in needed:
                responses[status] = _merged(_error(status), responses.get(status, {}))
            for status, response in responses.items():  # a route's own 412 and the like
                body = response.get("content", {}).get("application/json")
                if status >= "400" and body is not None and "schema" not in body:
                    body["schema"] = _ERROR_REF
            operation["responses"] = dict(sorted(responses.items()))
    return schema


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


class MethodTable:
    """ASGI middleware: a request for a documented path with a method that path does not take
    gets 405 with the path's methods in `Allow`. A literal path (/documents/markdown) answers
    only for its own methods, never for a pattern it also matches (/documents/{document_id}).
    `paths` gives the OpenAPI paths object, read at the first request."""

    def __init__(self, app: ASGIApp, *, paths: Callable[[], Mapping[str, Any]]) -> None:
        self.app = app
        self._paths = paths
        self._literal: dict[str, frozenset[str]] | None = None
        self._patterns: list[tuple[re.Pattern[str], frozenset[str]]] = []

    def _build(self) -> dict[str, frozenset[str]]:
        literal: dict[str, frozenset[str]] = {}
        for template, operations in self._paths().items():
            methods = {m.upper() for m in operations if m in {"get", "post", "put", "patch", "delete"}}
            if "GET" in methods:
                methods.add("HEAD")
            if "{" in template:
                self._patterns.append((_pattern(template), frozenset(methods)))
            else:
                literal[template] = frozenset(methods)
        self._literal = literal
        return literal

    def allowed(self, path: str) -> frozenset[str]:
        """The methods documented for `path`; empty for a path the OpenAPI does not describe."""
        literal = self._literal if self._literal is not None else self._build()
        if path in literal:
            return literal[path]
        found: set[str] = set()
        for pattern, methods in self._patterns:
            if pattern.match(path):
                found |= methods
        return frozenset(found)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            allowed = self.allowed(scope["path"])
            if allowed and scope["method"] not in allowed:
                await self._refuse(scope["method"], scope["path"], allowed, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(method: str, path: str, allowed: frozenset[str], send: Send) -> None:
        names = ", ".join(sorted(allowed))
        body = json.dumps({"detail": f"{path} does not take {method}: it takes {names}"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 405,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"allow", names.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
