"""Who holds a lease, and whether that process still exists.

A lease owner is `node:pid:nonce`. The node is the host name, followed by the pid namespace
when the process runs in a container of its own: two containers may share a host name but
never see each other's processes, so neither may judge the other's pids.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable

import psutil

__all__ = ["dead_owners", "new_owner", "node_name"]

_INIT_PID_NAMESPACE = 0xEFFFFFFC  # the kernel's inode number of the host's pid namespace


def node_name() -> str:
    """This host's name, and the pid namespace when it is not the host's."""
    host = socket.gethostname()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return host
    return host if namespace == _INIT_PID_NAMESPACE else f"{host}~pidns{namespace}"


def new_owner() -> str:
    """A lease owner naming this process, unique to one worker."""
    return f"{node_name()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_owners(owners: Iterable[str], node: str) -> list[str]:
    """Those of `owners` that name a process of `node` (this one) that no longer runs.

    An owner of another node, of this process, or in an unknown format is never dead: it
    may only be judged by its lease expiring.
    """
    dead = []
    for owner in owners:
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != node or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and not _running(pid):
            dead.append(owner)
    return dead


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists but is not ours to inspect: alive
        return True
