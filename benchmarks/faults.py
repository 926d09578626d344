"""Faults an operator meets, injected into running services: for each, how long until the service
answers and indexes again without anyone running a command, and what was lost (must be nothing).

    python benchmarks/faults.py [--json benchmarks/results/faults.json] [--only NAME ...]

Every fault runs on its own embedded PostgreSQL in a temporary directory, with the fake
embedder (the faults are about the database, not the model):

- postmaster-kill9       kill -9 the embedded postmaster under `serve` while documents arrive
- connections-killed     pg_terminate_backend() of every connection of `serve`
- postgres-restart       stop PostgreSQL under a standalone `worker` (external server), start it again
- worker-kill9-lease     kill -9 a worker holding a 64-record lease, start another worker
- folder-moves           80 concurrent opposite folder moves through the API
- disk-full              a tmpfs data directory filled up under `serve`, then space freed (root only)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, free_port, machine

from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid
from knowledge.db.migrations import migrate

FAKE = {"HQ_EMBEDDER": "fake"}
# A worker that leases one batch and then hangs, as one killed mid-batch would have left it.
HOLD_LEASE = (
    "import sys, time; from knowledge.ingest.worker import Worker; from embeddings.model import load_embedder; "
    "w = Worker(sys.argv[1], load_embedder('fake'), batch_records=64); "
    "print(len(w._lease()), flush=True); time.sleep(3600)"
)


@dataclass
class Outcome:
    fault: str
    recovered_s: float | None = None
    """From the fault to the first successful answer (search, or the worker indexing again)."""
    indexed_s: float | None = None
    """From the fault to every document written before, during and after it being indexed."""
    sent: int = 0
    """Writes answered 2xx."""
    refused: dict[str, int] = field(default_factory=dict)
    """Writes and searches answered with an error, by status."""
    max_refusal_ms: float | None = None
    """The slowest error answer: requests fail fast while the database is down."""
    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    notes: list[str] = field(default_factory=list)


# -- processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(data_dir: Path, log_path: Path, *, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`hq-knowledge serve` (API and worker) on its own embedded database; yields its base URL."""
    port = free_port()
    env = {**os.environ, **FAKE, "HQ_DATA_DIR": str(data_dir), **(extra_env or {})}
    env.pop("HQ_DATABASE_URL", None)
    with open(log_path, "w+", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "knowledge", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(base, proc, log)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_http(base: str, proc: subprocess.Popen[bytes], log: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the service exited with {proc.returncode}:\n{log.read()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            # A search, not /healthz: the first one waits for the query model to load, which
            # would otherwise be counted in the time to recover.
            if httpx.get(f"{base}/search", params={"q": "warm up"}, timeout=120).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("the service did not start")


def worker_process(url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **FAKE, "HQ_DATABASE_URL": url}
    log = open(log_path, "ab")  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        [sys.executable, "-m", "knowledge", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- traffic -------------------------------------------------------------------------------------


class Writer:
    """Creates documents through the API every `interval` seconds in a thread; remembers what
    was acknowledged (id -> sha256 of the text) and every refusal."""

    def __init__(self, base: str, label: str, interval: float = 0.05) -> None:
        self.base, self.label, self.interval = base, label, interval
        self.acked: dict[str, str] = {}
        self.refused: dict[str, int] = {}
        self.refusal_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                text = f"Fault drill {self.label} number {i}: {uuid.uuid4()} keeps the queue honest."
                start = time.perf_counter()
                try:
                    r = client.post("/documents", json={"title": f"{self.label} {i}", "content_text": text})
                    status = str(r.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                    r = None
                if r is not None and r.status_code == 201:
                    self.acked[r.json()["id"]] = hashlib.sha256(text.encode()).hexdigest()
                else:
                    self.refused[status] = self.refused.get(status, 0) + 1
                    self.refusal_ms.append((time.perf_counter() - start) * 1000)
                i += 1
                self._stop.wait(self.interval)


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> float | None:
    """Seconds until `check()` holds, None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        time.sleep(step)
    return None


def search_ok(base: str) -> bool:
    return httpx.get(f"{base}/search", params={"q": "fault drill queue"}, timeout=5).status_code == 200


def indexed(url: str, ids: list[str]) -> bool:
    with psycopg.connect(url, connect_timeout=3) as conn:
        row = conn.execute(
            "SELECT count(*) FROM documents WHERE id = ANY(%s::uuid[]) AND embedding_status = 'indexed'", [ids]
        ).fetchone()
    return row is not None and row[0] == len(ids)


def audit(url: str, acked: dict[str, str], label: str, outcome: Outcome) -> None:
    """Count acknowledged documents that are missing, stored twice, or stored with other text,
    and passages missing or repeated for them."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id::text, content_text, title FROM documents WHERE title LIKE %s", [f"{label} %"]
        ).fetchall()
        repeated = conn.execute(
            "SELECT count(*) FROM (SELECT document_id, chunk_index FROM knowledge_chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE d.title LIKE %s "
            "GROUP BY 1, 2 HAVING count(*) > 1) s",
            [f"{label} %"],
        ).fetchone()
        unembedded = conn.execute(
            "SELECT count(*) FROM knowledge_chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.title LIKE %s AND NOT EXISTS (SELECT 1 FROM chunk_embeddings e "
            "WHERE e.chunk_id = c.id)",
            [f"{label} %"],
        ).fetchone()
    stored = {r[0]: hashlib.sha256((r[1] or "").encode()).hexdigest() for r in rows}
    titles = [r[2] for r in rows]
    outcome.sent = len(acked)
    outcome.lost = sum(1 for i in acked if i not in stored)
    outcome.corrupted = sum(1 for i, h in acked.items() if i in stored and stored[i] != h)
    outcome.duplicated = len(titles) - len(set(titles)) + (repeated[0] if repeated else 0)
    if unembedded and unembedded[0]:
        outcome.notes.append(f"{unembedded[0]} passages without a vector")
        outcome.corrupted += unembedded[0]


# -- the faults ----------------------------------------------------------------------------------


def _under_serve(name: str, work: Path, inject: Callable[[Path, str], None]) -> Outcome:
    """Documents arrive through the API of `serve`; `inject` breaks something; measure."""
    outcome = Outcome(name)
    data = work / name
    with serving(data, work / f"{name}.log") as base:
        url = EmbeddedPostgres(data).url
        with Writer(base, name) as writer:
            time.sleep(2)
            start = time.monotonic()
            inject(data, url)
            searches: dict[str, int] = {}
            while time.monotonic() - start < 60:
                t = time.perf_counter()
                try:
                    r = httpx.get(f"{base}/search", params={"q": "fault drill queue"}, timeout=30)
                    if r.status_code == 200:
                        outcome.recovered_s = time.monotonic() - start
                        break
                    searches[str(r.status_code)] = searches.get(str(r.status_code), 0) + 1
                    writer.refusal_ms.append((time.perf_counter() - t) * 1000)
                except httpx.HTTPError as e:
                    searches[type(e).__name__] = searches.get(type(e).__name__, 0) + 1
                time.sleep(0.05)
            time.sleep(2)  # documents keep arriving after the recovery
        acked = dict(writer.acked)
        outcome.refused = {f"write {k}": v for k, v in writer.refused.items()} | {
            f"search {k}": v for k, v in searches.items()
        }
        outcome.max_refusal_ms = round(max(writer.refusal_ms), 1) if writer.refusal_ms else None
        took = wait_until(lambda: indexed(url, list(acked)), 120, 0.2)
        outcome.indexed_s = None if took is None else round(time.monotonic() - start, 2)
        audit(url, acked, name, outcome)
        # Keyword search after the fault (pg_textsearch forgets its statistics on a restart).
        keyword = httpx.get(
            f"{base}/search", params={"q": f"fault drill {name}", "mode": "keyword", "limit": 10}, timeout=30
        ).json()
        outcome.notes.append(f"keyword hits after: {len(keyword['hits'])}")
    if outcome.recovered_s is not None:
        outcome.recovered_s = round(outcome.recovered_s, 2)
    return outcome


def postmaster_kill9(work: Path) -> Outcome:
    def inject(data: Path, url: str) -> None:
        pid = postmaster_pid(data.resolve() / "pg")
        assert pid is not None, "no postmaster"
        os.kill(pid, signal.SIGKILL)

    return _under_serve("postmaster-kill9", work, inject)


def connections_killed(work: Path) -> Outcome:
    def inject(data: Path, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'hq-knowledge%%' AND pid <> pg_backend_pid()"
            )

    return _under_serve("connections-killed", work, inject)


def _insert(url: str, label: str, n: int) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO documents (title, content_format, content_text) "
            "SELECT %s || ' ' || i, 'markdown', 'Fault drill ' || %s || ' number ' || i || ' for the queue.' "
            "FROM generate_series(1, %s) i RETURNING id::text",
            [label, label, n],
        ).fetchall()
    return [r[0] for r in rows]


def postgres_restart(work: Path) -> Outcome:
    outcome = Outcome("postgres-restart")
    server = EmbeddedPostgres(work / "external")
    url = server.start()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    worker = worker_process(url, work / "postgres-restart-worker.log")
    try:
        before = _insert(url, "postgres-restart", 20)
        if wait_until(lambda: indexed(url, before), 60) is None:
            outcome.notes.append("the worker did not index the first documents")
        server.stop()  # fast shutdown: the worker's connections are closed under it
        start = time.monotonic()
        time.sleep(3)
        server.start()
        after = _insert(url, "postgres-restart", 20)  # same titles: numbers restart at 1
        took = wait_until(lambda: indexed(url, before + after), 120, 0.2)
        outcome.recovered_s = outcome.indexed_s = None if took is None else round(time.monotonic() - start, 2)
        outcome.notes.append(
            "worker still running" if worker.poll() is None else f"worker exited with {worker.returncode}"
        )
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM documents WHERE title LIKE 'postgres-restart %'").fetchone()
        outcome.sent = len(before) + len(after)
        outcome.lost = outcome.sent - (row[0] if row else 0)
    finally:
        stop(worker)
        server.stop()
    return outcome


def worker_kill9_lease(work: Path) -> Outcome:
    outcome = Outcome("worker-kill9-lease")
    server = EmbeddedPostgres(work / "external")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        ids = _insert(url, "worker-kill9-lease", 64)
        # A worker that leases its batch and is killed before it writes anything.
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LEASE, url], stdout=subprocess.PIPE, text=True, env={**os.environ, **FAKE}
        )
        assert holder.stdout is not None
        leased = int(holder.stdout.readline() or 0)
        holder.kill()
        holder.wait()
        start = time.monotonic()
        outcome.notes.append(f"{leased} records leased by the killed worker")
        worker = worker_process(url, work / "worker-kill9-lease.log")
        try:
            took = wait_until(lambda: indexed(url, ids), 400, 0.2)
            outcome.recovered_s = outcome.indexed_s = None if took is None else round(time.monotonic() - start, 2)
        finally:
            stop(worker)
        outcome.sent = len(ids)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM documents WHERE embedding_status = 'indexed'").fetchone()
        outcome.lost = len(ids) - (row[0] if row else 0)
    finally:
        server.stop()
    return outcome


def folder_moves(work: Path) -> Outcome:
    outcome = Outcome("folder-moves")
    data = work / "folder-moves"
    with serving(data, work / "folder-moves.log") as base, httpx.Client(base_url=base, timeout=60) as client:
        pairs = []
        for i in range(40):
            a = client.post("/document-folders", json={"name": f"A{i}"}).json()["id"]
            b = client.post("/document-folders", json={"name": f"B{i}"}).json()["id"]
            pairs.append((a, b))
        moves = [(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]

        def move(pair: tuple[str, str]) -> int:
            return client.patch(f"/document-folders/{pair[0]}", json={"parent_id": pair[1]}).status_code

        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(move, moves))
        outcome.recovered_s = round(time.monotonic() - start, 2)
        for s in statuses:
            outcome.refused[str(s)] = outcome.refused.get(str(s), 0) + 1
        outcome.sent = len(moves)
        with psycopg.connect(EmbeddedPostgres(data).url) as conn:
            cycles = conn.execute(
                "WITH RECURSIVE up(id, parent, depth) AS ("
                " SELECT id, parent_id, 1 FROM document_folders"
                " UNION ALL SELECT up.id, f.parent_id, depth + 1 FROM up JOIN document_folders f"
                " ON f.id = up.parent WHERE depth < 100)"
                " SELECT count(DISTINCT id) FROM up WHERE parent = id"
            ).fetchone()
        outcome.corrupted = cycles[0] if cycles else 0
        outcome.notes.append("5xx: " + str(sum(1 for s in statuses if s >= 500)))
    return outcome


def _fill(path: Path) -> None:
    """Write `path` until its disk has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def disk_full(work: Path) -> Outcome:
    outcome = Outcome("disk-full")
    mount = work / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        outcome.notes.append(f"skipped: cannot mount a tmpfs ({done.stderr.strip()})")
        return outcome
    filler = mount / "filler"
    try:
        with serving(mount, work / "disk-full.log") as base, httpx.Client(base_url=base, timeout=30) as client:
            url = EmbeddedPostgres(mount).url
            ids = [
                client.post(
                    "/documents", json={"title": "disk-full 0", "content_text": "Before the disk fills."}
                ).json()["id"]
            ]
            wait_until(lambda: indexed(url, ids), 60)
            _fill(filler)
            start = time.monotonic()
            big = " ".join(uuid.uuid4().hex for _ in range(8000))  # ~260 kB that does not compress
            for i in range(1, 6):
                t = time.perf_counter()
                r = client.post("/documents", json={"title": f"disk-full refused {i}", "content_text": big})
                outcome.refused[f"write {r.status_code}"] = outcome.refused.get(f"write {r.status_code}", 0) + 1
                outcome.max_refusal_ms = max(outcome.max_refusal_ms or 0, round((time.perf_counter() - t) * 1000, 1))
                if r.status_code == 507 and not any("disk full" in n for n in outcome.notes):
                    outcome.notes.append("507: " + r.json()["detail"][:60])
            ready = client.get("/readyz")
            outcome.notes.append(f"readyz {ready.status_code} while full")
            outcome.notes.append(f"search {client.get('/search', params={'q': 'disk'}).status_code} while full")
            filler.unlink()
            freed = time.monotonic()
            after = wait_until(lambda: client.get("/readyz").status_code == 200, 60)
            outcome.recovered_s = None if after is None else round(after, 2)
            outcome.notes.append(f"full for {freed - start:.1f} s" if after is not None else "never ready again")
            r = client.post("/documents", json={"title": "disk-full 1", "content_text": "After space was freed."})
            if r.status_code == 201:
                ids.append(r.json()["id"])
            took = wait_until(lambda: indexed(url, ids), 60)
            outcome.indexed_s = None if took is None else round(time.monotonic() - freed, 2)
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM documents WHERE title LIKE 'disk-full refused%'").fetchone()
            outcome.sent = len(ids)
            outcome.lost = len(ids) - sum(1 for _ in ids if indexed(url, [_]))
            outcome.corrupted = row[0] if row else 0  # a refused write must have left nothing
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return outcome


FAULTS: dict[str, Callable[[Path], Outcome]] = {
    "postmaster-kill9": postmaster_kill9,
    "connections-killed": connections_killed,
    "postgres-restart": postgres_restart,
    "worker-kill9-lease": worker_kill9_lease,
    "folder-moves": folder_moves,
    "disk-full": disk_full,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS / "faults.json")
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), help="run only these faults")
    args = parser.parse_args()
    outcomes: list[Outcome] = []
    for name, run in FAULTS.items():
        if args.only and name not in args.only:
            continue
        work = Path(tempfile.mkdtemp(prefix="hq-faults-"))
        try:
            print(f"{name} ...", file=sys.stderr, flush=True)
            outcomes.append(run(work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nFaults ({machine()})\n")
    print(
        f"{'fault':<20} {'recovered s':>11} {'indexed s':>9} {'sent':>5} {'lost':>4} {'dup':>4} "
        f"{'bad':>4} {'max err ms':>10}  refusals / notes"
    )
    for o in outcomes:
        print(
            f"{o.fault:<20} {_num(o.recovered_s):>11} {_num(o.indexed_s):>9} {o.sent:>5} {o.lost:>4} "
            f"{o.duplicated:>4} {o.corrupted:>4} {_num(o.max_refusal_ms):>10}  "
            + "; ".join([", ".join(f"{k}: {v}" for k, v in o.refused.items()), *o.notes]).strip("; ")
        )
    args.json.write_text(json.dumps({"machine": machine(), "faults": [o.__dict__ for o in outcomes]}, indent=2) + "\n")
    print(
        "\nrecovered s: from the fault to the first search answered (postgres-restart: to every document "
        "indexed, the server down 3 s of it; worker-kill9-lease: from the new worker's start; folder-moves: "
        "the whole burst; disk-full: from space freed to /readyz 200). indexed s: from the fault to every "
        "document written before, during and in the 2 s after it indexed. lost / dup / bad: acknowledged "
        "writes missing, stored twice, or stored with other text (folder-moves: folders in a cycle; "
        "disk-full: rows left by refused writes)."
    )
    print(f"\nwritten to {args.json}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


if __name__ == "__main__":
    main()
