"""`import PATH`: a folder of .md, .markdown, .html, .htm and .txt files becomes documents.

The folder structure becomes the document folder tree (under the folder named after the
imported directory), YAML front matter gives the title and tags, and each document keeps
its source path (`<directory name>/<relative path>`), so that importing the same folder
again updates what changed and creates no duplicates.

A folder to import may come from someone else, so nothing in it can make the import read
outside it or run away: symbolic links are never followed (each one is refused as an error
naming it), files are opened one path component at a time with O_NOFOLLOW, and front matter
is at most 64 KiB of YAML without aliases, nested at most 64 levels deep.
"""

from __future__ import annotations

import html
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import psycopg
import yaml
from psycopg.rows import tuple_row

from knowledge.errors import InvalidInput, KnowledgeError
from knowledge.store.documents import upsert_document_by_source_path

__all__ = ["SUFFIXES", "ImportResult", "import_folder", "import_sample_agents", "parse_file", "sample_dir"]

SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "markdown", ".html": "html", ".htm": "html"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.DOTALL | re.IGNORECASE)
_HTML_H1 = re.compile(r"<h1[^>]*>(.*?)</h1>", re.DOTALL | re.IGNORECASE)
_HTML_TAGS_META = re.compile(r"""<meta\s+name=["']tags["']\s+content=["']([^"']*)["']""", re.IGNORECASE)

MAX_FRONT_MATTER_BYTES = 64 * 1024
"""Front matter longer than this (in UTF-8) refuses the file: real front matter is a few lines."""
MAX_FRONT_MATTER_DEPTH = 64
"""Lists and mappings nested deeper than this refuse the file: PyYAML composes recursively."""
# libyaml's parser is 4-8 times faster than the pure-Python one on large front matter; both
# are safe loaders (no Python objects from tags).
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_OUTSIDE_LINK = "a symbolic link to a path outside the imported folder; not followed"
_INSIDE_LINK = "a symbolic link; not followed (import follows no links, not even within the folder)"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Where open() takes dir_fd and O_NOFOLLOW (POSIX), a file is reached one component at a time
# from the root, so a folder swapped for a link after discover() saw it is refused, not followed.
_BY_COMPONENT = _NOFOLLOW != 0 and {os.open, os.stat} <= os.supports_dir_fd


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


def parse_file(path: Path, *, root: Path | None = None) -> ParsedFile:
    """Read and parse one file. It is opened without following symbolic links: neither
    `path` nor, when `root` (an absolute, resolved folder holding `path`) is given, any folder
    between `root` and `path` may be a link. Raises InvalidInput when it is a link or not a
    regular file, not UTF-8 text, or its front matter is not an acceptable YAML mapping (see
    `_front_matter`); OSError when it cannot be read."""
    if root is None:
        raw = _read_below(Path(os.path.realpath(path.parent)), PurePath(path.name))
    else:
        raw = _read_below(root, PurePath(path.relative_to(root)))
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
            meta = _front_matter(match.group(1))
            text = text[match.end() :]
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


def _front_matter(source: str) -> dict[str, Any]:
    """The YAML mapping in `source` (the text between the `---` lines). Raises InvalidInput
    when it is longer than MAX_FRONT_MATTER_BYTES, uses aliases (anchors alone are harmless),
    nests deeper than MAX_FRONT_MATTER_DEPTH, is not valid YAML, holds a value YAML cannot
    convert (a date like 2024-13-45, an integer of more than 4300 digits) or is not a mapping."""
    size = len(source.encode())
    if size > MAX_FRONT_MATTER_BYTES:
        raise InvalidInput(f"front matter is {size:,} bytes; the limit is {MAX_FRONT_MATTER_BYTES:,}")
    try:
        # Aliases and depth are checked on the event stream, before anything is composed:
        # expanding aliases is what makes a few hundred bytes take gigabytes (the "billion
        # laughs"), and composing recurses once per level.
        depth = 0
        for event in yaml.parse(source, Loader=_YAML_LOADER):
            if isinstance(event, yaml.AliasEvent):
                name = (event.anchor or "")[:40]
                raise InvalidInput(
                    f"front matter uses a YAML alias (*{name}); aliases are not accepted, write the value out"
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_FRONT_MATTER_DEPTH:
                    raise InvalidInput(f"front matter nests deeper than {MAX_FRONT_MATTER_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        loaded = yaml.load(source, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        raise InvalidInput(f"front matter is not valid YAML: {_yaml_problem(e)}") from e
    except ValueError as e:
        # The constructor's int() and date() refuse some values that the YAML grammar admits.
        reason = str(e).split(";")[0]
        raise InvalidInput(f"front matter holds a value YAML cannot convert: {reason}") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise InvalidInput("front matter must be a YAML mapping")
    return dict(loaded or {})


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What the parser says is wrong, with its line in the file (front matter starts on 2)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        context = f"{e.context}, " if e.context else ""
        line = f" (line {e.problem_mark.line + 2})" if e.problem_mark else ""
        return f"{context}{e.problem}{line}"
    return str(e).splitlines()[0]


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
    here = Path(__file__).resolve().parents[1]  # the package: knowledge/
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
        row = (
            conn.cursor(row_factory=tuple_row)
            .execute(
                "INSERT INTO agents (slug, name, role) VALUES (%s, %s, %s) ON CONFLICT (slug) DO NOTHING RETURNING id",
                [agent["slug"], agent["name"], agent["role"]],
            )
            .fetchone()
        )
        created += row is not None
    return created


def _resolve_root(root: Path) -> Path:
    """`root` with `~` expanded and every symbolic link resolved: the folder an import reads.
    Raises InvalidInput when it does not exist, is a link loop or is not a folder."""
    given = root.expanduser()
    try:
        resolved = Path(os.path.realpath(given, strict=True))
    except OSError as e:
        raise InvalidInput(
            f"{given} is not a directory ({e.strerror}): import takes a folder of .md, .markdown, .html or .txt files"
        ) from e
    if not resolved.is_dir():
        raise InvalidInput(
            f"{resolved} is not a directory: import takes a folder of .md, .markdown, .html or .txt files"
        )
    return resolved


def discover(root: Path) -> Iterator[Path]:
    """What an import of `root` goes through, in a stable order, as paths below `root`
    resolved (a root named through a symbolic link is the folder the link names): every
    regular file with a supported suffix, and every symbolic link that has such a suffix or
    names a folder, so that import_folder can refuse it by name. No link is followed, so a
    link loop cannot trap it and nothing outside `root` is listed. Hidden files and folders are
    skipped, and so are folders that cannot be listed. Raises InvalidInput when `root` is
    not a folder."""
    yield from _walk(_resolve_root(root))


def _walk(folder: Path) -> Iterator[Path]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        if entry.is_symlink():
            # Stat through the link only to know whether it names a folder; nothing is read.
            if path.suffix.lower() in SUFFIXES or _names_folder(path):
                yield path
        elif entry.is_dir(follow_symlinks=False):
            yield from _walk(path)
        elif entry.is_file(follow_symlinks=False) and path.suffix.lower() in SUFFIXES:
            yield path


def _names_folder(link: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(link).st_mode)
    except OSError:
        return False  # dangling, a loop, or unreadable


def _link_refusal(root: Path, link: Path) -> str:
    """Why `link` (a symbolic link below `root`) is not imported."""
    target = Path(os.path.realpath(link))
    return _INSIDE_LINK if target.is_relative_to(root) else _OUTSIDE_LINK


def _read_below(root: Path, rel: PurePath) -> bytes:
    """The bytes of the regular file `root / rel`, reached without following any symbolic
    link at or below `root`. Raises InvalidInput when a component is a link or the file is
    not a regular file (a FIFO is never waited on), OSError when it cannot be read."""
    if not _BY_COMPONENT:
        path = root / rel
        if Path(os.path.realpath(path)) != path:
            raise InvalidInput(_link_refusal(root, path))
        return path.read_bytes()
    folder_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(root, folder_flags)
    try:
        for i, part in enumerate(rel.parts, start=1):
            try:
                next_fd = os.open(part, file_flags if i == len(rel.parts) else folder_flags, dir_fd=fd)
            except OSError as e:
                # O_NOFOLLOW refuses a link with ELOOP (EMLINK on FreeBSD; ENOTDIR on Linux
                # with O_DIRECTORY): ask the folder whether the entry is a link.
                if not stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                    raise
                refusal = _link_refusal(root, root.joinpath(*rel.parts[:i]))
                if i < len(rel.parts):  # a folder on the way, swapped for a link since listed
                    refusal = f"its folder {PurePath(*rel.parts[:i]).as_posix()} is {refusal}"
                raise InvalidInput(refusal) from e
            os.close(fd)
            fd = next_fd
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput("not a regular file")
        with os.fdopen(fd, "rb") as file:
            fd = -1  # the file object closes it
            return file.read()
    finally:
        if fd >= 0:
            os.close(fd)


def ensure_folder(conn: psycopg.Connection[Any], names: list[str]) -> uuid.UUID | None:
    """The document folder at path `names` from the root, created where missing."""
    parent: uuid.UUID | None = None
    cur = conn.cursor(row_factory=tuple_row)
    for name in names:
        row = cur.execute(
            "SELECT id FROM document_folders WHERE parent_id IS NOT DISTINCT FROM %s AND lower(name) = lower(%s)",
            [parent, name],
        ).fetchone()
        if row is None:
            row = cur.execute(
                "INSERT INTO document_folders (parent_id, name) VALUES (%s, %s) "
                "ON CONFLICT (parent_id, lower(name)) DO UPDATE SET name = document_folders.name RETURNING id",
                [parent, name],
            ).fetchone()
        parent = row[0]  # type: ignore[index]
    return parent


def import_folder(
    conn: psycopg.Connection[Any], root: Path, *, on_file: Callable[[Path, str], None] | None = None
) -> ImportResult:
    """Import every supported file below `root`. Each file is its own transaction: a bad
    file is reported in `errors` and the others still import. `root` is resolved once (it may
    be a symbolic link to the folder); below it no link is followed, to a file or a folder,
    inside the folder or out: each is an error "<path>: a symbolic link ...; not followed",
    and nothing outside `root` is read. Front matter limits are those of `parse_file`.
    Raises InvalidInput when `root` is not a directory."""
    root = _resolve_root(root)
    result = ImportResult()
    for path in discover(root):
        rel = path.relative_to(root)
        try:
            if path.is_symlink():
                raise InvalidInput(_link_refusal(root, path))
            parsed = parse_file(path, root=root)
            with conn.transaction():
                folder = ensure_folder(conn, [root.name, *rel.parts[:-1]])
                _, outcome = upsert_document_by_source_path(
                    conn,
                    source_path=f"{root.name}/{rel.as_posix()}",
                    title=parsed.title,
                    content_format=parsed.content_format,
                    content_text=parsed.content_text,
                    folder_id=folder,
                    tags=parsed.tags,
                    metadata=parsed.metadata,
                )
        except (KnowledgeError, OSError) as e:
            outcome = "error"
            result.errors.append(f"{rel}: {getattr(e, 'message', None) or e}")
        else:
            setattr(result, outcome, getattr(result, outcome) + 1)
        if on_file:
            on_file(rel, outcome)
    return result
