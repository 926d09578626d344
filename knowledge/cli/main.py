"""The `hq-knowledge` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from knowledge.cli.parser import build_parser
from knowledge.config import Settings
from knowledge.errors import KnowledgeError

__all__ = ["apply_settings", "main"]


def apply_settings(settings: Settings) -> None:
    """Give the process-wide settings to the modules that use them: the query embedders'
    cache, batch and model directory, and the keyword index searches ask for."""
    from embeddings.query_settings import CACHE_SIZE, QuerySettings, configure_query_embedders
    from knowledge.db.keyword_index import configure_keyword_index

    cache = CACHE_SIZE if settings.query_cache is None else settings.query_cache
    configure_query_embedders(QuerySettings(cache, settings.query_batch or 0, settings.models_dir))
    configure_keyword_index(settings.keyword_index)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "db" and args.db_command == "bundle":
            return _bundle(args)
        settings = Settings.from_env()
        apply_settings(settings)
        return COMMANDS[args.command](args, settings)
    except KnowledgeError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.cli.serve import serve

    return serve(
        settings,
        host=args.host,
        port=args.port,
        worker=not args.no_worker,
        sample=args.sample,
        mcp_read_only=args.mcp_read_only,
    )


def _mcp(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.cli.serve import run_mcp

    return run_mcp(settings, read_only=args.read_only, agent=args.agent)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.cli.serve import run_worker

    return run_worker(settings, once=args.once, batch=args.batch)


def _reembed(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.cli.reembed import run

    return run(args, settings)


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from knowledge.cli.progress import progress
    from knowledge.db.connect import connect, database
    from knowledge.db.migrations import migrate
    from knowledge.store.importer import discover, import_folder

    root = Path(args.path).expanduser()
    with database(settings) as url, connect(url, autocommit=True) as conn:
        migrate(conn)
        total = sum(1 for _ in discover(root)) if root.is_dir() else 0
        with progress(total, "importing", unit="file") as advance:
            result = import_folder(conn, root, on_file=lambda rel, outcome: advance(f"{rel}: {outcome}"))
    print(
        f"imported {root}: {result.created} created, {result.updated} updated, "
        f"{result.unchanged} unchanged, {len(result.errors)} failed"
    )
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result.errors else 0


def _boot(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.db.connect import connect, database
    from knowledge.search.boot import JSON, MARKDOWN, boot_bundle, bundle_markdown

    with database(settings) as url, connect(url, autocommit=True) as conn:
        bundle = boot_bundle(conn, args.slug, max_tokens=args.max_tokens, media_type=JSON if args.json else MARKDOWN)
    if args.json:
        print(json.dumps(bundle.as_json(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(bundle_markdown(bundle))
    return 0


def _search(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import html
    import re

    from knowledge.db.connect import connect, database
    from knowledge.db.keyword_index import repair_bm25_index
    from knowledge.db.pools import configure_for_search
    from knowledge.search import SearchQuery
    from knowledge.search.setup import search_active

    query = SearchQuery(
        q=args.query, limit=args.limit, mode=args.mode, tags_any=tuple(args.tag), kind=args.kind
    ).validated()
    with database(settings) as url, connect(url, autocommit=True) as conn:
        configure_for_search(conn)
        repair_bm25_index(conn)  # this command may have just restarted the embedded server
        result = search_active(conn, query)
    if args.json or not sys.stdout.isatty():
        print(json.dumps(dataclasses.asdict(result), default=str, indent=2))
        return 0
    bold, plain = "\033[1m", "\033[0m"
    print(f"{len(result.hits)} hits ({result.mode}, keyword: {result.keyword_path}, {result.took_ms:.0f} ms)")
    for n, hit in enumerate(result.hits, start=1):
        print(f"{n:>3}. {bold}{hit.title}{plain}  [{hit.kind}] {hit.folder_path}  score {hit.score:.4f}")
        snippet = re.sub(r"\s+", " ", hit.snippet).replace("<mark>", bold).replace("</mark>", plain)
        print(f"     {html.unescape(snippet)[:300]}")
    return 0


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.db.connect import connect, database
    from knowledge.db.migrations import migrate
    from knowledge.store.keys import create_key, list_keys, revoke_key

    with database(settings) as url, connect(url, autocommit=True) as conn:
        migrate(conn)
        if args.keys_command == "create":
            created = create_key(conn, scope=args.scope, name=args.name, agent=args.agent)
            key = created.key
            if args.json:
                print(
                    json.dumps(
                        {
                            "key": created.secret,
                            "id": str(key.id),
                            "name": key.name,
                            "scope": key.scope,
                            "agent": key.agent_slug,
                        }
                    )
                )
            else:
                print(created.secret)
                bound = f", agent {key.agent_slug}" if key.agent_slug else ""
                print(
                    f"created key {key.name!r} ({key.id}, scope {key.scope}{bound}); it is shown "
                    "only now: keep it, then send it as `Authorization: Bearer <key>`",
                    file=sys.stderr,
                )
            return 0
        if args.keys_command == "revoke":
            key = revoke_key(conn, args.key)
            print(f"revoked key {key.name!r} ({key.id}, {key.prefix}...)")
            return 0
        keys = list_keys(conn, include_revoked=args.all)
    if not keys:
        print("no API keys: create one with `hq-knowledge keys create --scope read|write|admin`")
        return 0
    print(f"{'id':<36}  {'name':<24} {'prefix':<13} {'scope':<6} {'agent':<16} {'last used':<17} revoked")
    for k in keys:
        used = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"
        revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else ""
        print(f"{k.id}  {k.name[:24]:<24} {k.prefix:<13} {k.scope:<6} {(k.agent_slug or '-'):<16} {used:<17} {revoked}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    if args.url:
        readiness, counts = _status_of_service(args.url.rstrip("/"), args.key)
    else:
        readiness, counts = _status_of_database(settings)
    if args.json:
        print(json.dumps({**readiness, "counts": counts}, indent=2))
        return 0 if readiness["ready"] else 1
    print("ready" if readiness["ready"] else readiness["detail"].replace("not ready", "NOT READY", 1))
    for c in readiness["components"]:
        since = (c["since"] or "")[:19].replace("T", " ")
        mark = c["state"] if c["required"] else f"({c['state']})"
        print(f"  {c['name']:<16} {mark:<12} {since:<20} {c['detail']}")
    if isinstance(counts, dict):
        print(
            f"queue {counts['queue']}, failed {counts['failed']}, passages {counts['passages']} "
            f"(documents {counts['documents']}, assets {counts['assets']}); "
            f"model {counts['active_model'] or 'none active'}; keyword search {counts['keyword_path']}"
        )
    else:
        print(f"counts: {counts}")
    return 0 if readiness["ready"] else 1


def _status_of_service(url: str, key: str | None) -> tuple[dict[str, Any], dict[str, Any] | str]:
    """GET /readyz and /status of the service at `url`."""
    import httpx

    from knowledge.errors import ServiceUnavailable

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=15) as client:
            ready = client.get("/readyz")
            status = client.get("/status")
    except httpx.HTTPError as e:
        raise ServiceUnavailable(f"cannot reach the service at {url}: {e}") from e
    if ready.status_code not in (200, 503) or "components" not in ready.text:
        raise ServiceUnavailable(f"{url}/readyz answered {ready.status_code}: {ready.text[:200]}")
    counts: dict[str, Any] | str = (
        status.json()
        if status.status_code == 200
        else (
            f"GET /status answered {status.status_code}: {_detail(status)}"
            + (" (give an API key with --key)" if status.status_code == 401 else "")
        )
    )
    report: dict[str, Any] = ready.json()
    return report, counts


def _detail(response: Any) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return str(response.text[:200])


def _status_of_database(settings: Settings) -> tuple[dict[str, Any], dict[str, Any] | str]:
    """Readiness and counts computed against the database; the embedded server is started for
    the check if no process runs it (and said so)."""
    import dataclasses

    import psycopg

    from knowledge.db.connect import connect, database
    from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid
    from knowledge.db.readiness import check_readiness
    from knowledge.errors import first_line
    from knowledge.health import Health
    from knowledge.ingest.status import service_status

    health = Health()
    if settings.database_url is None and postmaster_pid(EmbeddedPostgres(settings.data_dir).pgdata) is None:
        health.set(
            "database_server",
            "stopped",
            f"no process was running the embedded server in {settings.data_dir}: "
            "started for this check (is the service running?)",
        )
    with database(settings) as url:
        readiness = check_readiness(lambda: connect(url, autocommit=True, connect_timeout=5), health, worker_here=False)
        counts: dict[str, Any] | str
        try:
            with connect(url, autocommit=True, connect_timeout=5) as conn:
                counts = dataclasses.asdict(service_status(conn))
        except (KnowledgeError, psycopg.Error) as e:  # an incomplete schema: the readiness says why
            counts = f"not available: {first_line(e)}"
    return readiness.as_json(), counts


def _bundle(args: argparse.Namespace) -> int:
    from knowledge.db.migrations import bundle

    text = bundle()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output} ({len(text.splitlines())} lines)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.config import describe_url
    from knowledge.db.connect import connect, database

    with database(settings) as url:
        if args.db_command == "url":
            print(url)
            return 0
        with connect(url, autocommit=True) as conn:
            if args.db_command == "migrate":
                return _migrate(conn, describe_url(url), reapply=args.reapply)
            return _check(conn, describe_url(url), as_json=args.json)
    raise AssertionError(args.db_command)


def _migrate(conn: Any, where: str, *, reapply: bool) -> int:
    from knowledge.db.migrations import migrate

    print(f"migrating {where}")
    result = migrate(
        conn,
        reapply=reapply,
        on_file=lambda name, state: print(f"  {name:<34} {state}") if state == "applied" else None,
    )
    for name, notices in result.notices.items():
        for notice in notices:
            print(f"  note ({name}): {notice}")
    if result.upgraded_from:
        print(f"upgraded from {result.upgraded_from}: every migration re-applied (they are idempotent)")
    elif result.applied:
        print(f"applied {len(result.applied)} migration(s); {len(result.skipped)} already applied")
    else:
        print(f"schema up to date ({len(result.skipped)} migrations applied)")
    return 0


def _check(conn: Any, where: str, *, as_json: bool) -> int:
    from knowledge.db.schema_check import check_database

    report = check_database(conn)
    if as_json:
        print(json.dumps({"database": where, **report.as_dict()}, indent=2))
        return 0 if report.complete else 1
    print(f"HQ database check: {where}")
    for item in report.items:
        mark = {True: "ok", False: "MISSING", None: "info"}[item.ok]
        print(f"  {item.name:<20} {mark:<8} {item.detail}")
    if report.complete:
        print("complete: the schema is ready")
        return 0
    print(f"incomplete: {len(report.missing)} missing")
    for m in report.missing:
        print(f"  - {m}")
    print("run `hq-knowledge db migrate` to apply what is missing")
    return 1


if __name__ == "__main__":
    sys.exit(main())


# Each subcommand's runner (the serving ones import the service only when chosen).
COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": _serve,
    "mcp": _mcp,
    "worker": _worker,
    "reembed": _reembed,
    "import": _import,
    "search": _search,
    "boot": _boot,
    "keys": _keys,
    "status": _status,
    "db": _db,
}
