"""The embedded PostgreSQL server used when no HQ_DATABASE_URL is given.

The server binaries (PostgreSQL with pgvector, and pg_textsearch where the wheel has it)
come from the `pgserver` wheel. This module owns the server's life cycle: one postmaster
per data directory, shared by every process of this package that opens it, stopped by
the last one to close it. A process that was killed never closes; its entry in the
register is pruned the next time anyone looks, so an orphaned postmaster is reused by
the next process and stopped when that one is done. A postmaster that dies while in use
is started again by `restart()` (knowledge.db.connect's watchdog calls it) on the same data
directory, where PostgreSQL's crash recovery runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import stat
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from knowledge.db.embedded_os import alive, private_dir, shut_down
from knowledge.errors import DatabaseUnavailable

__all__ = ["EmbeddedPostgres", "postmaster_pid"]

log = logging.getLogger("hq_knowledge.db")

DATABASE = "hq"
SUPERUSER = "postgres"
_SYSTEM_USER = "pgserver"  # the unprivileged account the server runs as when we are root
_SERVER_OPTIONS = (
    "-c listen_addresses=''",
    # Every local connection is trusted as any role, so only the server's own user (and
    # root) may connect, whatever the permissions of the directory holding the socket.
    "-c unix_socket_permissions=0700",
    # HNSW index builds want a lot of maintenance memory; 1 GB of 24 is affordable.
    "-c maintenance_work_mem=1GB",
)


def _shared_buffers() -> str:
    """1/16 of the memory, from 256 MB to 1 GB: 100k passages of a 384-dimension model take
    ~800 MB with their HNSW index, and a search that finds its pages in shared buffers
    instead of the OS cache is ~1 ms faster."""
    mb = psutil.virtual_memory().total // (16 * 1024 * 1024)
    return f"-c shared_buffers={max(256, min(1024, mb))}MB"


_PRELOAD = ("pg_textsearch",)  # extensions that only load from shared_preload_libraries
_MAX_SOCKET_PATH = 100  # sun_path holds 107 bytes on Linux; keep a margin


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR at import
        import pgserver
    return pgserver


def _bin_path() -> Path:
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the postmaster running on `pgdata`, or None when none runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if pid <= 0:  # a standalone backend's lock (initdb bootstrapping the cluster), not a postmaster
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        # The pid may have been reused by an unrelated process after a crash.
        if "postgres" not in proc.name() and "postmaster" not in proc.name():
            return None
    except psutil.Error:
        return None
    return pid


class EmbeddedPostgres:
    """A PostgreSQL server kept in `data_dir`, surviving restarts of the service.

    Use as a context manager, or call `start()` and, when done, `stop()`: a process that
    starts must stop, or the server keeps running until some other process of this
    package releases it.
    """

    def __init__(self, data_dir: Path, *, preload: Sequence[str] = _PRELOAD) -> None:
        """`preload`: the bundled extensions to load at server start (those the wheel has);
        pass () for a server without pg_textsearch."""
        self.data_dir = data_dir.expanduser().resolve()
        self.preload = tuple(preload)
        self.pgdata = self.data_dir / "pg"
        self._register = self.data_dir / "users.json"
        self._started = False
        self._user: str | None = None

    # -- public -------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """The data directory, or when its socket path would be too long, a directory in /tmp
        named after it that `start()` makes private to the server's user."""
        if len(str(self.pgdata / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path("/tmp") / f"hq-knowledge-{digest}"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={self.socket_dir}"

    def start(self) -> str:
        """Start the server, or join the one already running on this data directory.

        Returns the connection URL. Raises DatabaseUnavailable with the server log's
        last lines when the server cannot start, and without starting it when the socket
        directory in /tmp is a symlink or another user's (see `socket_dir`), or when the
        data directory cannot be created or written (read-only, a file in the way).
        """
        with self._data_dir_access():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._start_or_join()
        self._ensure_database()
        return self.url

    def stop(self) -> None:
        """Release this process's use of the server; the last live user stops it."""
        if not self._started:
            return
        with self._locked():
            users = self._live_users() - {os.getpid()}
            self._save_users(users)
            self._started = False
            pid = postmaster_pid(self.pgdata)
            if not users and pid is not None:
                shut_down(pid)

    def restart(self) -> bool:
        """Start the server again after its postmaster died, for a process that `start()`ed it;
        or join the one another process started first. True when this call started it.

        First waits for the dead postmaster's processes to exit (killing those that do not
        within a few seconds: they keep PostgreSQL from starting while they hold its shared
        memory) and clears the lock files the dead postmaster left. Raises DatabaseUnavailable
        when the server does not start; the caller may try again.
        """
        return self._start_or_join()

    def _start_or_join(self) -> bool:
        """Start the postmaster unless one runs, and register this process as a user of it.
        True when this call started it."""
        with self._locked():
            if self.socket_dir != self.pgdata:
                uid, gid = self._server_ids()
                private_dir(self.socket_dir, uid, gid)
            users = self._live_users()
            started = postmaster_pid(self.pgdata) is None
            if started:
                self._init_cluster()  # a no-op but for ownership where the cluster exists
                self._stop_orphans()  # of a postmaster that died (killed, or the machine's OOM killer)
                self._clear_stale_locks()
                self._start_postmaster()
            self._save_users(users | {os.getpid()})
            self._started = True
        return started

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the server ---------------------------------------------------------------------

    def _system_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        if self._user is None:
            from pgserver.utils import ensure_user_exists

            ensure_user_exists(_SYSTEM_USER)
            self._user = _SYSTEM_USER
        return self._user

    def _server_ids(self) -> tuple[int, int]:
        """The uid and gid the server runs as."""
        user = self._system_user()
        if user is None:
            return os.geteuid(), os.getegid()
        entry = pwd.getpwnam(user)
        return entry.pw_uid, entry.pw_gid

    def _run_as(self) -> dict[str, Any]:
        """subprocess arguments that run a server program as the server's user: under root,
        the system user with its own group only (not root's, which `user=` alone keeps)."""
        user = self._system_user()
        return {} if user is None else {"user": user, "group": user, "extra_groups": []}

    def _init_cluster(self) -> None:
        pgserver = _pgserver()
        user = self._system_user()
        with self._data_dir_access():
            self.pgdata.mkdir(exist_ok=True)
            if user is not None:
                import shutil

                from pgserver.utils import ensure_prefix_permissions

                ensure_prefix_permissions(self.pgdata)
                ensure_prefix_permissions(_bin_path())
                shutil.chown(self.pgdata, user, user)
                os.chmod(self.pgdata, 0o700)
        if (self.pgdata / "PG_VERSION").exists():
            return
        try:
            pgserver.initdb(
                ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "-U", SUPERUSER],
                pgdata=self.pgdata,
                **self._run_as(),
            )
        except Exception as e:  # CalledProcessError carries nothing readable; say where to look
            raise DatabaseUnavailable(f"could not create the embedded database in {self.pgdata}: {e}") from e

    def _start_postmaster(self) -> None:
        socket_dir = self.socket_dir
        options = [*_SERVER_OPTIONS, _shared_buffers(), f"-c unix_socket_directories='{socket_dir}'"]
        preload = [name for name in self.preload if self._has_library(name)]
        if preload:
            options.append(f"-c shared_preload_libraries={','.join(preload)}")
        log = self.pgdata / "log"
        try:
            self._pg_ctl(["-w", "-t", "60", "-l", str(log), "-o", " ".join(options), "start"])
        except Exception as e:
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {self.pgdata} did not start: " + (" / ".join(tail) or str(e))
            ) from e
        deadline = time.monotonic() + 30
        while postmaster_pid(self.pgdata) is None:
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(f"the embedded PostgreSQL in {self.pgdata} did not start")
            time.sleep(0.05)

    def _orphans(self) -> list[psutil.Process]:
        """The processes still running in this data directory: after the postmaster died, its
        backends and auxiliary processes (each chdir'd into the data directory) exit as soon
        as they notice, a busy or stopped one maybe never."""
        found = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] in ("postgres", "postmaster") and Path(proc.cwd()) == self.pgdata:
                    found.append(proc)
            except psutil.Error:  # gone, a zombie, or not ours to inspect
                continue
        return found

    def _stop_orphans(self, grace: float = 3) -> None:
        """Wait up to `grace` seconds for a dead postmaster's processes to exit, then kill them."""
        deadline = time.monotonic() + grace
        while (orphans := self._orphans()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not orphans:
            return
        log.warning(
            "killing %d process(es) left running in %s by the dead postmaster: %s",
            len(orphans),
            self.pgdata,
            ", ".join(str(p.pid) for p in orphans),
        )
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + 10
        while [p for p in orphans if alive(p.pid)]:
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(
                    f"processes of the dead PostgreSQL in {self.pgdata} do not exit: "
                    + ", ".join(str(p.pid) for p in orphans if alive(p.pid))
                )
            time.sleep(0.05)

    def _clear_stale_locks(self) -> None:
        """Remove the lock files of a dead postmaster whose pid still exists: a zombie not yet
        reaped, or a reused pid. PostgreSQL refuses to start while the pid in its lock file
        exists, and removes the file itself only once the pid is gone. Safe only when no
        process runs in the data directory any more (`_stop_orphans`)."""
        for lock in (self.pgdata / "postmaster.pid", self.socket_dir / ".s.PGSQL.5432.lock"):
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if pid > 0 and psutil.pid_exists(pid) and postmaster_pid(self.pgdata) is None:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()

    def _has_library(self, name: str) -> bool:
        lib_dir = _bin_path().parent / "lib"
        return any(lib_dir.rglob(f"{name}.so"))

    def _pg_ctl(self, args: list[str]) -> None:
        _pgserver().pg_ctl(args, pgdata=self.pgdata, **self._run_as())

    def _ensure_database(self) -> None:
        import psycopg

        admin = f"postgresql://{SUPERUSER}@/postgres?host={self.socket_dir}"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            if exists.fetchone() is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')

    # -- the register of processes using the server -----------------------------------------

    @contextlib.contextmanager
    def _data_dir_access(self) -> Iterator[None]:
        """OSError from creating or writing the data directory's files as DatabaseUnavailable,
        in one line that names the directory and the fix."""
        try:
            yield
        except OSError as e:
            path = Path(e.filename) if isinstance(e.filename, str) else self.data_dir
            what = f"{e.strerror or type(e).__name__}" + (f" ({path})" if path != self.data_dir else "")
            if isinstance(e, FileExistsError | NotADirectoryError):
                blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
                what = f"{blocker} is a file, not a directory"
            raise DatabaseUnavailable(
                f"cannot use the data directory {self.data_dir}: {what}; set HQ_DATA_DIR to a "
                "directory this user can create and write, or fix that one's permissions"
            ) from e

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Private: anyone who can open the file can take the lock and hold every start.
        with self._data_dir_access():
            fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
                with contextlib.suppress(PermissionError):  # someone else's: leave it as it is
                    os.fchmod(fd, 0o600)  # left readable by earlier versions
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _live_users(self) -> set[int]:
        try:
            pids = set(json.loads(self._register.read_text()))
        except (FileNotFoundError, ValueError):
            return set()
        return {pid for pid in pids if psutil.pid_exists(pid) and alive(pid)}

    def _save_users(self, users: set[int]) -> None:
        tmp = self._register.with_suffix(".tmp")
        with self._data_dir_access():
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with open(fd, "w") as f:
                f.write(json.dumps(sorted(users)))
            tmp.replace(self._register)
