"""Text extraction: documents (TipTap JSON, markdown, HTML) and asset rows to the markdown
that search reads and the chunker splits.

Everything here is pure: no database, no model. Input that cannot be read raises
`ExtractError`, whose message names where the problem is (`content[2].content[0]: ...`).
TipTap validation and rendering live in `embeddings.tiptap`; their public names are
re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

from bs4 import BeautifulSoup
from bs4.builder import HTMLTreeBuilder
from bs4.element import NavigableString, Tag
from markdownify import ATX, MarkdownConverter

from knowledge.ingest.errors import ExtractError
from knowledge.ingest.tiptap import elide_data_url, fence_for, tiptap_to_markdown, validate_tiptap

__all__ = [
    "MAX_HTML_DEPTH",
    "ExtractError",
    "asset_markdown",
    "document_markdown",
    "html_depth",
    "html_to_markdown",
    "tiptap_to_markdown",
    "validate_tiptap",
]


# ---- HTML -------------------------------------------------------------------------------------

_DROPPED_TAGS = ["script", "style", "head", "noscript", "template"]

MAX_HTML_DEPTH = 100
"""Deepest element nesting that `html_to_markdown` renders as structure. markdownify spends
about three Python frames per level, so 100 levels stay far below the recursion limit (1000);
deeper elements lose their markup but keep their text. Write paths refuse deeper HTML."""

# The elements that BeautifulSoup's html.parser builder closes as soon as they open.
_VOID_TAGS = frozenset(HTMLTreeBuilder.DEFAULT_EMPTY_ELEMENT_TAGS or ())


class _DepthCounter(HTMLParser):
    """Replays the open-element stack that BeautifulSoup's html.parser builder keeps: void
    elements and `<x/>` never hold children, and an end tag closes the innermost open element
    of its name and everything opened inside it (one with no open match is ignored)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.open_count: dict[str, int] = {}
        self.deepest = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            self.deepest = max(self.deepest, len(self.open) + 1)
            return
        self.open.append(tag)
        self.open_count[tag] = self.open_count.get(tag, 0) + 1
        self.deepest = max(self.deepest, len(self.open))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.deepest = max(self.deepest, len(self.open) + 1)

    def handle_endtag(self, tag: str) -> None:
        if not self.open_count.get(tag):
            return
        while True:
            closed = self.open.pop()
            self.open_count[closed] -= 1
            if closed == tag:
                return


def html_depth(html: str) -> int:
    """How deeply `html` nests elements once parsed as `html_to_markdown` parses it: 0 for
    text alone, 1 for `<p>x</p>`, 3 for `<ul><li><b>x</b></li></ul>`. Not recursive: any
    depth is measured in time linear in the length."""
    if "<" not in html:
        return 0
    counter = _DepthCounter()
    counter.feed(html)
    counter.close()
    return counter.deepest


def _flatten_deeper_than(soup: BeautifulSoup, limit: int) -> None:
    """Replace the content of every element at depth `limit` that holds elements with its
    text (words separated by spaces), so that converting the tree never recurses deeper.
    Linear in the size of the tree (BeautifulSoup's `unwrap` is quadratic along a chain)."""
    depth: dict[int, int] = {id(soup): 0}
    boundary: dict[int, Tag] = {}
    for element in soup.find_all(True):  # document order: a parent comes before its children
        level = depth[id(element.parent)] + 1
        depth[id(element)] = level
        if level == limit + 1 and element.parent is not None:
            boundary.setdefault(id(element.parent), element.parent)
    for element in boundary.values():
        text = element.get_text(" ")
        element.clear()
        element.append(NavigableString(text))


def _code_language(el: Tag) -> str | None:
    for tag in [el, *el.find_all("code")]:
        for cls in tag.get("class") or []:
            if cls.startswith("language-"):
                return str(cls.removeprefix("language-"))
    return None


def html_to_markdown(html: str) -> str:
    """Convert HTML to markdown (ATX headings, `-` bullets, GitHub tables with `|` escaped).
    Script, style and head content is dropped; runs of blank lines become one. Elements
    nested deeper than MAX_HTML_DEPTH lose their markup but not their text, so no nesting
    raises RecursionError."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_DROPPED_TAGS):
        tag.decompose()
    _flatten_deeper_than(soup, MAX_HTML_DEPTH)
    for name, attr in (("img", "src"), ("a", "href")):
        for element in soup.find_all(name, attrs={attr: True}):
            element[attr] = elide_data_url(str(element[attr]))
    for cell in soup.find_all(["td", "th"]):
        for string in list(cell.find_all(string=True)):
            if "|" in string:
                string.replace_with(NavigableString(string.replace("|", "\\|")))
    converter = MarkdownConverter(
        heading_style=ATX,
        bullets="-",
        table_infer_header=True,
        escape_underscores=False,
        code_language_callback=_code_language,
    )
    text = str(converter.convert_soup(soup))
    text = re.sub(r"^[ \t]+$", "", text, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---- documents and assets ---------------------------------------------------------------------


def document_markdown(content_format: str, content: Any, content_text: str | None) -> str:
    """The markdown of a document row: TipTap `content` rendered, markdown `content_text` as
    is, HTML `content_text` converted. Raises ExtractError for an unknown format, a malformed
    TipTap document, or a markdown/HTML document without `content_text`."""
    if content_format == "tiptap":
        return tiptap_to_markdown(content)
    if content_format not in ("markdown", "html"):
        raise ExtractError(f"unknown content format {content_format!r}; expected tiptap, markdown or html")
    if content_text is None:
        raise ExtractError(f"{content_format} document without content_text")
    return content_text if content_format == "markdown" else html_to_markdown(content_text)


_TYPE_LABELS = {"sop": "SOP"}
_MEDIA = {"image", "video", "audio"}
# Metadata worth searching, shown as header lines, in this order; other keys (hashes,
# storage details) are left out. A transcript is long and becomes a section of its own.
_META_LINES = (
    ("alt", "Alt text"),
    ("alt_text", "Alt text"),
    ("caption", "Caption"),
    ("title", "Title"),
    ("author", "Author"),
    ("credit", "Credit"),
    ("source", "Source"),
    ("language", "Language"),
    ("duration", "Duration"),
    ("summary", "Summary"),
)
_HTML_START = re.compile(r"\s*<(?:!doctype|!--|[a-z])", re.IGNORECASE)


def _duration(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        minutes, seconds = divmod(round(value), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"
    return None


def asset_markdown(asset: Mapping[str, Any]) -> str:
    """The markdown of an asset row: a header block (type; name, link and file type for links,
    media and assets without text; descriptive metadata), the description, then the text
    content (HTML converted; a script fenced so its `#` comments are not headings) or, for
    media, the transcript.

    The name is repeated only where there is little else to read: the chunker's title carries
    it. `tags`, `size_bytes` and `extracted_text` are not read; the last is where the worker
    stores this function's output, so reading it would feed the output back in."""
    kind = str(asset.get("asset_type") or "other")
    text = asset.get("content_text")
    text = text.strip() if isinstance(text, str) else ""
    metadata = asset.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    sparse = kind == "link" or kind in _MEDIA or not text

    header = [f"Type: {_TYPE_LABELS.get(kind, kind.capitalize())}"]
    name, url, mime = (asset.get(key) for key in ("name", "url", "mime_type"))
    if sparse and isinstance(name, str) and name.strip():
        header.append(f"Name: {name.strip()}")
    if isinstance(url, str) and url.strip():
        header.append(f"Link: {url.strip()}")
    if sparse and isinstance(mime, str) and mime.strip():
        header.append(f"File type: {mime.strip()}")
    seen: set[str] = set()
    for key, label in _META_LINES:
        raw = metadata.get(key)
        value = _duration(raw) if key == "duration" else raw
        if isinstance(value, str) and value.strip() and label not in seen:
            seen.add(label)
            header.append(f"{label}: {' '.join(value.split())}")

    parts = ["\n".join(header)]
    description = asset.get("description")
    if isinstance(description, str) and description.strip():
        parts.append(description.strip())
    if text:
        if kind == "script":
            language = metadata.get("language")
            fence = fence_for(text)
            parts.append(f"{fence}{language if isinstance(language, str) else ''}\n{text}\n{fence}")
        elif _HTML_START.match(text) or asset.get("mime_type") == "text/html":
            parts.append(html_to_markdown(text))
        else:
            parts.append(text)
    transcript = metadata.get("transcript")
    if isinstance(transcript, str) and transcript.strip():
        parts.append("## Transcript\n\n" + transcript.strip())
    return "\n\n".join(part for part in parts if part)
