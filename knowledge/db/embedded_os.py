"""The embedded server's operating-system side: a private socket directory that nobody else
can have prepared, and a postmaster's shutdown and liveness by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from pathlib import Path

import psutil

from knowledge.errors import DatabaseUnavailable

__all__ = ["alive", "private_dir", "shut_down"]


def private_dir(path: Path, uid: int, gid: int) -> None:
    """Make `path` a directory only `uid` (and root) can enter: mode 0700, owner uid:gid.

    Creates it, or repairs the owner and mode of one that we or `uid` own. Raises
    DatabaseUnavailable, changing nothing, when `path` is a symlink, not a directory, or
    another user's: in /tmp anyone may have created it first, to reach or impersonate the
    server. Never follows a symlink.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    remedy = "remove it, or give HQ_DATA_DIR a shorter path"
    try:
        seen = os.lstat(path)
        if not stat.S_ISDIR(seen.st_mode):
            raise DatabaseUnavailable(f"the socket directory {path} is not a directory (a symlink or a file): {remedy}")
        if seen.st_uid not in (os.geteuid(), uid):
            raise DatabaseUnavailable(
                f"the socket directory {path} belongs to another user (uid {seen.st_uid}): {remedy}"
            )
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise DatabaseUnavailable(f"cannot use the socket directory {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
            raise DatabaseUnavailable(f"the socket directory {path} was replaced: {remedy}")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
    except OSError as e:
        raise DatabaseUnavailable(f"cannot use the socket directory {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def shut_down(pid: int, timeout: float = 60) -> None:
    """Stop a postmaster: SIGINT is PostgreSQL's fast shutdown (roll back open transactions,
    checkpoint, exit). Signalling needs no access to the data directory, unlike pg_ctl."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.send_signal(signal.SIGQUIT)  # immediate shutdown; recovery runs at next start
        proc.wait(10)
    except psutil.NoSuchProcess:
        pass


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
