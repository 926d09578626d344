"""Checks shared by documents, assets, folders and tags, and the driver errors they forestall.

Every check raises InvalidInput (422) or TooLarge (413) with a message that starts with the
field's name and says what would be accepted. The checks run before any write, so a
rejected value stores nothing; `data_error` converts what PostgreSQL still refuses.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import errors as pg

from embeddings.extract import ExtractError, validate_tiptap

from .errors import InvalidInput, KnowledgeError, TooLarge

__all__ = [
    "DATA_ERRORS",
    "MAX_CONTENT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "TAG_RULE",
    "check_json",
    "check_name",
    "check_text",
    "check_tiptap",
    "data_error",
    "normalize_tag",
    "normalize_tags",
]

MAX_CONTENT_BYTES = 8 * 1024 * 1024
"""A document's or asset's content: UTF-8 bytes of content_text, or of the compact JSON text."""
MAX_TAGS = 100
MAX_TAG_CHARS = 100
MAX_JSON_DEPTH = 200
"""Nesting of metadata and TipTap content; deeper JSON is refused before it is walked."""

TAG_RULE = (
    f"a tag is 1..{MAX_TAG_CHARS} characters after NFC normalisation, with no whitespace "
    "and no control characters (e.g. 'boot:all', 'pricing')"
)


def _unstorable(value: str) -> str | None:
    """Why PostgreSQL text cannot hold `value`, or None when it can."""
    nul = value.find("\x00")
    if nul >= 0:
        return f"contains a NUL character at offset {nul} (PostgreSQL text cannot store NUL)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid UTF-8 (lone surrogate at offset {e.start})"
    return None


def check_text(field: str, value: str, *, max_bytes: int | None = None) -> None:
    """Raise InvalidInput when `value` holds NUL or a lone surrogate, TooLarge when its UTF-8
    encoding is longer than `max_bytes`."""
    problem = _unstorable(value)
    if problem:
        raise InvalidInput(f"{field} {problem}")
    if max_bytes is not None and len(value) * 4 > max_bytes:
        size = len(value.encode("utf-8"))
        if size > max_bytes:
            raise TooLarge(f"{field} is {size} bytes; the limit is {max_bytes} bytes ({_mib(max_bytes)})")


def check_name(field: str, value: str, *, max_chars: int) -> str:
    """A title or name: not blank, at most `max_chars` characters, storable. Returns it unchanged."""
    if not value.strip():
        raise InvalidInput(f"{field} must not be empty or blank; give 1..{max_chars} characters")
    if len(value) > max_chars:
        raise InvalidInput(f"{field} is {len(value)} characters; the limit is {max_chars}")
    check_text(field, value)
    return value


def check_json(field: str, value: Any, *, max_bytes: int | None = None) -> None:
    """Raise InvalidInput when `value` holds what jsonb refuses (NUL, lone surrogates, NaN or
    infinities) or nests deeper than MAX_JSON_DEPTH; TooLarge when its compact JSON text is
    longer than `max_bytes` in UTF-8. The message gives the path, e.g. `content.content[2].text`."""
    stack: list[tuple[str, Any, int]] = [(field, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"{path}: JSON nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            problem = _unstorable(item)
            if problem:
                raise InvalidInput(f"{path} {problem}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidInput(f"{path} is {item}: JSON numbers must be finite")
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{path}: JSON object keys must be strings, got {key!r}")
                problem = _unstorable(key)
                if problem:
                    raise InvalidInput(f"{path}: key {key!r} {problem}")
                stack.append((f"{path}.{key}", sub, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub, depth + 1) for i, sub in enumerate(item))
        elif item is not None and not isinstance(item, bool | int | float):
            raise InvalidInput(f"{path}: {type(item).__name__} is not a JSON value")
    if max_bytes is not None:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise TooLarge(f"{field} is {size} bytes as JSON; the limit is {max_bytes} bytes ({_mib(max_bytes)})")


def check_tiptap(field: str, doc: Any) -> None:
    """A TipTap/ProseMirror document: a JSON object of at most MAX_CONTENT_BYTES whose
    structure `embeddings.extract.validate_tiptap` accepts. Raises InvalidInput with the path."""
    if not isinstance(doc, dict):
        raise InvalidInput(f"{field} must be a TipTap JSON object like {{\"type\": \"doc\", \"content\": [...]}}")
    check_json(field, doc, max_bytes=MAX_CONTENT_BYTES)
    try:
        validate_tiptap(doc)
    except ExtractError as e:
        raise InvalidInput(f"{field} is not a valid TipTap document: {e}") from e


def normalize_tag(tag: str, field: str = "tag") -> str:
    """The tag in NFC. Raises InvalidInput naming the tag when it breaks the tag rule."""
    if not isinstance(tag, str):
        raise InvalidInput(f"{field} must be a string; {TAG_RULE}")
    value = unicodedata.normalize("NFC", tag)
    if not value:
        raise InvalidInput(f"{field} is empty; {TAG_RULE}")
    if len(value) > MAX_TAG_CHARS:
        raise InvalidInput(f"{field} {value[:20]!r}... is {len(value)} characters; {TAG_RULE}")
    for i, ch in enumerate(value):
        if ch.isspace():
            raise InvalidInput(f"{field} {value!r} contains whitespace at offset {i}; {TAG_RULE}")
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise InvalidInput(f"{field} {value!r} contains a control character at offset {i}; {TAG_RULE}")
    return value


def normalize_tags(tags: Iterable[str], field: str = "tags") -> list[str]:
    """The tags normalised, duplicates removed (first occurrence kept, case kept).
    Raises InvalidInput for a bad tag or more than MAX_TAGS distinct tags."""
    if isinstance(tags, str):
        raise InvalidInput(f"{field} must be a list of tags, not a string; {TAG_RULE}")
    seen: dict[str, None] = {}
    for i, tag in enumerate(tags):
        seen.setdefault(normalize_tag(tag, f"{field}[{i}]"), None)
    if len(seen) > MAX_TAGS:
        raise InvalidInput(f"{field}: {len(seen)} distinct tags; at most {MAX_TAGS} per item")
    return list(seen)


DATA_ERRORS = (pg.CheckViolation, pg.DataException, pg.ProgramLimitExceeded)
"""What PostgreSQL raises for bad data; catch these around a write and pass them to data_error."""


def data_error(e: psycopg.Error, what: str) -> KnowledgeError:
    """Our error for one of DATA_ERRORS raised while writing `what` (e.g. "document"): the
    fallback behind the checks above, so that bad data is a 4xx, never a 500."""
    detail = (e.diag.message_primary or str(e)).strip()
    if isinstance(e, pg.CheckViolation):
        return InvalidInput(f"{what} rejected: {detail} (constraint {e.diag.constraint_name})")
    if isinstance(e, pg.CharacterNotInRepertoire | pg.UntranslatableCharacter):
        return InvalidInput(f"{what} holds text PostgreSQL cannot store (NUL or invalid UTF-8): {detail}")
    if isinstance(e, pg.ProgramLimitExceeded):
        return TooLarge(f"{what} is too large for PostgreSQL: {detail}")
    return InvalidInput(f"{what} has a value PostgreSQL rejects: {detail}")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"
