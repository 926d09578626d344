"""`hq-knowledge reembed`: re-embed passages, build a new model's vectors and switch search
to it, or drop a model."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from datetime import datetime
from types import FrameType
from typing import Any
from uuid import UUID

from knowledge.config import Settings
from knowledge.errors import InvalidInput
from knowledge.ingest import queue

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "reembed",
        help="re-embed passages (all, stale, failed or selected), or build another model's "
        "vectors beside the active one and switch search to it when they are complete",
        description="Without --model: re-embed with the active model (everything, or what --stale, "
        "--tag, --folder, --since select). With --model: build that model's vectors while search keeps "
        "serving the active one, then switch to it atomically. A job survives interruptions: run the "
        "same command again to resume it; several processes running it share the work.",
    )
    p.add_argument(
        "--model",
        metavar="NAME|DIR",
        help="all-MiniLM-L6-v2, all-MiniLM-L6-v2-int8, a sentence-transformers model "
        "directory, or fake-hash-<dims> (tests)",
    )
    p.add_argument("--name", help="register a model directory under this name (default: the directory's name)")
    p.add_argument("--stale", action="store_true", help="only passages without a vector of the model's current text")
    p.add_argument("--failed", action="store_true", help="retry documents and assets whose embedding failed, then exit")
    p.add_argument("--tag", action="append", default=[], help="only items with this tag (repeatable: any)")
    p.add_argument("--folder", metavar="ID", help="only items in this document or asset folder and below")
    p.add_argument("--since", metavar="DATE", help="only items updated since (ISO date or date-time)")
    p.add_argument("--dry-run", action="store_true", help="say how many passages and how long; change nothing")
    p.add_argument(
        "--no-activate", action="store_true", help="with --model: build the vectors but keep searching the active model"
    )
    p.add_argument("--batch", type=int, default=128, metavar="N", help="passages per transaction (default 128)")
    p.add_argument("--activate", metavar="MODEL", help="switch search to MODEL (it must cover every passage)")
    p.add_argument("--drop", metavar="MODEL", help="remove MODEL's vectors and index (not the active model)")
    p.add_argument("--status", action="store_true", help="list the models and how many passages each covers")


def _selection(args: argparse.Namespace) -> Any:
    from knowledge.ingest.reembed_jobs import Selection

    folder = None
    if args.folder:
        try:
            folder = UUID(args.folder)
        except ValueError:
            raise InvalidInput(f"--folder: a folder id (UUID), got {args.folder!r}") from None
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise InvalidInput(f"--since: an ISO date or date-time such as 2026-11-30, got {args.since!r}") from None
        if since.tzinfo is None:
            since = since.astimezone()  # local time, as the operator typed it
    for tag in args.tag:
        if not tag or len(tag) > 100:
            raise InvalidInput(f"--tag: tags are 1 to 100 characters, got {tag[:40]!r}")
    if not 1 <= args.batch <= 10_000:
        raise InvalidInput(f"--batch: from 1 to 10000, got {args.batch}")
    return Selection(stale=args.stale, tags=tuple(args.tag), folder=folder, since=since)


def run(args: argparse.Namespace, settings: Settings) -> int:
    actions = [a for a in ("activate", "drop", "status") if getattr(args, a)]
    building = args.model or args.stale or args.failed or args.tag or args.folder or args.since or args.dry_run
    if len(actions) > 1 or (actions and building):
        raise InvalidInput("--activate, --drop and --status each go alone")
    if args.failed and (args.model or args.dry_run):
        raise InvalidInput(
            "--failed retries failed documents and assets with the active model: it takes no --model or --dry-run"
        )
    selection = _selection(args)
    from knowledge.db.connect import connect, database
    from knowledge.db.migrations import migrate

    with database(settings) as url, connect(url, autocommit=True) as conn:
        migrate(conn)
        if args.status:
            return _status(conn)
        if args.activate:
            return _activate(conn, args.activate)
        if args.drop:
            return _drop(conn, args.drop)
        if args.failed:
            return _failed(conn, url)
        return _reembed(conn, url, args, selection)


def _status(conn: Any) -> int:
    from knowledge.ingest.embedding_models import list_models

    print(f"{'model':<32} {'dims':>5} {'coverage':>20}  state")
    for m in list_models(conn):
        state = "active" if m.is_active else ("complete" if m.complete else "building")
        print(f"{m.name:<32} {m.dims:>5} {m.vectors:>9}/{m.passages:<10}  {state}")
    return 0


def _activate(conn: Any, name: str) -> int:
    from knowledge.ingest.embedding_models import activate_model

    info = activate_model(conn, name)
    print(f"search now uses {info.name} ({info.dims} dimensions, {info.vectors} passages)")
    return 0


def _drop(conn: Any, name: str) -> int:
    from knowledge.ingest.embedding_models import drop_model

    gone = drop_model(conn, name)
    print(f"dropped model {name}: {gone} vectors and its index removed")
    return 0


def _failed(conn: Any, url: str) -> int:
    from knowledge.cli.progress import progress
    from knowledge.ingest.worker import Worker

    requeued = queue.retry_failed(conn)
    if not requeued:
        print("no document or asset has failed to embed")
        return 0
    with progress(requeued, "retrying", unit="record") as advance:
        worker = Worker(url, None, on_record=lambda kind, id_, outcome: advance(f"{kind} {outcome}"))
        stats = worker.run(once=True)
    print(f"retried {requeued}: {stats.indexed} indexed, {stats.failed} failed again")
    return 1 if stats.failed else 0


def _spec(conn: Any, args: argparse.Namespace) -> Any:
    from embeddings.registry import ModelError, resolve_model

    if args.model:
        try:
            return resolve_model(args.model, name=args.name)
        except ModelError as e:
            raise InvalidInput(f"--model: {e}") from None
    if args.name:
        raise InvalidInput("--name names a model given with --model")
    from knowledge.ingest.embedding_models import active_spec

    spec = active_spec(conn)
    if spec is None:
        raise InvalidInput("no model is active: name one with --model")
    return spec


def _load(spec: Any) -> Any:
    from embeddings.registry import ModelError, probe_model

    try:
        return probe_model(spec)
    except ModelError as e:
        raise InvalidInput(f"--model: {e}") from None


def _reembed(conn: Any, url: str, args: argparse.Namespace, selection: Any) -> int:
    from knowledge.cli.progress import progress
    from knowledge.ingest.embedding_models import list_models
    from knowledge.ingest.reembed_jobs import start_job
    from knowledge.ingest.reembedder import ReembedRunner

    spec = _spec(conn, args)
    registered = list_models(conn, spec.name)
    active = bool(registered and registered[0].is_active)
    if args.dry_run:
        return _dry_run(conn, spec, selection, stale=selection.stale or not active)
    embedder = _load(spec)
    job, created = start_job(conn, spec, selection, activate=not args.no_activate)
    print(
        f"{'started' if created else 'joined'} re-embed job {job.id}: {job.total} passages, "
        f"{job.done} done, model {spec.name}"
        + (
            "" if active else f" (search keeps using the active model{' until it is complete' if job.activate else ''})"
        ),
        file=sys.stderr,
    )
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        print("\nstopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr)
        stop.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, interrupt)
    try:
        with progress(job.total, "re-embedding", unit="passage", initial=job.done) as advance:
            runner = ReembedRunner(
                url,
                job.id,
                embedder,
                batch=args.batch,
                on_batch=lambda embedded, skipped, _job: advance(spec.name, embedded + skipped),
            )
            stats = runner.run(stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    final = stats.job
    print(
        f"re-embedded {stats.embedded} passages in {stats.seconds:.1f} s ({stats.rate:.1f} passages/s; "
        f"the model alone {stats.embedded / stats.seconds_embedding if stats.seconds_embedding else 0:.1f}/s)"
    )
    if final is not None:
        print(
            f"job {final.id}: {final.status}, {final.done}/{final.total} passages "
            f"({final.embedded} embedded, {final.skipped} skipped, {final.failed} failed)"
        )
    if stop.is_set() and final is not None and final.status == "running":
        print(f"interrupted: run the same command again to resume job {final.id}", file=sys.stderr)
        return 130
    if stats.activated:
        print(f"search now uses {spec.name}")
    elif not active and final is not None and final.status == "completed":
        print(f"{spec.name} covers every passage; switch with: hq-knowledge reembed --activate {spec.name}")
    return 1 if final is not None and (final.failed or final.status == "failed") else 0


def _dry_run(conn: Any, spec: Any, selection: Any, *, stale: bool) -> int:
    from knowledge.ingest.reembed_jobs import count_selection

    passages = count_selection(conn, spec.name, selection, stale=stale)
    line = f"would re-embed {passages} passages with {spec.name}"
    if passages:
        sample = [
            r[0]
            for r in conn.execute("SELECT indexed_text FROM knowledge_chunks ORDER BY random() LIMIT 64").fetchall()
        ]
        embedder = _load(spec)
        start = time.perf_counter()
        embedder.embed(sample)
        rate = len(sample) / (time.perf_counter() - start)
        minutes, seconds = divmod(int(passages / rate), 60)
        line += f": about {minutes} min {seconds:02d} s at {rate:.1f} passages/s (timed on {len(sample)} passages)"
    print(line)
    return 0
