"""`db check`: the onboarding validator. What the schema must hold, and what a database has.

The manifest here is written independently of the migrations on purpose: it is the
contract the rest of HQ relies on, and a migration that drops or renames a piece of it
shows up as missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from embeddings.registry import ACTIVE_MODEL
from knowledge.db.keyword_index import keyword_path
from knowledge.db.migrations import (
    Migration,
    applied_migrations,
    current_release,
    database_release,
    load_migrations,
    load_releases,
)

__all__ = ["CheckItem", "CheckReport", "check_database"]


def _tuples(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A cursor with tuple rows, whatever row factory the caller's connection has."""
    return conn.cursor(row_factory=tuple_row)


TABLES = (
    "workspace",
    "pipeline_stages",
    "field_definitions",
    "tags",
    "campaigns",
    "contacts",
    "organizations",
    "contact_organizations",
    "templates",
    "gateways",
    "gateway_registration_tokens",
    "agents",
    "interactions",
    "streams",
    "tasks",
    "task_series",
    "comments",
    "task_attachments",
    "assets",
    "asset_folders",
    "documents",
    "document_folders",
    "draft_sets",
    "embedding_models",
    "knowledge_chunks",
    "chunk_embeddings",
    "reembed_jobs",
    "reembed_items",
    "audit_log",
    "notifications",
    "agent_inbox_items",
    "automation_rules",
    "agent_commands",
    "agent_usage",
    "agent_budgets",
    "api_keys",
    "bm25_postings",
    "bm25_corpus",
)
FUNCTIONS = (
    "set_updated_at",
    "create_gateway_token",
    "consume_gateway_token",
    "agent_reports_chain",
    "spawn_due_task_series",
    "document_folder_path",
    "asset_folder_path",
    "hq_bm25_top",
    "hq_sql_bm25_top",
    "hq_sql_bm25_rebuild",
    "hq_ensure_embedding_index",
    "notify_operator",
    "enqueue_inbox_item",
    "lease_inbox_item",
    "complete_inbox_item",
    "fail_inbox_item",
    "run_automation_rules",
    "lease_command",
    "start_command",
    "complete_command",
    "fail_command",
    "check_agent_budget",
    "recompute_agent_budget",
    "complete_setup",
)
TRIGGERS = (  # (table, trigger): the ones with behaviour; updated_at triggers are checked apart
    ("agents", "agents_reject_reporting_cycle"),
    ("interactions", "interactions_sync"),
    ("tasks", "tasks_track_status"),
    ("tasks", "tasks_automation"),
    ("comments", "comments_automation"),
    ("contacts", "contacts_automation"),
    ("organizations", "organizations_automation"),
    ("interactions", "interactions_automation"),
    ("agent_inbox_items", "agent_inbox_items_notify"),
    ("agent_commands", "agent_commands_notify"),
    ("agent_usage", "agent_usage_rollup"),
    ("agent_usage", "agent_usage_append_only"),
    ("documents", "documents_requeue_embedding"),
    ("assets", "assets_requeue_embedding"),
    ("chunk_embeddings", "chunk_embeddings_check_dims"),
    ("document_folders", "document_folders_reject_cycle"),
    ("asset_folders", "asset_folders_reject_cycle"),
    ("knowledge_chunks", "knowledge_chunks_bm25_insert"),
    ("knowledge_chunks", "knowledge_chunks_bm25_update"),
    ("knowledge_chunks", "knowledge_chunks_bm25_delete"),
    ("knowledge_chunks", "knowledge_chunks_bm25_truncate"),
)
REALTIME_TABLES = ("agent_commands", "agent_inbox_items")
PRIVATE_TABLES = ("api_keys", "bm25_postings", "bm25_corpus")
"""Row-level security on and no policy: only the service's own role reads them (key hashes,
the keyword index's statistics)."""
STORAGE_BUCKETS = ("assets", "attachments")


@dataclass
class CheckItem:
    name: str
    ok: bool | None  # None: informational, never makes the check fail
    detail: str
    missing: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    items: list[CheckItem]

    @property
    def complete(self) -> bool:
        return all(item.ok is not False for item in self.items)

    @property
    def missing(self) -> list[str]:
        return [m for item in self.items for m in item.missing]

    def as_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "items": [asdict(i) for i in self.items]}


def _names(conn: psycopg.Connection[Any], sql: str) -> set[Any]:
    return {row[0] if len(row) == 1 else tuple(row) for row in _tuples(conn).execute(sql.encode())}


def check_database(conn: psycopg.Connection[Any], migrations: list[Migration] | None = None) -> CheckReport:
    """Inspect the database behind `conn` and report what is present and what is missing."""
    migrations = load_migrations() if migrations is None else migrations
    items: list[CheckItem] = []

    version = _tuples(conn).execute("SELECT current_setting('server_version')").fetchone()[0]  # type: ignore[index]
    extensions = dict(_tuples(conn).execute("SELECT extname, extversion FROM pg_extension").fetchall())
    if "vector" in extensions:
        items.append(CheckItem("server", True, f"PostgreSQL {version}, pgvector {extensions['vector']}"))
    else:
        items.append(CheckItem("server", False, f"PostgreSQL {version}, pgvector not installed", ["extension vector"]))

    applied = applied_migrations(conn)
    releases = load_releases()
    state = database_release(applied, migrations, releases)
    ok = state.current
    detail = f"{len(migrations) - len(state.pending)} of {len(migrations)} applied"
    if state.edited:
        detail += f", changed since applied: {', '.join(state.edited)}"
    elif state.upgradable:
        detail += f", {len(state.upgradable)} of an earlier release (db migrate or serve upgrades them)"
    else:
        detail += ", none changed"
    items.append(
        CheckItem(
            "migrations",
            ok,
            detail,
            [f"migration {n}" for n in state.pending]
            + [f"migration {n} (changed since applied)" for n in state.edited]
            + [f"migration {n} (upgrade from {state.label})" for n in state.upgradable],
        )
    )
    current = current_release(migrations, releases)
    at = "no migration applied" if not applied else state.label
    items.append(
        CheckItem(
            "release",
            None,
            f"database at {at}; these files are " + (f"release {current}" if current else "no release (edited)"),
        )
    )

    schema_sql = "current_schema()"
    tables = _names(conn, f"SELECT tablename FROM pg_tables WHERE schemaname = {schema_sql}")
    items.append(_expect("tables", TABLES, tables, "table"))

    functions = _names(
        conn,
        f"SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = {schema_sql}",
    )
    items.append(_expect("functions", FUNCTIONS, functions, "function"))

    triggers = _names(
        conn,
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {schema_sql} "
        "AND NOT t.tgisinternal",
    )
    stamped = _names(
        conn,
        "SELECT table_name FROM information_schema.columns "
        f"WHERE table_schema = {schema_sql} AND column_name = 'updated_at'",
    )
    wanted = list(TRIGGERS) + [(t, f"{t}_updated_at") for t in sorted(stamped & set(TABLES))]
    missing = [f"trigger {t}.{g}" for t, g in wanted if (t, g) not in triggers]
    items.append(CheckItem("triggers", not missing, f"{len(wanted) - len(missing)} of {len(wanted)}", missing))

    items.append(_seed_rows(conn, tables))
    items.append(_vector_index(conn, tables))
    if "knowledge_chunks" in tables:
        path = keyword_path(conn)
        items.append(
            CheckItem(
                "keyword search",
                None,
                f"bm25 (pg_textsearch {extensions['pg_textsearch']})"
                if path == "bm25"
                else "sql-bm25 (BM25 from the bm25_postings and bm25_corpus tables)"
                if path == "sql-bm25"
                else "ts_rank_cd over tsvector (no BM25 index: the SQL BM25 tables are missing)",
            )
        )
    items.append(
        CheckItem(
            "pg_cron",
            None,
            f"installed ({extensions['pg_cron']})"
            if "pg_cron" in extensions
            else "not installed: the service runs scheduled jobs itself",
        )
    )
    items.extend(_supabase(conn, tables))
    return CheckReport(items)


def _expect(name: str, wanted: tuple[str, ...], present: set[Any], kind: str) -> CheckItem:
    missing = [f"{kind} {w}" for w in wanted if w not in present]
    return CheckItem(name, not missing, f"{len(wanted) - len(missing)} of {len(wanted)}", missing)


def _count(conn: psycopg.Connection[Any], query: str) -> int:
    """The count `query` returns; 0 when the schema cannot answer it (a column missing)."""
    try:
        with conn.transaction():
            row = _tuples(conn).execute(query).fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def _seed_rows(conn: psycopg.Connection[Any], tables: set[Any]) -> CheckItem:
    checks = {
        "workspace row": ("workspace", "SELECT count(*) FROM workspace WHERE id = 1"),
        "pipeline stages": ("pipeline_stages", "SELECT count(*) FROM pipeline_stages"),
        "default stream": ("streams", "SELECT count(*) FROM streams WHERE is_default"),
        "active embedding model": ("embedding_models", f"SELECT count(*) FROM ({ACTIVE_MODEL.as_string(None)}) m"),
    }
    missing = [
        f"seed row: {label}" for label, (table, sql) in checks.items() if table not in tables or not _count(conn, sql)
    ]
    return CheckItem("seed rows", not missing, f"{len(checks) - len(missing)} of {len(checks)}", missing)


def _vector_index(conn: psycopg.Connection[Any], tables: set[Any]) -> CheckItem:
    if "embedding_models" not in tables or "chunk_embeddings" not in tables:
        return CheckItem("vector index", False, "no embedding tables", ["vector index of the active model"])
    try:
        with conn.transaction():
            row = (
                _tuples(conn)
                .execute(
                    "SELECT m.name, m.dims, hq_embedding_index_name(m.name),"
                    f" to_regclass(hq_embedding_index_name(m.name)) FROM ({ACTIVE_MODEL.as_string(None)}) m"
                )
                .fetchone()
            )
    except psycopg.Error as e:  # a schema too old or damaged to read it
        return CheckItem("vector index", False, f"cannot read the active model: {e}", ["active embedding model"])
    if row is None:
        return CheckItem("vector index", False, "no active embedding model", ["active embedding model"])
    name, dims, index, exists = row
    if exists is None:
        return CheckItem("vector index", False, f"{name} ({dims} dims): {index} missing", [f"HNSW index {index}"])
    return CheckItem("vector index", True, f"{name} ({dims} dims): HNSW {index}")


def _supabase(conn: psycopg.Connection[Any], tables: set[Any]) -> list[CheckItem]:
    """RLS, realtime and storage are required where Supabase provides their pieces."""
    roles = _names(conn, "SELECT rolname FROM pg_roles WHERE rolname IN ('authenticated', 'service_role')")
    items = []
    if len(roles) == 2:
        rows = (
            _tuples(conn)
            .execute(
                "SELECT c.relname, c.relrowsecurity, EXISTS (SELECT 1 FROM pg_policies p WHERE p.schemaname = "
                "current_schema() AND p.tablename = c.relname AND p.policyname = 'hq_authenticated_all') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
            .fetchall()
        )
        secured = {name for name, rls, policy in rows if rls and policy}
        private = {name for name, rls, policy in rows if rls and not policy}
        missing = [
            f"row-level security policy on {t}"
            for t in TABLES
            if t in tables and t not in PRIVATE_TABLES and t not in secured
        ]
        missing += [
            f"row-level security without a policy on {t} (the service's alone)"
            for t in PRIVATE_TABLES
            if t in tables and t not in private
        ]
        items.append(
            CheckItem(
                "row-level security", not missing, f"{len(TABLES) - len(missing)} of {len(TABLES)} tables", missing
            )
        )
    else:
        items.append(CheckItem("row-level security", None, "not Supabase (no authenticated/service_role roles)"))
    if _tuples(conn).execute("SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime'").fetchone():
        members = _names(conn, "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'")
        missing = [f"realtime publication of {t}" for t in REALTIME_TABLES if t not in members]
        items.append(
            CheckItem("realtime", not missing, ", ".join(t for t in REALTIME_TABLES if t in members) or "none", missing)
        )
    else:
        items.append(CheckItem("realtime", None, "no supabase_realtime publication: LISTEN/NOTIFY wakes workers"))
    if _tuples(conn).execute("SELECT to_regclass('storage.buckets')").fetchone()[0] is not None:  # type: ignore[index]
        buckets = _names(conn, "SELECT id FROM storage.buckets")
        missing = [f"storage bucket {b}" for b in STORAGE_BUCKETS if b not in buckets]
        items.append(
            CheckItem("storage", not missing, f"buckets {', '.join(sorted(buckets & set(STORAGE_BUCKETS)))}", missing)
        )
    else:
        items.append(CheckItem("storage", None, "no storage schema: files referenced by URL or path"))
    return items
