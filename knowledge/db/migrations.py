"""The migration runner: applies db/migrations/*.sql in filename order.

Each file runs in its own transaction, and a ledger table records its name, checksum and
the schema release that applied it. Every file is idempotent: tables are created once
(`IF NOT EXISTS`; a change to a table is a new numbered file), while functions, triggers,
views and policies are replaced each time the file runs. So a database of an earlier release
is upgraded by running every file again, then the new ones: `migrate` does that by itself
when the ledger holds checksums of an earlier release (db/migrations/releases.json lists the
checksums of every release). A file whose applied checksum belongs to no release was edited
by hand after it was applied: that is reported, never silently re-run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from knowledge.errors import DatabaseUnavailable, MigrationError

__all__ = [
    "LEDGER",
    "MigrateResult",
    "Migration",
    "Release",
    "ReleaseState",
    "applied_migrations",
    "bundle",
    "current_release",
    "database_release",
    "load_migrations",
    "load_releases",
    "migrate",
    "preflight",
]


def _tuples(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A cursor with tuple rows, whatever row factory the caller's connection has."""
    return conn.cursor(row_factory=tuple_row)


LEDGER = "hq_schema_migrations"
# Notices that are not news: "already exists, skipping" on a re-run, BM25 build progress.
_QUIET_NOTICE = re.compile(r"already exists, skipping|^BM25 index build|^Using (text search|index options)")
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 7_417_226_301  # pg_advisory_lock key: one migrator at a time per database
MIN_SERVER_VERSION = 150000
MIN_VECTOR_VERSION = (0, 7)

_LEDGER_DDL = f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
  name       text PRIMARY KEY,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {LEDGER} ADD COLUMN IF NOT EXISTS release integer;
COMMENT ON TABLE {LEDGER} IS 'Migrations applied to this database: file name, sha256 of its text, schema release.';
"""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class MigrateResult:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notices: dict[str, list[str]] = field(default_factory=dict)
    upgraded_from: str | None = None
    """The release the database was at when an upgrade re-applied every file, else None."""


@dataclass(frozen=True)
class Release:
    """One schema release: the checksum of each of its migration files."""

    number: int
    date: str
    commit: str | None
    files: dict[str, str]

    @property
    def label(self) -> str:
        return f"release {self.number} of {self.date}" + (f" ({self.commit})" if self.commit else "")


@dataclass(frozen=True)
class ReleaseState:
    """Where a database stands against the files of this version of HQ."""

    release: Release | None
    """The release whose files the ledger holds exactly; None for a new database, or a mix."""
    current: bool
    """Every file applied with its current text."""
    pending: list[str]
    """Files not applied yet."""
    upgradable: list[str]
    """Applied files whose applied and present texts are both a release's: `migrate` upgrades them."""
    edited: list[str]
    """Applied files whose applied or present text is no release's: edited after it was applied."""

    @property
    def label(self) -> str:
        if self.release is not None:
            return self.release.label
        if not self.pending and not self.upgradable and not self.edited:
            return "new database"
        return "no known release (some files edited after they were applied)" if self.edited else "between releases"


def migrations_dir() -> Path:
    """The directory holding the SQL files: in the wheel, or in a source checkout."""
    here = Path(__file__).resolve().parents[1]  # the package: knowledge/
    for candidate in (here / "_migrations", here.parent / "db" / "migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"no migrations directory found next to {here}")


def load_releases(directory: Path | None = None) -> list[Release]:
    """Every schema release, oldest first, from releases.json beside the migration files."""
    path = (directory or migrations_dir()) / "releases.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise MigrationError(f"{path.name} is not valid JSON: {e}") from e
    return [Release(e["release"], e["date"], e.get("commit"), dict(e["files"])) for e in entries]


def current_release(migrations: list[Migration], releases: list[Release]) -> int | None:
    """The number of the release these files are, None when they are no release's (edited)."""
    files = {m.name: m.checksum for m in migrations}
    return next((r.number for r in reversed(releases) if r.files == files), None)


def database_release(
    applied: dict[str, tuple[str, datetime]],
    migrations: list[Migration],
    releases: list[Release],
) -> ReleaseState:
    """Compare the ledger (`applied_migrations`) with the files and the known releases."""
    known: dict[str, set[str]] = {}
    for r in releases:
        for name, checksum in r.files.items():
            known.setdefault(name, set()).add(checksum)
    ledger = {name: checksum for name, (checksum, _) in applied.items()}
    exact = next((r for r in reversed(releases) if r.files == ledger), None)
    pending = [m.name for m in migrations if m.name not in applied]
    changed = [m for m in migrations if m.name in applied and applied[m.name][0] != m.checksum]
    # An upgrade replaces one release's text of a file by another's; any other change is an edit.
    upgradable = [m.name for m in changed if {applied[m.name][0], m.checksum} <= known.get(m.name, set())]
    edited = [m.name for m in changed if m.name not in upgradable]
    return ReleaseState(exact, not pending and not changed, pending, upgradable, edited)


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every migration file, in order. Raises MigrationError on a misnamed or missing number."""
    directory = directory or migrations_dir()
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    migrations = []
    for expected, path in enumerate(files, start=1):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_lowercase_name.sql")
        if int(match.group(1)) != expected:
            raise MigrationError(
                f"{path.name}: expected migration number {expected:03d} here (numbers run 001, 002, ... without gaps)"
            )
        migrations.append(Migration(path.name, path.read_text(encoding="utf-8")))
    if not migrations:
        raise MigrationError(f"no migration files in {directory}")
    return migrations


def preflight(conn: psycopg.Connection[Any]) -> None:
    """Check the server can hold the schema: PostgreSQL >= 15 and pgvector >= 0.7 available."""
    version = int(_tuples(conn).execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    if version < MIN_SERVER_VERSION:
        raise DatabaseUnavailable(f"PostgreSQL {version // 10000} is too old: HQ needs PostgreSQL 15 or newer")
    row = (
        _tuples(conn)
        .execute("SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'vector'")
        .fetchone()
    )
    if row is None:
        raise DatabaseUnavailable(
            f"the pgvector extension is not installed on this PostgreSQL {version // 10000} server: "
            f"install it (Debian/Ubuntu: apt install postgresql-{version // 10000}-pgvector; "
            "Supabase: enable 'vector' under Database > Extensions), then run the migrations again"
        )
    available = tuple(int(p) for p in re.findall(r"\d+", row[1] or row[0])[:2])
    if available < MIN_VECTOR_VERSION:
        raise DatabaseUnavailable(
            f"pgvector {row[1] or row[0]} is too old: HQ needs pgvector 0.7 or newer "
            "(ALTER EXTENSION vector UPDATE after upgrading the package)"
        )


def applied_migrations(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, datetime]]:
    """name -> (checksum, applied_at) from the ledger; empty when there is no ledger yet."""
    exists = _tuples(conn).execute("SELECT to_regclass(%s) IS NOT NULL", [LEDGER]).fetchone()
    if not exists or not exists[0]:
        return {}
    rows = _tuples(conn).execute(f"SELECT name, checksum, applied_at FROM {LEDGER}").fetchall()
    return {name: (checksum, at) for name, checksum, at in rows}


def check_unchanged(
    migrations: list[Migration], applied: dict[str, tuple[str, datetime]], releases: list[Release]
) -> None:
    """Raise MigrationError naming every applied file whose text has changed since, other than
    by a release of HQ (those `migrate` upgrades by itself)."""
    state = database_release(applied, migrations, releases)
    by_name = {m.name: m for m in migrations}
    if state.edited:
        names = ", ".join(
            f"{name} (applied {applied[name][1]:%Y-%m-%d %H:%M}, checksum {applied[name][0][:12]} "
            f"now {by_name[name].checksum[:12]})"
            for name in state.edited
        )
        raise MigrationError(
            f"migration file changed after it was applied: {names}, and neither text is one of a "
            "release of HQ. Applied migrations are immutable: restore the file and put the change in "
            "a new migration (or, if the database was migrated by a newer HQ, run that version; to "
            "apply these files anyway, all of which are idempotent: `hq-knowledge db migrate --reapply`)"
        )


def migrate(
    conn: psycopg.Connection[Any],
    migrations: list[Migration] | None = None,
    *,
    reapply: bool = False,
    on_file: Callable[[str, str], None] | None = None,
) -> MigrateResult:
    """Apply every pending migration, each file in its own transaction.

    A database of an earlier release (its ledger holds an earlier release's checksums) is
    upgraded: every file runs again, in order, then the new ones. With `reapply`, files
    already applied run again in any case: a repair for a schema changed by hand. `conn` must
    be in autocommit mode. `on_file(name, state)` is called with state "applied" or
    "skipped" as the run goes. Raises MigrationError when a file fails (that file is rolled
    back; earlier ones stay applied) or when an applied file was edited after it was applied
    and its text is no release's (then nothing is applied), except with `reapply`.
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs a connection in autocommit mode")
    migrations = load_migrations() if migrations is None else migrations
    releases = load_releases()
    current = current_release(migrations, releases)
    result = MigrateResult()
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized in ("NOTICE", "WARNING") and diag.message_primary:
            notices.append(diag.message_primary)

    conn.add_notice_handler(collect)
    _tuples(conn).execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
    try:
        preflight(conn)
        _tuples(conn).execute("SET client_min_messages = notice")
        with conn.transaction():
            # Quiet: "relation already exists, skipping" is not news worth reporting.
            _tuples(conn).execute("SET LOCAL client_min_messages = warning")
            _tuples(conn).execute(_LEDGER_DDL)
        applied = applied_migrations(conn)
        if not reapply:  # reapplying runs every file again and records its checksum now
            check_unchanged(migrations, applied, releases)
            state = database_release(applied, migrations, releases)
            if state.upgradable:
                reapply = True
                result.upgraded_from = state.label
        for m in migrations:
            if m.name in applied and not reapply:
                result.skipped.append(m.name)
                if on_file:
                    on_file(m.name, "skipped")
                continue
            notices.clear()
            try:
                with conn.transaction():
                    _tuples(conn).execute(m.sql.encode())  # trusted file text, run as is
                    _tuples(conn).execute(
                        f"INSERT INTO {LEDGER} (name, checksum, release) VALUES (%s, %s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, "
                        "release = EXCLUDED.release, applied_at = now()",
                        [m.name, m.checksum, current],
                    )
            except psycopg.Error as e:
                raise MigrationError(f"{m.name} failed and was rolled back: {_first_line(e)}") from e
            result.applied.append(m.name)
            if any(not _QUIET_NOTICE.search(n) for n in notices):
                result.notices[m.name] = [n for n in notices if not _QUIET_NOTICE.search(n)]
            if on_file:
                on_file(m.name, "applied")
    finally:
        conn.remove_notice_handler(collect)
        if not conn.closed and not conn.broken:
            _tuples(conn).execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
    return result


def bundle(migrations: list[Migration] | None = None) -> str:
    """Every migration as one SQL script to paste into an SQL editor and run in one go.

    It also creates the ledger and records each file, so that `db migrate` and `db check`
    later see a database set up from the bundle as fully migrated.
    """
    migrations = load_migrations() if migrations is None else migrations
    current = current_release(migrations, load_releases())
    release = "NULL" if current is None else str(current)
    parts = [
        "-- HQ Knowledge schema: every migration in filename order, in one transaction.",
        "-- Safe to run again: each file is idempotent.",
        "BEGIN;",
        "",
        _LEDGER_DDL,
    ]
    for m in migrations:
        parts += [f"-- ==== {m.name} ====", m.sql.rstrip(), ""]
        parts.append(
            f"INSERT INTO {LEDGER} (name, checksum, release) VALUES ('{m.name}', '{m.checksum}', {release}) "
            "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, release = EXCLUDED.release, "
            "applied_at = now();"
        )
        parts.append("")
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


def _first_line(e: psycopg.Error) -> str:
    diag = e.diag
    text = diag.message_primary or str(e).strip().splitlines()[0]
    if diag.context:
        where = diag.context.strip().splitlines()[-1]
        return f"{text} ({where})"
    return text
