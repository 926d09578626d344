"""Who can reach the embedded server: the user it runs as and root, no other OS user.

The server trusts every local connection, so its socket must be out of other users' reach,
including when a long data directory puts it in /tmp, where anyone may have been first.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from knowledge.db.embedded import EmbeddedPostgres, postmaster_pid
from knowledge.errors import DatabaseUnavailable

from .pgtools import pg_bin

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second OS user needs root")

LONG = "x" * 90  # data/<LONG>/pg/.s.PGSQL.5432 is past the socket path limit


def _server_uid() -> int:
    """The uid the embedded server runs as: `pgserver` under root, else ourselves."""
    return pwd.getpwnam("pgserver").pw_uid if os.geteuid() == 0 else os.geteuid()


def _psql_as_nobody(socket_dir: Path) -> subprocess.CompletedProcess[str]:
    """The bundled psql, run as `nobody`, asking for the superuser over `socket_dir`."""
    url = f"postgresql://postgres@/postgres?host={socket_dir}"
    return subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            str(pg_bin("psql")),
            "-X",
            "-w",
            "-At",
            "-c",
            "SELECT 1",
            "-d",
            url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"HOME": "/"},
    )


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A directory of the test's own, outside pytest's per-user temporary directory: every
    pytest session that starts meanwhile makes that 0700 again, locking the server's user out."""
    root = Path(tempfile.mkdtemp(prefix="hq-embedded-test-"))
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def long_server(data_root: Path) -> Iterator[EmbeddedPostgres]:
    """A server (not started) whose socket must go to /tmp; its /tmp entry is removed after."""
    server = EmbeddedPostgres(data_root / LONG)
    assert server.socket_dir.parent == Path("/tmp")
    try:
        yield server
    finally:
        server.stop()
        if server.socket_dir.is_symlink() or not server.socket_dir.is_dir():
            server.socket_dir.unlink(missing_ok=True)
        else:
            shutil.rmtree(server.socket_dir)


def test_long_data_dir_socket_is_private(long_server: EmbeddedPostgres) -> None:
    with long_server as server, psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        if os.geteuid() == 0:
            denied = _psql_as_nobody(server.socket_dir)
            assert denied.returncode != 0
            assert "Permission denied" in denied.stderr, denied.stderr
        st = os.lstat(server.socket_dir)
        assert stat.S_ISDIR(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, _server_uid())


@as_root
def test_short_data_dir_socket_is_private(data_root: Path) -> None:
    with EmbeddedPostgres(data_root) as server:
        assert server.socket_dir == server.pgdata
        denied = _psql_as_nobody(server.socket_dir)
        assert denied.returncode != 0
        assert "Permission denied" in denied.stderr, denied.stderr
        socket = os.stat(server.socket_dir / ".s.PGSQL.5432")
        assert stat.S_IMODE(socket.st_mode) == 0o700  # even were the directory traversable
        # Whoever could open the lock could hold it, and every start would wait for them.
        for name in ("lock", "users.json"):
            assert stat.S_IMODE(os.stat(data_root / name).st_mode) == 0o600, name
        # Nor does the server keep root's group: it could read files that root's group may.
        pid = postmaster_pid(server.pgdata)
        assert pid is not None
        server_gid = pwd.getpwnam("pgserver").pw_gid
        assert set(psutil.Process(pid).gids()) == {server_gid}
        assert _groups(pid) <= {server_gid}  # supplementary groups: none of root's


def _groups(pid: int) -> set[int]:
    """The supplementary groups of process `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split()[1:]}
    raise AssertionError(f"no Groups line for {pid}")


@as_root
def test_socket_dir_left_open_is_repaired(long_server: EmbeddedPostgres) -> None:
    """An earlier version left the directory world-writable and owned by root."""
    long_server.socket_dir.mkdir()
    os.chmod(long_server.socket_dir, 0o777)
    with long_server as server:
        st = os.lstat(server.socket_dir)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, _server_uid())
        assert "Permission denied" in _psql_as_nobody(server.socket_dir).stderr


@as_root
def test_socket_dir_of_another_user_is_refused(long_server: EmbeddedPostgres) -> None:
    nobody = pwd.getpwnam("nobody")
    long_server.socket_dir.mkdir()
    os.chown(long_server.socket_dir, nobody.pw_uid, nobody.pw_gid)
    os.chmod(long_server.socket_dir, 0o777)
    with pytest.raises(DatabaseUnavailable, match="belongs to another user") as e:
        long_server.start()
    assert str(long_server.socket_dir) in e.value.message and "\n" not in e.value.message
    assert postmaster_pid(long_server.pgdata) is None
    st = os.lstat(long_server.socket_dir)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o777, nobody.pw_uid)  # not taken over


@as_root
def test_symlink_in_place_of_socket_dir_is_refused(long_server: EmbeddedPostgres, data_root: Path) -> None:
    target = data_root / "elsewhere"
    target.mkdir(mode=0o755)
    long_server.socket_dir.symlink_to(target)
    nobody = pwd.getpwnam("nobody")
    os.lchown(long_server.socket_dir, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(DatabaseUnavailable, match="is not a directory"):
        long_server.start()
    assert postmaster_pid(long_server.pgdata) is None
    st = os.stat(target)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)  # the link was not followed
    assert list(target.iterdir()) == []
