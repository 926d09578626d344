"""Checks shared by documents, assets, folders and tags, and the driver errors they forestall.

Every check raises InvalidInput (422) or TooLarge (413) with a message that starts with the
field's name and says what would be accepted. The checks run before any write, so a
rejected value stores nothing; `data_error` converts what PostgreSQL still refuses.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import errors as pg

from knowledge.errors import InvalidInput, KnowledgeError, TooLarge
from knowledge.ingest.extract import MAX_HTML_DEPTH, ExtractError, html_depth, validate_tiptap
from knowledge.ingest.tiptap import MAX_DEPTH as MAX_TIPTAP_DEPTH
from knowledge.ingest.tiptap import tiptap_depth

__all__ = [
    "DATA_ERRORS",
    "MAX_CONTENT_BYTES",
    "MAX_HTML_DEPTH",
    "MAX_JSON_DEPTH",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_TIPTAP_DEPTH",
    "SLUG_RULE",
    "TAG_RULE",
    "check_html",
    "check_json",
    "check_name",
    "check_slug",
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
"""Nesting of metadata; deeper JSON is refused before it is walked."""
# TipTap content: a node at level MAX_TIPTAP_DEPTH sits at JSON depth 200 (each level is a
# `content` list and a node object); its text, marks and their attrs need a few more.
_TIPTAP_JSON_DEPTH = 2 * MAX_TIPTAP_DEPTH + 8

TAG_RULE = (
    f"a tag is 1..{MAX_TAG_CHARS} characters after NFKC normalisation (which turns "
    "compatibility forms such as the full-width colon '\uff1a' into their plain equivalents), "
    "with no whitespace, no control characters and no invisible characters such as zero-width "
    "spaces, joiners or bidirectional controls (e.g. 'boot:all', 'pricing')"
)

# Invisible code points that are not in category Cf (which is refused whole): the rest of
# Unicode's Default_Ignorable_Code_Point set (combining grapheme joiner, Hangul fillers,
# Mongolian and variation selectors) and the blank Braille pattern.
_INVISIBLE = frozenset(
    [
        0x034F,
        0x115F,
        0x1160,
        0x17B4,
        0x17B5,
        0x180B,
        0x180C,
        0x180D,
        0x180F,
        0x2800,
        0x3164,
        0xFFA0,
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
    ]
)
# Explicit bidirectional embeddings, overrides and isolates: they reorder how the text
# around them is displayed ("Trojan Source"). The marks LRM, RLM and ALM stay allowed.
_BIDI_CONTROLS = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def char_class(refused: Callable[[str], bool]) -> str:
    """A regular-expression character class body (the part between `[^` and `]`) holding
    every code point `refused` accepts, as ranges: ASCII as `\\uXXXX` escapes, the rest as
    literal characters, which Python's re, ECMAScript and Rust's regex all read alike.
    Surrogates are left out (no engine but Python's can name them; JSON text in UTF-8 cannot
    carry them, and `check_text` refuses them)."""
    ranges: list[tuple[int, int]] = []
    # Planes 0-2 and 14: the others hold no control, format, separator or space characters.
    for cp in itertools.chain(range(0xD800), range(0xE000, 0x30000), range(0xE0000, 0xF0000)):
        if refused(chr(cp)):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))

    def literal(cp: int) -> str:
        return f"\\u{cp:04x}" if cp < 0xA0 else chr(cp)

    return "".join(literal(a) if a == b else f"{literal(a)}-{literal(b)}" for a, b in ranges)


def _refused_in_name(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ord(ch) in _BIDI_CONTROLS


def _refused_in_tag(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs", "Cf") or ord(ch) in _INVISIBLE


def _refused_in_tag_as_sent(ch: str) -> bool:
    """Refused itself, or turned into a refused character by NFKC ('\u00a8' becomes a space
    and a combining diaeresis)."""
    return _refused_in_tag(ch) or any(map(_refused_in_tag, unicodedata.normalize("NFKC", ch)))


@functools.cache
def name_pattern(also: str = "") -> str:
    """The regular expression (for the OpenAPI document) of what `check_name` accepts as
    characters: one line, not blank, no control, separator or bidirectional override
    characters, nor any character of `also` ('/' for folder names). The length limit is
    separate."""
    refused = char_class(lambda ch: _refused_in_name(ch) or ch in also)
    blank = char_class(lambda ch: _refused_in_name(ch) or ch in also or ch.isspace())
    return f"^[^{refused}]*[^{blank}][^{refused}]*$"


@functools.cache
def folder_path_pattern() -> str:
    """The regular expression of a folder path ('/Research/Competitors') whose missing folders
    `check_name` accepts as names: white space (tab and line breaks too) is collapsed first,
    so only the other characters refused in a name are refused here."""
    return f"^[^{char_class(lambda ch: _refused_in_name(ch) and not ch.isspace())}]*$"


@functools.cache
def tag_pattern() -> str:
    """The regular expression of the characters a tag may hold as sent (`normalize_tag` also
    checks them after NFKC normalisation, which this pattern also foresees character by
    character)."""
    return f"^[^{char_class(_refused_in_tag_as_sent)}]+$"


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
        raise InvalidInput(f"{field} {problem}", field=field)
    if max_bytes is not None and len(value) * 4 > max_bytes:
        size = len(value.encode("utf-8"))
        if size > max_bytes:
            raise TooLarge(f"{field} is {size} bytes; the limit is {max_bytes} bytes ({_mib(max_bytes)})", field=field)


def _code_point(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def check_name(field: str, value: str, *, max_chars: int) -> str:
    """A title or name: one line of text, not blank, at most `max_chars` characters, storable,
    with no control characters (category Cc: ANSI escapes, BEL, tab, CR, LF...), line or
    paragraph separators, or bidirectional embedding/override/isolate controls, which would
    move the cursor, ring a terminal or reorder what is displayed. Raises InvalidInput naming
    the first such character and its offset.

    Returns the value unchanged: titles are stored as sent, not normalised (NFKC would rewrite
    legitimate text such as '²' or full-width punctuation; tags, which must match exactly,
    are normalised by `normalize_tag`)."""
    if not value.strip():
        raise InvalidInput(f"{field} must not be empty or blank; give 1..{max_chars} characters", field=field)
    if len(value) > max_chars:
        raise InvalidInput(f"{field} is {len(value)} characters; the limit is {max_chars}", field=field)
    check_text(field, value)
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        if category == "Cc":
            what = "a control character"
        elif category in ("Zl", "Zp"):
            what = "a line separator"
        elif ord(ch) in _BIDI_CONTROLS:
            what = "a bidirectional control"
        else:
            continue
        raise InvalidInput(
            f"{field} contains {what} ({_code_point(ch)}) at offset {i}; {field} must be one "
            "line of printable text, without control characters (ANSI escapes, BEL, tab, CR, "
            "LF), line separators or bidirectional overrides",
            field=field,
        )
    return value


def check_json(field: str, value: Any, *, max_bytes: int | None = None, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidInput when `value` holds what jsonb refuses (NUL, lone surrogates, NaN or
    infinities) or nests deeper than `max_depth`; TooLarge when its compact JSON text is
    longer than `max_bytes` in UTF-8. The message gives the path, e.g. `content.content[2].text`."""
    stack: list[tuple[str, Any, int]] = [(field, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if depth > max_depth:
            raise InvalidInput(
                f"{field}: JSON nests deeper than {max_depth} levels (at {_abbreviated(path)})", field=field
            )
        if isinstance(item, str):
            problem = _unstorable(item)
            if problem:
                raise InvalidInput(f"{path} {problem}", field=field)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidInput(f"{path} is {item}: JSON numbers must be finite", field=field)
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{path}: JSON object keys must be strings, got {key!r}", field=field)
                problem = _unstorable(key)
                if problem:
                    raise InvalidInput(f"{path}: key {key!r} {problem}", field=field)
                stack.append((f"{path}.{key}", sub, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub, depth + 1) for i, sub in enumerate(item))
        elif item is not None and not isinstance(item, bool | int | float):
            raise InvalidInput(f"{path}: {type(item).__name__} is not a JSON value", field=field)
    if max_bytes is not None:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise TooLarge(
                f"{field} is {size} bytes as JSON; the limit is {max_bytes} bytes ({_mib(max_bytes)})", field=field
            )


def check_html(field: str, value: str) -> None:
    """Raise InvalidInput when the HTML `value` nests elements more than MAX_HTML_DEPTH deep,
    which the conversion to markdown for search would flatten. Call it on every HTML text a
    write stores, after `check_text`; it takes time linear in the length (about 3 s for 8 MiB
    of dense markup) and skips text with too few tags to be that deep."""
    if value.count("<") <= MAX_HTML_DEPTH:
        return
    depth = html_depth(value)
    if depth > MAX_HTML_DEPTH:
        raise InvalidInput(
            f"{field}: HTML nests elements {depth} deep; the limit is {MAX_HTML_DEPTH} (<html><body><p> is 3 deep)",
            field=field,
        )


def check_tiptap(field: str, doc: Any) -> None:
    """A TipTap/ProseMirror document: a JSON object of at most MAX_CONTENT_BYTES, its nodes
    nested at most MAX_TIPTAP_DEPTH levels, whose structure `knowledge.ingest.extract.validate_tiptap`
    accepts. Raises InvalidInput with the path."""
    if not isinstance(doc, dict):
        raise InvalidInput(f'{field} must be a TipTap JSON object like {{"type": "doc", "content": [...]}}')
    depth = tiptap_depth(doc)  # before check_json, whose JSON depth limit it would hit first
    if depth > MAX_TIPTAP_DEPTH:
        raise InvalidInput(
            f"{field}: TipTap nodes nest {depth} levels deep; the limit is "
            f"{MAX_TIPTAP_DEPTH} (the document is level 0, a paragraph in it level 1, "
            "that paragraph's text level 2)",
            field=field,
        )
    check_json(field, doc, max_bytes=MAX_CONTENT_BYTES, max_depth=_TIPTAP_JSON_DEPTH)
    try:
        validate_tiptap(doc)
    except ExtractError as e:
        raise InvalidInput(f"{field} is not a valid TipTap document: {e}", field=field) from e


def _check_tag_characters(field: str, value: str, where: str) -> None:
    for i, ch in enumerate(value):
        if ch.isspace():
            what = "whitespace"
        elif unicodedata.category(ch) in ("Cc", "Cs"):
            what = "a control character"
        elif unicodedata.category(ch) == "Cf" or ord(ch) in _INVISIBLE:
            what = "an invisible character"
        else:
            continue
        raise InvalidInput(
            f"{field} {value!r} contains {what} ({_code_point(ch)}) at offset {i}{where}; {TAG_RULE}", field=field
        )


def normalize_tag(tag: str, field: str = "tag") -> str:
    """The tag in NFKC, so that look-alike compatibility forms ('boot\uff1aall' with a
    full-width colon, ligatures, full-width letters) become the one plain tag. Raises
    InvalidInput naming the tag (`field`) when it breaks the tag rule: empty or too long, or
    holding whitespace, control characters, or invisible characters (category Cf, such as
    zero-width spaces and joiners, the BOM and bidirectional controls, and the other
    default-ignorable code points), as sent or after normalisation."""
    if not isinstance(tag, str):
        raise InvalidInput(f"{field} must be a string; {TAG_RULE}", field=field)
    value = unicodedata.normalize("NFKC", tag)
    if not value:
        raise InvalidInput(f"{field} is empty; {TAG_RULE}", field=field)
    if len(value) > MAX_TAG_CHARS:
        raise InvalidInput(f"{field} {value[:20]!r}... is {len(value)} characters; {TAG_RULE}", field=field)
    _check_tag_characters(field, tag, "")  # first as sent, so that the offset is the sender's
    if value != tag:
        _check_tag_characters(field, value, f" after NFKC normalisation (sent as {tag!r})")
    return value


def normalize_tags(tags: Iterable[str], field: str = "tags") -> list[str]:
    """The tags normalised, duplicates removed (first occurrence kept, case kept).
    Raises InvalidInput for a bad tag or more than MAX_TAGS distinct tags."""
    if isinstance(tags, str):
        raise InvalidInput(f"{field} must be a list of tags, not a string; {TAG_RULE}", field=field)
    seen: dict[str, None] = {}
    for i, tag in enumerate(tags):
        seen.setdefault(normalize_tag(tag, f"{field}[{i}]"), None)
    if len(seen) > MAX_TAGS:
        raise InvalidInput(f"{field}: {len(seen)} distinct tags; at most {MAX_TAGS} per item", field=field)
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


def _abbreviated(path: str, keep: int = 40) -> str:
    """A JSON path short enough for a message: its start and end around an ellipsis."""
    return path if len(path) <= 2 * keep else f"{path[:keep]}…{path[-keep:]}"


SLUG_RULE = "1..63 characters of a-z, 0-9 and '-', starting with a letter or digit"
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_slug(slug: str) -> str:
    """The slug, unchanged. Raises InvalidInput unless it is a well-formed agent slug."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise InvalidInput(f"agent slug {slug!r} is not valid: a slug is {SLUG_RULE}", field="slug")
    return slug
