"""Text extraction: documents (TipTap JSON, markdown, HTML) and asset rows to the markdown
that search reads and the chunker splits.

Everything here is pure: no database, no model. Input that cannot be read raises
`ExtractError`, whose message names where the problem is (`content[2].content[0]: ...`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bs4 import BeautifulSoup
from bs4.element import NavigableString, Tag
from markdownify import ATX, MarkdownConverter

__all__ = [
    "ExtractError",
    "asset_markdown",
    "document_markdown",
    "html_to_markdown",
    "tiptap_to_markdown",
    "validate_tiptap",
]

MAX_DEPTH = 100
"""Deepest node nesting accepted in a TipTap document (keeps rendering off the recursion limit)."""


class ExtractError(ValueError):
    """Content that cannot be turned into text; the message says where and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---- TipTap validation ------------------------------------------------------------------------


_JSON_KINDS = ((bool, "a boolean"), (int | float, "a number"), (str, "a string"), (list, "a list"))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kind = next((name for cls, name in _JSON_KINDS if isinstance(value, cls)), None)
    return kind or ("an object" if isinstance(value, Mapping) else type(value).__name__)


def validate_tiptap(doc: Any) -> None:
    """Raise ExtractError unless `doc` is a structurally sound TipTap document: an object with
    `"type": "doc"`, whose nodes are objects with a string `type`, `content`/`marks` lists,
    `attrs` objects and, for text nodes, a string `text`. Unknown node and mark types are fine."""
    if not isinstance(doc, Mapping):
        raise ExtractError(f"document: expected a JSON object, got {_json_kind(doc)}")
    if doc.get("type") != "doc":
        raise ExtractError(f'document: "type" must be "doc", got {doc.get("type")!r}')
    _check_node(doc, "", 0)


def _check_node(node: Mapping[str, Any], path: str, depth: int) -> None:
    where = path or "document"
    prefix = f"{path}." if path else ""
    if depth > MAX_DEPTH:
        raise ExtractError(f"{where}: nodes nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node.get("type"), str) or not node["type"]:
        raise ExtractError(f'{where}: node without a string "type"')
    if node["type"] == "text" and not isinstance(node.get("text"), str):
        raise ExtractError(f'{where}: text node without a string "text"')
    if "attrs" in node and not isinstance(node["attrs"], Mapping):
        raise ExtractError(f"{prefix}attrs: expected an object, got {_json_kind(node['attrs'])}")
    if "marks" in node:
        marks = node["marks"]
        if not isinstance(marks, list):
            raise ExtractError(f"{prefix}marks: expected a list, got {_json_kind(marks)}")
        for i, mark in enumerate(marks):
            if not isinstance(mark, Mapping) or not isinstance(mark.get("type"), str):
                raise ExtractError(f'{prefix}marks[{i}]: mark without a string "type"')
            if "attrs" in mark and not isinstance(mark["attrs"], Mapping):
                raise ExtractError(f"{prefix}marks[{i}].attrs: expected an object")
    if "content" not in node:
        return
    content = node["content"]
    if not isinstance(content, list):
        raise ExtractError(f"{prefix}content: expected a list, got {_json_kind(content)}")
    for i, child in enumerate(content):
        child_path = f"{prefix}content[{i}]"
        if not isinstance(child, Mapping):
            raise ExtractError(f"{child_path}: expected a node object, got {_json_kind(child)}")
        _check_node(child, child_path, depth + 1)


# ---- TipTap rendering -------------------------------------------------------------------------

# Node and mark names are compared without case or underscores, so that both TipTap's
# `bulletList` and ProseMirror's `bullet_list` are understood.
_LISTS = {"bulletlist", "orderedlist", "tasklist"}
_INLINE = {"text", "hardbreak", "mention", "emoji", "image"}
_MARK_ALIASES = {"strong": "bold", "em": "italic", "strikethrough": "strike"}
_MARK_ORDER = {"link": 0, "bold": 1, "italic": 2, "strike": 3, "code": 4}
_DELIMITERS = {"bold": "**", "italic": "*", "strike": "~~"}
# A paragraph line that would read as a heading or a code fence is escaped, so that the
# chunker (which parses headings and fences) sees the paragraph the user typed.
_STRUCTURAL_START = re.compile(r"^( {0,3})(#{1,6}(?:[ \t]|$)|```|~~~)", re.MULTILINE)


def tiptap_to_markdown(doc: Mapping[str, Any]) -> str:
    """Render a TipTap/ProseMirror document as markdown (see the module tests for the exact
    form). Raises ExtractError when `validate_tiptap` would. Unknown nodes keep their text."""
    validate_tiptap(doc)
    return _blocks(doc.get("content", [])).strip()


def _name(node: Mapping[str, Any]) -> str:
    return str(node["type"]).replace("_", "").lower()


def _attr(node: Mapping[str, Any], key: str) -> Any:
    return node.get("attrs", {}).get(key)


def _children(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content: list[Mapping[str, Any]] = node.get("content", [])
    return content


def _blocks(nodes: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(part for part in (_block(node) for node in nodes) if part.strip())


def _block(node: Mapping[str, Any]) -> str:
    kind = _name(node)
    children = _children(node)
    if kind == "paragraph":
        return _STRUCTURAL_START.sub(r"\1\\\2", _inline(children))
    if kind == "heading":
        level = _attr(node, "level")
        level = min(max(level, 1), 6) if isinstance(level, int) else 1
        text = re.sub(r"\s*\n\s*", " ", _inline(children)).strip()
        return f"{'#' * level} {text}" if text else ""
    if kind in _LISTS:
        return _list(node)
    if kind == "blockquote":
        inner = _blocks(children)
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
    if kind == "codeblock":
        return _code_block(node)
    if kind == "horizontalrule":
        return "---"
    if kind == "table":
        return _table(node)
    if kind == "hardbreak":
        return ""
    if kind in _INLINE:
        return _inline([node])
    if children and all(_name(child) in _INLINE for child in children):
        return _inline(children)
    if children:
        return _blocks(children)
    return _atom_text(node)


def _list(node: Mapping[str, Any]) -> str:
    kind = _name(node)
    start = _attr(node, "start")
    number = start if isinstance(start, int) and not isinstance(start, bool) else 1
    items = []
    for item in _children(node):
        if kind == "orderedlist":
            marker = f"{number}. "
            number += 1
        elif kind == "tasklist":
            marker = "- [x] " if _attr(item, "checked") is True else "- [ ] "
        else:
            marker = "- "
        body = _item_body(_children(item))
        indent = " " * (2 if kind == "tasklist" else len(marker))
        lines = body.split("\n")
        rendered = [marker + lines[0]] + [indent + line if line else "" for line in lines[1:]]
        items.append("\n".join(rendered).rstrip())
    return "\n".join(items)


def _item_body(children: Sequence[Mapping[str, Any]]) -> str:
    """A list item's blocks; a nested list follows its paragraph without a blank line."""
    out = ""
    for child in children:
        part = _block(child)
        if not part.strip():
            continue
        if out:
            out += "\n" if _name(child) in _LISTS else "\n\n"
        out += part
    return out


def _code_block(node: Mapping[str, Any]) -> str:
    text = "".join(
        "\n" if _name(child) == "hardbreak" else str(child.get("text", ""))
        for child in _children(node)
    )
    text = text.removesuffix("\n")
    language = _attr(node, "language")
    fence = _fence_for(text)
    return f"{fence}{language if isinstance(language, str) else ''}\n{text}\n{fence}"


def _fence_for(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _table(node: Mapping[str, Any]) -> str:
    rows: list[list[str]] = []
    for row in _children(node):
        cells: list[str] = []
        for cell in _children(row):
            text = re.sub(r"\s*\n\s*", " ", _blocks(_children(cell))).strip()
            cells.append(text.replace("|", "\\|"))
            span = _attr(cell, "colspan")
            if isinstance(span, int) and span > 1:
                cells.extend([""] * (span - 1))
        rows.append(cells)
    width = max((len(cells) for cells in rows), default=0)
    if width == 0:
        return ""
    # GitHub tables need a header row: the first row serves even without tableHeader cells.
    lines = [rows[0] + [""] * (width - len(rows[0])), ["---"] * width]
    lines += [cells + [""] * (width - len(cells)) for cells in rows[1:]]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _atom_text(node: Mapping[str, Any]) -> str:
    for key in ("text", "label", "alt", "title", "id"):
        value = _attr(node, key)
        if isinstance(value, str) and value:
            return value
    return ""


def _image(node: Mapping[str, Any]) -> str:
    alt, src, title = (_attr(node, key) for key in ("alt", "src", "title"))
    alt = alt if isinstance(alt, str) else ""
    if not isinstance(src, str) or not src:
        return alt
    suffix = f' "{title}"' if isinstance(title, str) and title and '"' not in title else ""
    return f"![{alt}]({_url(src)}{suffix})"


def _url(href: str) -> str:
    href = _elide_data(href)
    if re.search(r"[\s()<>]", href):
        return f"<{href.replace('<', '%3C').replace('>', '%3E')}>"
    return href


def _elide_data(url: str) -> str:
    """`data:image/png;base64,…` for an inline data URL: its payload is noise to search and
    can be megabytes long."""
    if url[:5].lower() == "data:" and "," in url:
        return url[: url.index(",") + 1] + "…"
    return url


def _mark_spec(mark: Mapping[str, Any], text: str) -> tuple[str, str, str] | None:
    """(key, opener, closer) of a mark, or None for marks markdown cannot show (underline...)."""
    kind = str(mark["type"]).replace("_", "").lower()
    kind = _MARK_ALIASES.get(kind, kind)
    if kind in _DELIMITERS:
        return kind, _DELIMITERS[kind], _DELIMITERS[kind]
    if kind == "code":
        return ("code", "`` ", " ``") if "`" in text else ("code", "`", "`")
    if kind == "link":
        href = mark.get("attrs", {}).get("href")
        if isinstance(href, str) and href:
            return f"link:{href}", "[", f"]({_url(href)})"
    return None


def _inline(nodes: Sequence[Mapping[str, Any]]) -> str:
    """Inline nodes with their marks. Marks shared by neighbouring nodes stay open across them,
    and whitespace at the edge of a marked run moves outside the delimiters (`**a** b`)."""
    out: list[str] = []
    stack: list[tuple[str, str]] = []
    pending = ""
    for node in nodes:
        kind = _name(node)
        if kind == "text":
            text = str(node["text"])
        elif kind == "hardbreak":
            text = "  \n"
        elif kind == "image":
            text = _image(node)
        elif kind == "mention":
            text = "@" + _atom_text(node) if _atom_text(node) else ""
        else:
            text = _inline(_children(node)) if _children(node) else _atom_text(node)
        if kind == "text" and not text.strip():
            pending += text
            continue
        core = text.strip() if kind == "text" else text
        lead = text[: len(text) - len(text.lstrip())] if kind == "text" else ""
        specs = [spec for mark in node.get("marks", []) if (spec := _mark_spec(mark, core))]
        specs.sort(key=lambda spec: _MARK_ORDER[spec[0].split(":")[0]])
        keys = {spec[0] for spec in specs}
        keep = 0
        while keep < len(stack) and stack[keep][0] in keys:
            keep += 1
        out.extend(closer for _, closer in reversed(stack[keep:]))
        del stack[keep:]
        out.append(pending + lead)
        for key, opener, closer in specs:
            if all(key != open_key for open_key, _ in stack):
                out.append(opener)
                stack.append((key, closer))
        out.append(core)
        pending = text[len(text.rstrip()) :] if kind == "text" else ""
    out.extend(closer for _, closer in reversed(stack))
    out.append(pending)
    return "".join(out)


# ---- HTML -------------------------------------------------------------------------------------

_DROPPED_TAGS = ["script", "style", "head", "noscript", "template"]


def _code_language(el: Tag) -> str | None:
    for tag in [el, *el.find_all("code")]:
        for cls in tag.get("class") or []:
            if cls.startswith("language-"):
                return str(cls.removeprefix("language-"))
    return None


def html_to_markdown(html: str) -> str:
    """Convert HTML to markdown (ATX headings, `-` bullets, GitHub tables with `|` escaped).
    Script, style and head content is dropped; runs of blank lines become one."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_DROPPED_TAGS):
        tag.decompose()
    for name, attr in (("img", "src"), ("a", "href")):
        for element in soup.find_all(name, attrs={attr: True}):
            element[attr] = _elide_data(str(element[attr]))
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
        raise ExtractError(
            f"unknown content format {content_format!r}; expected tiptap, markdown or html"
        )
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
            fence = _fence_for(text)
            parts.append(f"{fence}{language if isinstance(language, str) else ''}\n{text}\n{fence}")
        elif _HTML_START.match(text) or asset.get("mime_type") == "text/html":
            parts.append(html_to_markdown(text))
        else:
            parts.append(text)
    transcript = metadata.get("transcript")
    if isinstance(transcript, str) and transcript.strip():
        parts.append("## Transcript\n\n" + transcript.strip())
    return "\n\n".join(part for part in parts if part)
