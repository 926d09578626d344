"""Builders of TipTap (ProseMirror JSON) nodes for test documents."""

from __future__ import annotations

from typing import Any

Node = dict[str, Any]


def text(value: str, *marks: str | Node) -> Node:
    """A text node; each mark a mark node or the name of one without attributes."""
    node: Node = {"type": "text", "text": value}
    if marks:
        node["marks"] = [m if isinstance(m, dict) else {"type": m} for m in marks]
    return node


def para(*inline: Node) -> Node:
    return {"type": "paragraph", "content": list(inline)}


def heading(level: int, value: str) -> Node:
    return {"type": "heading", "attrs": {"level": level}, "content": [text(value)]}


def item(*blocks: Node) -> Node:
    return {"type": "listItem", "content": list(blocks)}


def bullets(*items: Node) -> Node:
    return {"type": "bulletList", "content": list(items)}


def cell(value: str, header: bool = False) -> Node:
    kind = "tableHeader" if header else "tableCell"
    return {"type": kind, "attrs": {"colspan": 1, "rowspan": 1}, "content": [para(text(value))]}


def doc(*blocks: Node) -> Node:
    return {"type": "doc", "content": list(blocks)}
