"""Helpers for the read-replica tests: a streaming standby of the session's embedded server, made
with the wheel's own pg_basebackup and pg_ctl (as the server's user, as knowledge.db.embedded runs
them), and `hq-knowledge` processes started and stopped as a group."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
import psycopg
import pytest

from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid

from .commands import free_port

ROOT = Path(__file__).resolve().parent.parent
SOCKET_PREFIX = "hq-standby-"
"""A standby's socket directory, in the temporary directory: short, as Unix socket paths must be."""


def _pgserver() -> Any:
    import pgserver

    return pgserver


class Standby:
    """A hot standby of `primary`, streaming from it, in `root`/pg, on a socket directory of its
    own in /tmp (short enough for sun_path) and a port of its own (it listens on no TCP port)."""

    def __init__(self, primary: EmbeddedPostgres, root: Path) -> None:
        self.primary = primary
        self.pgdata = root / "pg"
        self.port = free_port()
        self.socket_dir = Path(tempfile.mkdtemp(prefix=SOCKET_PREFIX))
        (root / "owner").write_text(f"{os.getpid()}\n{self.socket_dir}")  # for `reap_standbys`
        self.run_as: dict[str, Any] = primary._run_as()

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create(self) -> None:
        """pg_basebackup -R of the primary: a copy that starts as a standby streaming from it."""
        from pgserver.utils import ensure_prefix_permissions

        self.pgdata.mkdir(mode=0o700, parents=True)
        if self.run_as:
            ensure_prefix_permissions(self.pgdata)
            for path in (self.pgdata, self.socket_dir):
                shutil.chown(path, self.run_as["user"], self.run_as["group"])
        _pgserver().pg_basebackup(
            [
                "-D",
                str(self.pgdata),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-h",
                str(self.primary.socket_dir),
                "-p",
                "5432",
                "-U",
                "postgres",
            ],
            **self.run_as,
        )

    def start(self) -> None:
        options = [
            "-c listen_addresses=''",
            f"-c port={self.port}",
            f"-c unix_socket_directories='{self.socket_dir}'",
            "-c unix_socket_permissions=0700",
            "-c shared_buffers=128MB",
            "-c hot_standby=on",
            "-c shared_preload_libraries=pg_textsearch",
        ]
        _pgserver().pg_ctl(
            ["-w", "-t", "60", "-l", str(self.pgdata / "log"), "-o", " ".join(options), "start"],
            pgdata=self.pgdata,
            **self.run_as,
        )

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m `mode` (`immediate`: as if the machine died); nothing when it is not running."""
        if postmaster_pid(self.pgdata) is not None:
            _pgserver().pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, **self.run_as)

    @property
    def running(self) -> bool:
        return postmaster_pid(self.pgdata) is not None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        _stop_postmaster(self.pgdata)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def replay(self, dbname: str, sql: str) -> None:
        """Run `sql` on the standby (pg_wal_replay_pause() and pg_wal_replay_resume())."""
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def wait_until_replayed(self, primary_url: str, dbname: str, timeout: float = 30) -> None:
        """Return once the standby has replayed everything the primary had written now, and
        answers on `dbname`."""
        with psycopg.connect(primary_url, autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=2) as conn:
                    row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()
                    if row is not None and row[0]:
                        return
            except psycopg.OperationalError:  # the database's creation not replayed yet
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the standby did not replay up to {target} within {timeout} s: " + self.log_tail()
                )
            time.sleep(0.05)

    def log_tail(self) -> str:
        log = self.pgdata / "log"
        return " / ".join(log.read_text(errors="replace").splitlines()[-5:]) if log.exists() else "(no log)"


def _stop_postmaster(pgdata: Path) -> None:
    """Immediate shutdown (SIGQUIT) of the postmaster on `pgdata`, and a kill of anything of it left."""
    pid = postmaster_pid(pgdata)
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGQUIT)
            proc.wait(10)
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] in ("postgres", "postmaster") and Path(proc.cwd()) == pgdata:
                proc.kill()


def reap_standbys(root: Path) -> None:
    """Stop the standbys left running by killed test sessions under `root` (pytest's numbered
    session directories only, as tests/conftest.py `_reap_orphans` does for servers); a
    standby whose session still runs is left alone."""
    for pid_file in root.glob("pytest-*/standby*/pg/postmaster.pid"):
        try:
            pid, _, socket_dir = (pid_file.parent.parent / "owner").read_text().partition("\n")
            owner = int(pid)
        except (OSError, ValueError):
            owner, socket_dir = 0, ""
        if owner != os.getpid() and (owner <= 0 or not psutil.pid_exists(owner)):
            _stop_postmaster(pid_file.parent)
            if Path(socket_dir).parent == Path(tempfile.gettempdir()) and Path(socket_dir).name.startswith(
                SOCKET_PREFIX
            ):
                shutil.rmtree(socket_dir, ignore_errors=True)


@contextlib.contextmanager
def running_standby(primary: EmbeddedPostgres | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standby]:
    """A running standby of the session's embedded server, stopped on exit."""
    if primary is None:
        pytest.skip("a standby is made of the embedded test server; HQ_TEST_DATABASE_URL names another")
    reap_standbys(tmp_path_factory.getbasetemp().parent)
    standby = Standby(primary, tmp_path_factory.mktemp("standby"))
    try:
        standby.create()
        standby.start()
        yield standby
    finally:
        standby.close()


class Processes:
    """`python -m knowledge ...` processes with their output in log files, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        proc = subprocess.Popen(
            [sys.executable, "-m", "knowledge", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def serve(self, name: str, env: Mapping[str, str], timeout: float = 120) -> str:
        """`serve --no-worker` on a free port; its base URL once /healthz answers."""
        port = free_port()
        proc = self.start(name, ["serve", "--no-worker", "--port", str(port)], env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start: {self.log(name)[-3000:]}")
            time.sleep(0.1)

    def stop_all(self, timeout: float = 60) -> dict[str, int | None]:
        """SIGTERM to each, then SIGKILL to any still running after `timeout`; their exit codes."""
        for _name, proc, _log in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc, log in self.started:
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
            log.close()
        return codes
