"""Helpers for tests that inspect schemas: pg_dump and psql from the bundled server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def pg_bin(name: str) -> Path:
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def schema_dump(url: str) -> str:
    """`pg_dump --schema-only`, normalised: no comments, blank lines or per-run restrict keys."""
    out = subprocess.run(
        [str(pg_bin("pg_dump")), "--schema-only", "--no-owner", "-d", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [
        line
        for line in out.splitlines()
        if line.strip() and not line.startswith("--") and not re.match(r"\\(un)?restrict ", line)
    ]
    return "\n".join(lines)


def psql_file(url: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run an SQL file with psql, stopping at the first error, as an SQL editor would."""
    return subprocess.run(
        [str(pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
