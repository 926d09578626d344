"""`import PATH`: a folder of .md, .markdown, .html, .htm and .txt files becomes documents.

The folder structure becomes the document folder tree (under the folder named after the
imported directory), YAML front matter gives the title and tags, and each document keeps
its source path (`<directory name>/<relative path>`), so that importing the same folder
again updates what changed and creates no duplicates.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.rows import tuple_row

from .documents import upsert_document_by_source_path
from .errors import InvalidInput, KnowledgeError

__all__ = ["SUFFIXES", "ImportResult", "import_folder", "import_sample_agents", "parse_file", "sample_dir"]

SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "markdown", ".html": "html", ".htm": "html"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.DOTALL | re.IGNORECASE)
_HTML_H1 = re.compile(r"<h1[^>]*>(.*?)</h1>", re.DOTALL | re.IGNORECASE)
_HTML_TAGS_META = re.compile(r"""<meta\s+name=["']tags["']\s+content=["']([^"']*)["']""", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedFile:
    title: str
    content_format: str
    content_text: str
    tags: list[str]
    metadata: dict[str, Any]


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged + len(self.errors)


def parse_file(path: Path) -> ParsedFile:
    """Read one file. Raises InvalidInput when it is not UTF-8 text or its front matter is
    not a YAML mapping."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise InvalidInput("binary file (contains NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"not UTF-8 text (invalid byte at offset {e.start})") from e
    fmt = SUFFIXES[path.suffix.lower()]
    meta: dict[str, Any] = {}
    if fmt == "markdown":
        match = _FRONT_MATTER.match(text)
        if match:
            try:
                loaded = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                raise InvalidInput(f"front matter is not valid YAML: {str(e).splitlines()[0]}") from e
            if loaded is not None and not isinstance(loaded, dict):
                raise InvalidInput("front matter must be a YAML mapping")
            meta = dict(loaded or {})
            text = text[match.end():]
        heading = _H1.search(text)
        title = str(meta.pop("title", "") or (heading.group(1) if heading else ""))
        tags = _tag_list(meta.pop("tags", []))
    else:
        found = _HTML_TITLE.search(text) or _HTML_H1.search(text)
        title = html.unescape(re.sub(r"<[^>]+>", "", found.group(1))) if found else ""
        tags_meta = _HTML_TAGS_META.search(text)
        tags = _tag_list(html.unescape(tags_meta.group(1)) if tags_meta else [])
    title = " ".join(title.split()) or path.stem.replace("-", " ").replace("_", " ").strip() or path.name
    return ParsedFile(title[:500], fmt, text, tags, {"front_matter": _jsonable(meta)} if meta else {})


def _tag_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [t for t in re.split(r"[,\s]+", value) if t]
    if not isinstance(value, list) or not all(isinstance(t, str | int | float) for t in value):
        raise InvalidInput("tags must be a list of words, e.g. tags: [pricing, boot:all]")
    return [str(t) for t in value]


def _jsonable(value: Any) -> Any:
    """Front matter values as JSON (YAML dates become ISO strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def sample_dir() -> Path:
    """The sample knowledge base shipped with the package (or in a source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_samples" / "knowledge-base", here.parent / "samples" / "knowledge-base"):
        if candidate.is_dir():
            return candidate
    raise InvalidInput(f"no sample knowledge base found next to {here}")


def import_sample_agents(conn: psycopg.Connection[Any]) -> int:
    """Create the sample workspace's agents (samples/agents.json) that do not exist yet, so
    that their boot bundles resolve. Returns how many were created."""
    import json

    created = 0
    for agent in json.loads((sample_dir().parent / "agents.json").read_text(encoding="utf-8")):
        row = conn.cursor(row_factory=tuple_row).execute(
            "INSERT INTO agents (slug, name, role) VALUES (%s, %s, %s) ON CONFLICT (slug) DO NOTHING RETURNING id",
            [agent["slug"], agent["name"], agent["role"]]).fetchone()
        created += row is not None
    return created


def discover(root: Path) -> Iterator[Path]:
    """The files an import takes, in a stable order; hidden files and folders are skipped."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in SUFFIXES:
            yield path


def ensure_folder(conn: psycopg.Connection[Any], names: list[str]) -> uuid.UUID | None:
    """The document folder at path `names` from the root, created where missing."""
    parent: uuid.UUID | None = None
    cur = conn.cursor(row_factory=tuple_row)
    for name in names:
        row = cur.execute(
            "SELECT id FROM document_folders WHERE parent_id IS NOT DISTINCT FROM %s AND lower(name) = lower(%s)",
            [parent, name]).fetchone()
        if row is None:
            row = cur.execute(
                "INSERT INTO document_folders (parent_id, name) VALUES (%s, %s) "
                "ON CONFLICT (parent_id, lower(name)) DO UPDATE SET name = document_folders.name RETURNING id",
                [parent, name]).fetchone()
        parent = row[0]  # type: ignore[index]
    return parent


def import_folder(conn: psycopg.Connection[Any], root: Path, *,
                  on_file: Callable[[Path, str], None] | None = None) -> ImportResult:
    """Import every supported file below `root`. Each file is its own transaction: a bad
    file is reported in `errors` and the others still import. Raises InvalidInput when
    `root` is not a directory."""
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory: import takes a folder of .md, .markdown, .html or .txt files")
    result = ImportResult()
    for path in discover(root):
        rel = path.relative_to(root)
        try:
            parsed = parse_file(path)
            with conn.transaction():
                folder = ensure_folder(conn, [root.name, *rel.parts[:-1]])
                _, outcome = upsert_document_by_source_path(
                    conn, source_path=f"{root.name}/{rel.as_posix()}", title=parsed.title,
                    content_format=parsed.content_format, content_text=parsed.content_text,
                    folder_id=folder, tags=parsed.tags, metadata=parsed.metadata)
        except (KnowledgeError, OSError) as e:
            outcome = "error"
            result.errors.append(f"{rel}: {getattr(e, 'message', None) or e}")
        else:
            setattr(result, outcome, getattr(result, outcome) + 1)
        if on_file:
            on_file(rel, outcome)
    return result
