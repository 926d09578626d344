"""TipTap/ProseMirror documents: structural validation, and rendering to the markdown that
search reads and the chunker splits.

Pure: no database, no model. A document that cannot be read raises `ExtractError`, whose
message names where the problem is (`content[2].content[0]: ...`). `fence_for` and
`elide_data_url` are shared with `embeddings.extract`, which renders scripts and HTML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from knowledge.ingest.errors import ExtractError

__all__ = ["MAX_DEPTH", "elide_data_url", "fence_for", "tiptap_depth", "tiptap_to_markdown", "validate_tiptap"]

MAX_DEPTH = 100
"""Deepest node nesting accepted in a TipTap document: the document is level 0, its blocks
level 1. Rendering spends at most about five Python frames per level (blockquotes), so 100
levels stay far below the recursion limit (1000)."""


# ---- TipTap validation ------------------------------------------------------------------------


_JSON_KINDS = ((bool, "a boolean"), (int | float, "a number"), (str, "a string"), (list, "a list"))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kind = next((name for cls, name in _JSON_KINDS if isinstance(value, cls)), None)
    return kind or ("an object" if isinstance(value, Mapping) else type(value).__name__)


def tiptap_depth(doc: Any) -> int:
    """The deepest level of a node in `doc` (0: the document alone, 1: a paragraph in it, 2:
    that paragraph's text), following `content` lists of objects and ignoring anything
    malformed. Not recursive: any depth is measured in time linear in the size."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        content = node.get("content") if isinstance(node, Mapping) else None
        if isinstance(content, list):
            stack.extend((child, level + 1) for child in content if isinstance(child, Mapping))
    return deepest


def validate_tiptap(doc: Any) -> None:
    """Raise ExtractError unless `doc` is a structurally sound TipTap document: an object with
    `"type": "doc"`, nodes nested at most MAX_DEPTH levels, whose nodes are objects with a
    string `type`, `content`/`marks` lists, `attrs` objects and, for text nodes, a string
    `text`. Unknown node and mark types are fine."""
    if not isinstance(doc, Mapping):
        raise ExtractError(f"document: expected a JSON object, got {_json_kind(doc)}")
    if doc.get("type") != "doc":
        raise ExtractError(f'document: "type" must be "doc", got {doc.get("type")!r}')
    depth = tiptap_depth(doc)
    if depth > MAX_DEPTH:
        raise ExtractError(f"document: nodes nested deeper than {MAX_DEPTH} levels (the deepest is at level {depth})")
    _check_node(doc, "")


def _check_node(node: Mapping[str, Any], path: str) -> None:
    """Recursive, one call per level: validate_tiptap bounds the depth first."""
    where = path or "document"
    prefix = f"{path}." if path else ""
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
        _check_node(child, child_path)


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
    text = "".join("\n" if _name(child) == "hardbreak" else str(child.get("text", "")) for child in _children(node))
    text = text.removesuffix("\n")
    language = _attr(node, "language")
    fence = fence_for(text)
    return f"{fence}{language if isinstance(language, str) else ''}\n{text}\n{fence}"


def fence_for(text: str) -> str:
    """A code fence of backticks longer than any backtick run in `text` (at least three)."""
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
    href = elide_data_url(href)
    if re.search(r"[\s()<>]", href):
        return f"<{href.replace('<', '%3C').replace('>', '%3E')}>"
    return href


def elide_data_url(url: str) -> str:
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
