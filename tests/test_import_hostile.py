"""Hostile folders given to `hq-knowledge import`: symbolic links out of the folder, a YAML
alias bomb, oversize or malformed front matter. Each is refused by name, nothing outside the
folder reaches the database, and the rest of the folder still imports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from knowledge.store.importer import MAX_FRONT_MATTER_BYTES, import_folder

Conn = psycopg.Connection[dict[str, Any]]

OUTSIDE = "a symbolic link to a path outside the imported folder; not followed"
INSIDE = "a symbolic link; not followed (import follows no links, not even within the folder)"


def hq_import(folder: Path, db_url: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`hq-knowledge import FOLDER` in a subprocess, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    env["HQ_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "knowledge", "import", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def source_paths(conn: Conn) -> set[str]:
    return {row["source_path"] for row in conn.execute("SELECT source_path FROM documents")}


def documents_holding(conn: Conn, text: str) -> list[str]:
    """Source paths of documents whose title, text or metadata contain `text`."""
    rows = conn.execute(
        "SELECT source_path FROM documents WHERE strpos(title, %(t)s) > 0 "
        "OR strpos(coalesce(content_text, ''), %(t)s) > 0 OR strpos(metadata::text, %(t)s) > 0",
        {"t": text},
    ).fetchall()
    return [row["source_path"] for row in rows]


def secret_file(folder: Path) -> str:
    """Write folder/secret.md holding a unique text (in its title and body) and return the text."""
    secret = f"secret-{uuid.uuid4().hex}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret.md").write_text(f"---\ntitle: {secret}\n---\n# {secret}\n\n{secret}\n")
    return secret


def test_a_link_to_a_file_outside_is_refused_and_not_read(tmp_path: Path, db_url: str, conn: Conn) -> None:
    secret = secret_file(tmp_path / "outside")
    (tmp_path / "kb" / "notes").mkdir(parents=True)
    (tmp_path / "kb" / "notes" / "normal.md").write_text("# Normal\n\nAn ordinary note.\n")
    (tmp_path / "kb" / "notes" / "link.md").symlink_to(tmp_path / "outside" / "secret.md")

    result = hq_import(tmp_path / "kb", db_url)

    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [f"error: notes/link.md: {OUTSIDE}"]
    assert "1 created, 0 updated, 0 unchanged, 1 failed" in result.stdout
    assert source_paths(conn) == {"kb/notes/normal.md"}
    assert documents_holding(conn, secret) == []


def test_a_link_to_a_folder_outside_is_refused_and_not_read(tmp_path: Path, db_url: str, conn: Conn) -> None:
    secret = secret_file(tmp_path / "outside")
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "normal.md").write_text("# Normal\n\nAn ordinary note.\n")
    (tmp_path / "kb" / "shared").symlink_to(tmp_path / "outside", target_is_directory=True)

    result = hq_import(tmp_path / "kb", db_url)

    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [f"error: shared: {OUTSIDE}"]
    assert source_paths(conn) == {"kb/normal.md"}
    assert documents_holding(conn, secret) == []


def test_links_inside_the_folder_are_not_followed_either_and_the_root_may_be_a_link(
    tmp_path: Path, db_url: str, conn: Conn
) -> None:
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "a.md").write_text("# A\n")
    (kb / "sub" / "b.md").write_text("# B\n")
    (kb / "latest.md").symlink_to(Path("sub") / "b.md")
    (kb / "loop").symlink_to(".", target_is_directory=True)  # a loop: kb/loop/loop/...
    (kb / "dangling.md").symlink_to(kb / "missing.md")
    (tmp_path / "kb-link").symlink_to(kb, target_is_directory=True)

    result = hq_import(tmp_path / "kb-link", db_url)

    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [
        f"error: dangling.md: {INSIDE}",
        f"error: latest.md: {INSIDE}",
        f"error: loop: {INSIDE}",
    ]
    # The root resolves to kb once: its documents are kb/..., each stored once.
    assert source_paths(conn) == {"kb/a.md", "kb/sub/b.md"}


def test_a_folder_swapped_for_a_link_during_the_import_is_not_followed(tmp_path: Path, conn: Conn) -> None:
    secret = secret_file(tmp_path / "outside")
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "a.md").write_text("# A\n")
    (kb / "sub" / "secret.md").write_text("# Harmless\n")

    def swap(rel: Path, outcome: str) -> None:
        # After a.md and before sub/ is read, sub/ becomes a link to the outside folder.
        if rel == Path("a.md"):
            (kb / "sub").rename(tmp_path / "sub-moved")
            (kb / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)

    result = import_folder(conn, kb, on_file=swap)

    assert result.errors == [f"sub/secret.md: its folder sub is {OUTSIDE}"]
    assert source_paths(conn) == {"kb/a.md"}
    assert documents_holding(conn, secret) == []


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Front matter of a few hundred bytes whose aliases expand to width**levels strings."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines)


# `hq-knowledge` with its own peak memory written to argv[1] at exit: VmHWM of its address
# space, which (unlike ru_maxrss) does not include what the forking test process held.
_WITH_PEAK = """
import atexit, re, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as f:
        found = re.search(r"VmHWM:\\s+(\\d+)", f.read())
    with open(out, "w") as f:
        f.write(found.group(1))
atexit.register(peak)
sys.argv[0] = "hq-knowledge"
runpy.run_module("knowledge", run_name="__main__")
"""


def test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path: Path, db_url: str, conn: Conn) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "ok.md").write_text("# OK\n\nFine.\n")
    (kb / "bomb.md").write_text("---\ntitle: Before\n---\nThe first version.\n")
    assert hq_import(kb, db_url).returncode == 0
    before = conn.execute(
        "SELECT title, content_text, updated_at FROM documents WHERE source_path = 'kb/bomb.md'"
    ).fetchone()
    bomb = alias_bomb()
    assert len(bomb) < 600
    (kb / "bomb.md").write_text(f"---\n{bomb}\ntitle: After\n---\nThe second version.\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    env["HQ_DATABASE_URL"] = db_url
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        start = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-c", _WITH_PEAK, str(tmp_path / "peak"), "import", str(kb)],
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        deadline = threading.Timer(120, child.kill)  # fail, rather than hang, on a runaway
        deadline.start()
        _, status, _ = os.wait4(child.pid, 0)
        deadline.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - start
        err.seek(0)
        stderr = err.read()
    peak_mb = int((tmp_path / "peak").read_text()) / 1024  # VmHWM, in KiB
    print(f"alias bomb: the import exited {child.returncode} after {elapsed:.2f} s, peak RSS {peak_mb:.0f} MB")

    assert child.returncode == 1, stderr
    assert [line for line in stderr.splitlines() if line.startswith("error: ")] == [
        ("error: bomb.md: front matter uses a YAML alias (*a0); aliases are not accepted, write the value out")
    ]
    # The whole command (interpreter start, connection, migrations check) well inside what
    # expanding 9**9 strings takes (15-60 s, 1.2 GB): a ceiling, not a speed measurement.
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert peak_mb < 500, f"{peak_mb:.0f} MB"
    assert source_paths(conn) == {"kb/ok.md", "kb/bomb.md"}
    after = conn.execute(
        "SELECT title, content_text, updated_at FROM documents WHERE source_path = 'kb/bomb.md'"
    ).fetchone()
    assert after == before and after is not None and after["title"] == "Before"


def test_oversize_front_matter_is_refused_with_its_size(tmp_path: Path, db_url: str, conn: Conn) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "ok.md").write_text("# OK\n")
    head = "title: Big\nnotes: "
    front = head + "x" * (70_000 - len(head))
    (kb / "big.md").write_text(f"---\n{front}\n---\nBody.\n")
    (kb / "at-limit.md").write_text(f"---\n{head}{'y' * (MAX_FRONT_MATTER_BYTES - len(head))}\n---\nBody.\n")

    result = hq_import(kb, db_url)

    assert result.returncode == 1, result.stderr
    assert error_lines(result) == ["error: big.md: front matter is 70,000 bytes; the limit is 65,536"]
    assert source_paths(conn) == {"kb/ok.md", "kb/at-limit.md"}


@pytest.mark.parametrize(
    ("front_matter", "message"),
    [
        # Each but deep-65 used to raise out of import_folder and stop the whole import.
        # libyaml scans a flow collection to its end before the first event, and stops at 1000.
        (
            "x: " + "[" * 5000 + "]" * 5000,
            "front matter is not valid YAML: while increasing flow level, exceeded maximum nesting depth (line 2)"
            if yaml.__with_libyaml__
            else "front matter nests deeper than 64 levels",
        ),
        ("x: " + "[" * 65 + "]" * 65, "front matter nests deeper than 64 levels"),
        ("reviewed: 2024-13-45", "front matter holds a value YAML cannot convert: month must be in 1..12"),
        (
            "count: " + "7" * 5000,
            (
                "front matter holds a value YAML cannot convert: Exceeds the "
                "limit (4300 digits) for integer string conversion: value has "
                "5000 digits"
            ),
        ),
    ],
    ids=["deep-flow", "deep-65", "bad-date", "huge-int"],
)
def test_bad_front_matter_refuses_that_file_only(tmp_path: Path, conn: Conn, front_matter: str, message: str) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.md").write_text("# A\n")
    (kb / "bad.md").write_text(f"---\n{front_matter}\n---\nBody.\n")
    (kb / "c.md").write_text("---\nx: " + "[" * 63 + "1" + "]" * 63 + "\n---\n# C\n")

    result = import_folder(conn, kb)

    assert result.errors == [f"bad.md: {message}"]
    assert source_paths(conn) == {"kb/a.md", "kb/c.md"}
