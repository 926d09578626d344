"""The command line's arguments: `hq-knowledge` and its subcommands, with their help."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from knowledge import __version__

__all__ = ["build_parser"]


NO_WRITES = "no write tools (save_document, update_document)"


if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hq-knowledge",
        description="HQ Knowledge: documents, assets, hybrid search and boot bundles for AI agents. "
        "Uses HQ_DATABASE_URL when set, else an embedded PostgreSQL in HQ_DATA_DIR.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="apply migrations and run the API and the ingestion worker")
    serve.add_argument("--host", help="address to listen on (default HQ_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default HQ_PORT or 8765)")
    serve.add_argument("--no-worker", action="store_true", help="run the API only")
    serve.add_argument(
        "--sample", action="store_true", help="import the sample knowledge base first (again: only changes are applied)"
    )
    serve.add_argument("--mcp-read-only", action="store_true", help=f"the MCP server at /mcp offers {NO_WRITES}")

    mcp = commands.add_parser("mcp", help="run the MCP server over stdio, for a local agent runtime")
    mcp.add_argument("--read-only", action="store_true", help=f"offer {NO_WRITES}")
    mcp.add_argument(
        "--agent",
        metavar="SLUG",
        help="bind the session to this agent: boot_context defaults to it, saves are recorded as its",
    )

    worker = commands.add_parser("worker", help="embed pending documents and assets, waking on every change")
    worker.add_argument("--once", action="store_true", help="drain the queue, then exit")
    worker.add_argument("--batch", type=int, default=64, metavar="N", help="records leased per round (default 64)")

    boot = commands.add_parser(
        "boot", help="print an agent's boot bundle: its boot:all and boot:<slug> documents and assets as markdown"
    )
    boot.add_argument("slug", help="the agent's slug")
    boot.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="token budget, 1..1000000: items in order while they fit, the first that "
        "does not cut at a paragraph or section, the rest listed as left out",
    )
    boot.add_argument("--json", action="store_true", help="print the bundle as JSON (as GET /boot/SLUG)")

    find = commands.add_parser("search", help="search documents and assets (hybrid by default)")
    find.add_argument("query")
    find.add_argument("--mode", choices=("hybrid", "semantic", "keyword"), default="hybrid")
    find.add_argument("--limit", type=int, default=10, help="hits to show, 1-100 (default 10)")
    find.add_argument("--tag", action="append", default=[], help="only items with this tag (repeatable: any)")
    find.add_argument("--kind", choices=("document", "asset"))
    find.add_argument("--json", action="store_true", help="print JSON instead of a table")

    keys = _group(commands, "keys", "API keys: create, list, revoke")
    create = keys.add_parser("create", help="create a key and print it (once: only its hash is stored)")
    create.add_argument(
        "--scope",
        required=True,
        choices=("read", "write", "admin"),
        help="read: search and read; write: also create and update; "
        "admin: also archive, delete, re-embed, switch models and manage keys",
    )
    create.add_argument("--agent", metavar="SLUG", help="bind the key to this agent: its caller is that agent")
    create.add_argument("--name", help="a name to recognise the key by")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    listing = keys.add_parser("list", help="list the keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", metavar="ID|NAME|PREFIX", help="the key's id, name or prefix (as `keys list` shows)")

    from knowledge.cli.reembed import add_parser as add_reembed

    add_reembed(commands)

    imp = commands.add_parser("import", help="import a folder of .md, .markdown, .html and .txt files as documents")
    imp.add_argument("path", help="the folder; its structure becomes the document folder tree")

    status = commands.add_parser(
        "status",
        help="is the service ready: its components (database, schema, disk, worker, embedded "
        "server) with their states, and the counts (queue, failed, passages, model); exit 0 only when ready",
    )
    status.add_argument(
        "--url",
        metavar="URL",
        help="ask the service running at URL (GET /readyz and /status); without it, check "
        "the database directly (the worker's state is then unknown)",
    )
    status.add_argument(
        "--key", metavar="KEY", help="an API key for GET /status, when the service at --url requires keys"
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")

    db = _group(commands, "db", "schema commands")
    migrate = db.add_parser("migrate", help="apply pending migrations in filename order")
    migrate.add_argument(
        "--reapply",
        action="store_true",
        help="run every migration again (they are idempotent): repairs a schema changed by hand",
    )
    bundle = db.add_parser("bundle", help="print every migration as one SQL script to paste into an SQL editor")
    bundle.add_argument("-o", "--output", help="write to this file instead of standard output")
    check = db.add_parser("check", help="report what the schema has and lacks; exit 0 only when complete")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    db.add_parser("url", help="print the database URL (starts the embedded server if needed)")
    return parser


def _group(commands: Subcommands, name: str, help: str) -> Subcommands:
    """The subcommands of command `name` (`<name>_command` holds the one given)."""
    return commands.add_parser(name, help=help).add_subparsers(
        dest=f"{name}_command", required=True, metavar=f"{name.upper()}_COMMAND"
    )
