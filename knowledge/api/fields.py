"""What the API's checks accept, said in its OpenAPI document: the patterns and lengths of tags,
titles, names and slugs, and the fields that may be left out but not sent as null.

The checks themselves stay in knowledge.store.validation, knowledge.search.boot and knowledge.store.versions, with
their messages; these rules only describe them (`json_schema_extra`), so that a client generated
from the document, or a fuzzer, sends what the service takes. A rule is applied to the string
schema wherever it sits: alone, as the items of a list, or inside `anyOf` with null.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from knowledge.store.validation import MAX_TAG_CHARS, char_class, name_pattern, tag_pattern

__all__ = [
    "COMPONENTS",
    "FOLDER_ID",
    "FOLDER_ID_PATTERN",
    "IF_MATCH",
    "JSON_OBJECT",
    "NOT_BLANK",
    "SLUG",
    "TAG",
    "TEXT",
    "TIPTAP",
    "combined",
    "content_formats",
    "drop_null",
    "name",
    "no_null",
    "not_blank_pattern",
    "rule",
    "string_rule",
]

Schema = dict[str, Any]


def rule(kind: str, **constraints: Any) -> Callable[[Schema], None]:
    """A `json_schema_extra` that adds `constraints` (values, or callables giving them at
    schema time) to the schema of type `kind` (string, integer, number) of a field or
    parameter."""

    def apply(schema: Schema) -> None:
        if schema.get("type") == kind:
            schema.update({k: v() if callable(v) else v for k, v in constraints.items()})
        if isinstance(schema.get("items"), dict):
            apply(schema["items"])
        for member in schema.get("anyOf", []):
            apply(member)

    return apply


def string_rule(**constraints: Any) -> Callable[[Schema], None]:
    """`rule` for strings."""
    return rule("string", **constraints)


TEXT = string_rule(pattern="^[^\\u0000]*$")
"""Text that PostgreSQL can store: no NUL (nor a lone surrogate, which UTF-8 cannot carry)."""
TAG = string_rule(pattern=tag_pattern, minLength=1, maxLength=MAX_TAG_CHARS)
SLUG = string_rule(pattern="^[a-z0-9][a-z0-9-]{0,62}$")


@functools.cache
def not_blank_pattern() -> str:
    """Storable text with at least one character that is not whitespace (as str.strip sees it:
    spelled out, since `\\s` means other things in other regular-expression engines)."""
    return f"^[^\\u0000]*[^{char_class(lambda ch: ch == chr(0) or ch.isspace())}][^\\u0000]*$"


NOT_BLANK = string_rule(pattern=not_blank_pattern)
"""Storable text with at least one non-space character."""
FOLDER_ID_PATTERN = "^(root|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})$"
FOLDER_ID = string_rule(pattern=FOLDER_ID_PATTERN)
"""A folder's UUID or `root`."""
IF_MATCH = string_rule(pattern='^[ \\t]*(\\*|(W/)?"[^"]*"([ \\t]*,[ \\t]*(W/)?"[^"]*")*)[ \\t]*$')
"""`*` or comma-separated entity tags, spaces and tabs around them (knowledge.store.versions)."""


def name(max_chars: int, *, also: str = "") -> Callable[[Schema], None]:
    """A title or name as `knowledge.validation.check_name` takes it, without the characters
    of `also`."""
    return string_rule(pattern=lambda: name_pattern(also), minLength=1, maxLength=max_chars)


def no_null(*fields: str) -> Callable[[Schema], None]:
    """A model's `json_schema_extra`: `fields` may be left out, but null is refused (a
    `before` validator says so), so their schemas do not offer null."""

    def apply(schema: Schema) -> None:
        for field in fields:
            prop = schema.get("properties", {}).get(field)
            if prop is not None:
                drop_null(prop)

    return apply


def drop_null(schema: Schema) -> None:
    """Take null out of `schema`'s anyOf (in place), and a null default with it."""
    if "anyOf" not in schema:
        return
    members = [m for m in schema["anyOf"] if m.get("type") != "null"]
    if len(members) == len(schema["anyOf"]):
        return
    del schema["anyOf"]
    if len(members) == 1:
        schema.update(members[0])
    else:
        schema["anyOf"] = members
    if schema.get("default", "") is None:
        del schema["default"]


def combined(*rules: Callable[[Schema], None]) -> Callable[[Schema], None]:
    """One `json_schema_extra` applying `rules` in turn."""

    def apply(schema: Schema) -> None:
        for each in rules:
            each(schema)

    return apply


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_STORABLE = "^[^\\u0000]*$"
COMPONENTS: dict[str, Schema] = {
    "JsonValue": {
        "description": "Any JSON value PostgreSQL's jsonb stores: no NUL in strings or keys.",
        "anyOf": [
            {"type": "string", "pattern": _STORABLE},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": _ref("JsonValue")},
            _ref("JsonObject"),
        ],
    },
    "JsonObject": {
        "type": "object",
        "propertyNames": {"pattern": _STORABLE},
        "additionalProperties": _ref("JsonValue"),
    },
    "TipTapNode": {
        "description": "A TipTap/ProseMirror node: a non-empty string type; a text node has text; "
        "content lists nodes; attrs is an object; marks are objects with a type.",
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "minLength": 1, "pattern": _STORABLE},
            "text": {"type": "string", "pattern": _STORABLE},
            "attrs": _ref("JsonObject"),
            "marks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "propertyNames": {"pattern": _STORABLE},
                    "properties": {"type": {"type": "string", "pattern": _STORABLE}, "attrs": _ref("JsonObject")},
                    "additionalProperties": _ref("JsonValue"),
                },
            },
            "content": {"type": "array", "items": _ref("TipTapNode")},
        },
        "propertyNames": {"pattern": _STORABLE},
        "additionalProperties": _ref("JsonValue"),
        "if": {"properties": {"type": {"const": "text"}}},
        "then": {"required": ["text"]},
    },
    "TipTapDocument": {
        "description": "A TipTap document: a node of type doc, nested at most 100 levels.",
        "allOf": [_ref("TipTapNode"), {"properties": {"type": {"const": "doc"}}}],
    },
}
"""Schemas the rules below refer to; knowledge.api.openapi adds them to the document."""

JSON_OBJECT = rule("object", allOf=[_ref("JsonObject")])
"""A metadata object: any JSON that jsonb stores."""
TIPTAP = rule("object", allOf=[_ref("TipTapDocument")])


def content_formats(*, partial: bool) -> Callable[[Schema], None]:
    """A document model's `json_schema_extra`: with content_format tiptap, content (a TipTap
    document) and no content_text; with markdown or html, content_text and no content. A
    create without content_format is markdown; an update without it keeps the stored format
    and may change the content of that format (the schema does not know it). The service
    also lets an update switch between markdown and html without new text."""

    def given(*formats: str) -> Schema:
        return {"properties": {"content_format": {"enum": list(formats)}}, "required": ["content_format"]}

    doc: Schema = {
        "required": ["content"],
        "properties": {"content": {"type": "object"}, "content_text": {"type": "null"}},
    }
    text: Schema = {
        "required": ["content_text"],
        "properties": {"content_text": {"type": "string"}, "content": {"type": "null"}},
    }

    def apply(schema: Schema) -> None:
        if partial:
            schema["allOf"] = [{"if": given("tiptap"), "then": doc}, {"if": given("markdown", "html"), "then": text}]
        else:
            schema["allOf"] = [{"if": given("tiptap"), "then": doc, "else": text}]

    return apply
