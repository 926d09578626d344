"""Markdown as spans: the sections and blocks that chunking packs, and the finer pieces a
block too large for one passage is cut into.

A span is a `(start, end)` pair of offsets into the markdown, stripped of surrounding
whitespace. `parse_sections` finds headings (ATX and setext) and blocks (runs of non-blank
lines, a fenced code block whole); `split_span` cuts a span at list items, lines,
sentences or words, and `split_levels` says which of those suit a block, coarsest first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Section", "drop_title_heading", "parse_sections", "split_levels", "split_span", "strip_span"]


# ---- parsing ----------------------------------------------------------------------------------

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?$")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_NOT_SETEXT_TEXT = re.compile(r" {0,3}(?:[-*+>|]|\d{1,9}[.)](?:\s|$))| {4}")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)|[。！？]+")  # noqa: RUF001 - CJK full stops
_WORD = re.compile(r"\S+")
_LINE = re.compile(r"[^\n]+")
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")


@dataclass(frozen=True)
class Section:
    """A heading and the blocks under it, up to the next heading. `heading` is the span of the
    heading line(s), None for the text before the first heading (`level` 0); `path` holds the
    names of the enclosing headings and its own, outermost first, without empty names."""

    path: tuple[str, ...]
    level: int
    heading: tuple[int, int] | None
    blocks: tuple[tuple[int, int], ...]


def strip_span(md: str, start: int, end: int) -> tuple[int, int]:
    """The span `md[start:end]` without whitespace at either end."""
    while start < end and md[start].isspace():
        start += 1
    while end > start and md[end - 1].isspace():
        end -= 1
    return start, end


def parse_sections(md: str) -> list[Section]:
    """Sections in document order. A block is a run of non-blank lines; a fenced code block
    is one block however many blank lines it holds, and nothing inside it is a heading."""
    lines, offset = [], 0
    for text in md.split("\n"):
        lines.append((offset, offset + len(text)))
        offset += len(text) + 1
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    path: tuple[str, ...] = ()
    level, heading = 0, None
    blocks: list[tuple[int, int]] = []
    block: list[int] = []
    fence: tuple[str, int] | None = None

    def close_block() -> None:
        if block:
            blocks.append(strip_span(md, block[0], block[1]))
            block.clear()

    i = 0
    while i < len(lines):
        start, end = lines[i]
        line = md[start:end].rstrip("\r")
        i += 1
        if fence is not None:
            block[1] = end
            closing = _FENCE.match(line)
            if (
                closing
                and closing[1][0] == fence[0]
                and len(closing[1]) >= fence[1]
                and not line[closing.end() :].strip()
            ):
                fence = None
                close_block()
            continue
        if not line.strip():
            close_block()
            continue
        opening = _FENCE.match(line)
        if opening and not (opening[1][0] == "`" and "`" in line[opening.end() :]):
            close_block()
            block[:] = [start, end]
            fence = (opening[1][0], len(opening[1]))
            continue
        atx = _ATX.match(line)
        found: tuple[int, str, int] | None = None
        if atx:
            text = re.sub(r"(?:^|[ \t]+)#+[ \t]*$", "", atx[2] or "")
            found = (len(atx[1]), text, end)
        elif not block and i < len(lines) and not _NOT_SETEXT_TEXT.match(line):
            next_start, next_end = lines[i]
            underline = _SETEXT_UNDERLINE.match(md[next_start:next_end].rstrip("\r"))
            if underline:
                found = (1 if underline[1][0] == "=" else 2, line, next_end)
                i += 1
        if found is None:
            if block:
                block[1] = end
            else:
                block[:] = [start, end]
            continue
        close_block()
        if heading is not None or blocks:
            sections.append(Section(path, level, heading, tuple(blocks)))
        blocks = []
        level, text, heading_end = found
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, " ".join(text.split())))
        path = tuple(name for _, name in stack if name)
        heading = strip_span(md, start, heading_end)
    close_block()
    if heading is not None or blocks:
        sections.append(Section(path, level, heading, tuple(blocks)))
    return sections


def drop_title_heading(md: str, title: str) -> str:
    """`md` without its opening level-1 heading when that heading says `title` (the same text
    once case, spacing, emphasis marks and Unicode forms are set aside): for a reader that
    prints the title above the body already. Any other heading, and any text before it, stays.
    Only the first block is parsed: a heading is one, so the rest cannot change the answer."""
    gap = _BLANK_LINE.search(md, len(md) - len(md.lstrip()))
    first = next(iter(parse_sections(md if gap is None else md[: gap.start()])), None)
    if first is None or first.heading is None or first.level != 1 or not first.path:
        return md
    if _plain(first.path[-1]) != _plain(title):
        return md
    return md[first.heading[1] :].lstrip()


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[*_`~]+", "", unicodedata.normalize("NFKC", text)).casefold().split())


# ---- splitting ----------------------------------------------------------------------------------


def _split_lines(md: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = (strip_span(md, m.start(), m.end()) for m in _LINE.finditer(md, start, end))
    return [(s, e) for s, e in spans if s < e]


def _split_items(md: str, start: int, end: int) -> list[tuple[int, int]]:
    """List items with their continuation lines and nested items."""
    items: list[tuple[int, int]] = []
    base = start - md.rfind("\n", 0, start) - 1
    for s, e in _split_lines(md, start, end):
        indent = s - md.rfind("\n", 0, s) - 1
        if not items or (indent <= base and _LIST_ITEM.match(md, s, e)):
            items.append((s, e))
        else:
            items[-1] = (items[-1][0], e)
    return items


def _split_sentences(md: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    cursor = start
    for m in _SENTENCE_END.finditer(md, start, end):
        spans.append(strip_span(md, cursor, m.end()))
        cursor = m.end()
    spans.append(strip_span(md, cursor, end))
    return [(s, e) for s, e in spans if s < e]


def _split_words(md: str, start: int, end: int) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(md, start, end)]


_SPLITTERS: dict[str, Callable[[str, int, int], list[tuple[int, int]]]] = {
    "items": _split_items,
    "lines": _split_lines,
    "sentences": _split_sentences,
    "words": _split_words,
}


def split_span(level: str, md: str, start: int, end: int) -> list[tuple[int, int]]:
    """The span `md[start:end]` cut at `level`: "items", "lines", "sentences" or "words"."""
    return _SPLITTERS[level](md, start, end)


def split_levels(md: str, start: int) -> tuple[str, ...]:
    """How a block is cut when it is too large, coarsest first, by what it starts with."""
    if _FENCE.match(md, start) or md.startswith("|", start):
        return ("lines", "words")
    if _LIST_ITEM.match(md, start):
        return ("items", "lines", "sentences", "words")
    return ("sentences", "lines", "words")
