"""The migrations as a whole: idempotent, bundle-equivalent, Supabase-aware, atomic per file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from knowledge.db.migrations import LEDGER, bundle, load_migrations, migrate, migrations_dir
from knowledge.db.schema_check import PRIVATE_TABLES, TABLES, check_database
from knowledge.errors import MigrationError

from .conftest import Server
from .pgtools import psql_file, schema_dump

SEED_NAMES = [
    "001_extensions.sql",
    "002_enums.sql",
    "003_shared_functions.sql",
    "004_workspace.sql",
    "005_crm.sql",
    "006_gateways.sql",
    "007_agents.sql",
    "008_interactions.sql",
    "009_tasks_streams.sql",
    "010_comments_attachments.sql",
    "011_assets_documents.sql",
    "012_audit_notifications.sql",
    "013_agent_inbox.sql",
    "014_agent_commands.sql",
    "015_usage_budgets.sql",
    "016_rls_realtime_storage.sql",
    "017_setup_wizard.sql",
]
ALL_NAMES = [
    *SEED_NAMES,
    "018_api_keys.sql",
    "019_release_catch_up.sql",
    "020_sql_bm25.sql",
]  # the seed's 17, then one file per later change


def _migrate(url: str, **kwargs: Any) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return migrate(conn, **kwargs)


def test_files_are_the_seventeen_named_in_the_schema_document_then_ours() -> None:
    migrations = load_migrations()
    assert [m.name for m in migrations] == ALL_NAMES
    for m in migrations:
        assert m.sql.startswith(f"-- {m.name.removesuffix('.sql')}: "), m.name


def test_second_migrate_changes_nothing(empty_db_url: str) -> None:
    first = _migrate(empty_db_url)
    assert first.applied == ALL_NAMES
    before = schema_dump(empty_db_url)

    second = _migrate(empty_db_url)
    assert second.applied == [] and second.skipped == ALL_NAMES
    assert schema_dump(empty_db_url) == before

    # Every file run again, as an operator pasting them twice would: still no change.
    again = _migrate(empty_db_url, reapply=True)
    assert again.applied == ALL_NAMES
    assert schema_dump(empty_db_url) == before
    assert "CREATE TABLE public.documents" in before


def test_bundle_in_one_transaction_equals_migrate(pg_server: Server, empty_db_url: str, tmp_path: Path) -> None:
    _migrate(empty_db_url)
    other = pg_server.create_db()
    try:
        url = pg_server.url(other)
        script = tmp_path / "bundle.sql"
        script.write_text(bundle())
        result = psql_file(url, script)
        assert result.returncode == 0, result.stderr
        assert schema_dump(url) == schema_dump(empty_db_url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert check_database(conn).complete
            # The ledger written by the bundle lets `db migrate` carry on from it.
            assert migrate(conn).applied == []
    finally:
        pg_server.drop_db(other)


def test_bundle_that_fails_applies_nothing(empty_db_url: str, tmp_path: Path) -> None:
    text = bundle().replace(
        "-- ==== 011_assets_documents.sql ====", "SELECT 1 / 0;\n-- ==== 011_assets_documents.sql ===="
    )
    script = tmp_path / "broken.sql"
    script.write_text(text)
    result = psql_file(empty_db_url, script)
    assert result.returncode != 0 and "division by zero" in result.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('agents'), to_regclass(%s)", [LEDGER]).fetchone() == (None, None)


def test_failed_file_is_rolled_back_and_earlier_files_stay(empty_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    (folder / "021_broken.sql").write_text(
        "-- 021_broken: a table, then an error\nCREATE TABLE half_done (id int);\nSELECT missing_function();\n"
    )
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        with pytest.raises(
            MigrationError,
            match=r"021_broken\.sql failed and was rolled back: function missing_function\(\) does not exist",
        ):
            migrate(conn, load_migrations(folder))
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        names = [r[0] for r in conn.execute(f"SELECT name FROM {LEDGER} ORDER BY name")]
        assert names == ALL_NAMES


def test_changed_file_is_reported_and_nothing_runs(empty_db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    _migrate(empty_db_url, migrations=load_migrations(folder))
    edited = folder / "005_crm.sql"
    edited.write_text(edited.read_text() + "\nCREATE TABLE sneaky (id int);\n")
    (folder / "021_next.sql").write_text("-- 021_next: a later file\nCREATE TABLE later (id int);\n")
    with pytest.raises(MigrationError) as caught:
        _migrate(empty_db_url, migrations=load_migrations(folder))
    message = caught.value.message
    assert "005_crm.sql" in message and "changed after it was applied" in message
    assert "\n" not in message
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('sneaky'), to_regclass('later')").fetchone() == (None, None)


def test_misnamed_or_gapped_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("-- 001_a: x\n")
    (tmp_path / "003_c.sql").write_text("-- 003_c: x\n")
    with pytest.raises(MigrationError, match="expected migration number 002"):
        load_migrations(tmp_path)
    (tmp_path / "003_c.sql").rename(tmp_path / "002-Bad.sql")
    with pytest.raises(MigrationError, match=r"NNN_lowercase_name\.sql"):
        load_migrations(tmp_path)


def test_check_reports_what_is_missing(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        report = check_database(conn)
        assert not report.complete
        assert "table documents" in report.missing and "migration 001_extensions.sql" in report.missing
        migrate(conn)
        assert check_database(conn).complete
        conn.execute("DROP TRIGGER agent_usage_rollup ON agent_usage")
        conn.execute("DROP FUNCTION lease_command")
        report = check_database(conn)
        assert not report.complete
        assert set(report.missing) == {"trigger agent_usage.agent_usage_rollup", "function lease_command"}


# -- Supabase-like ---------------------------------------------------------------------------

SUPABASE_ROLES = ("authenticated", "service_role")


@pytest.fixture
def supabase_like_url(pg_server: Server) -> Iterator[str]:
    """An empty database with what Supabase provides: the two roles, the realtime
    publication and a storage schema with buckets and objects."""
    name = pg_server.create_db()
    url = pg_server.url(name)
    with pg_server.admin() as admin:
        for role in SUPABASE_ROLES:
            admin.execute(f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        admin.execute("ALTER ROLE service_role BYPASSRLS")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION supabase_realtime")
        conn.execute("CREATE SCHEMA storage")
        conn.execute(
            "CREATE TABLE storage.buckets (id text PRIMARY KEY, name text NOT NULL, public boolean DEFAULT false)"
        )
        conn.execute(
            "CREATE TABLE storage.objects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
            "bucket_id text REFERENCES storage.buckets (id), name text, owner uuid)"
        )
        conn.execute("ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY")
    try:
        yield url
    finally:
        pg_server.drop_db(name)
        with pg_server.admin() as admin:
            for role in SUPABASE_ROLES:  # roles are cluster-wide: leave none for other tests
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_supabase_like_database_gets_rls_realtime_and_storage(supabase_like_url: str) -> None:
    result = _migrate(supabase_like_url)
    assert result.applied == ALL_NAMES
    with psycopg.connect(supabase_like_url, autocommit=True) as conn:
        secured: dict[str, bool] = dict(
            conn.execute(
                "SELECT c.relname, c.relrowsecurity FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relkind = 'r'"
            ).fetchall()
        )
        policies = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_policies WHERE schemaname = 'public' AND policyname = 'hq_authenticated_all' "
                "AND 'authenticated' = ANY (roles)"
            )
        }
        for table in TABLES:
            assert secured[table], table
            # api_keys and the BM25 tables: RLS with no policy, so Supabase's REST roles never
            # read the key hashes or the keyword index's statistics
            assert (table in policies) == (table not in PRIVATE_TABLES), table
        members = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'")
        }
        assert {"agent_commands", "agent_inbox_items"} <= members
        buckets = {r[0] for r in conn.execute("SELECT id FROM storage.buckets")}
        assert {"assets", "attachments"} <= buckets
        report = check_database(conn)
        assert report.complete
        assert {i.name: i.ok for i in report.items}["row-level security"] is True

        # The policy admits the authenticated role, and RLS is really on: a role without a
        # policy sees nothing.
        conn.execute("INSERT INTO agents (slug, name) VALUES ('scout', 'Scout')")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE authenticated")
            assert conn.execute("SELECT slug FROM agents").fetchall() == [("scout",)]
            conn.execute("INSERT INTO tags (name) VALUES ('vip')")
        conn.execute(
            "INSERT INTO api_keys (name, prefix, key_hash, scope) VALUES ('ops', 'hqk_abcd', sha256('x'), 'admin')"
        )
        for role in ("authenticated",):
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT count(*) FROM api_keys")
                raise psycopg.Rollback()

    before = schema_dump(supabase_like_url)
    _migrate(supabase_like_url, reapply=True)
    assert schema_dump(supabase_like_url) == before


def test_plain_postgres_skips_supabase_parts_with_notices(empty_db_url: str) -> None:
    result = _migrate(empty_db_url)
    notes = " ".join(result.notices.get("016_rls_realtime_storage.sql", []))
    assert "row-level security policies left out" in notes
    assert "supabase_realtime not found" in notes and "storage schema not found" in notes
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'").fetchone() == (0,)
        secured = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relrowsecurity "
                "AND relnamespace = 'public'::regnamespace AND relkind = 'r'"
            )
        ]
        assert sorted(secured) == sorted(PRIVATE_TABLES)  # on everywhere: only the service reads them
