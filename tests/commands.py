"""The `knowledge` command line in a child process that sees none of this process's HQ_ settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping

__all__ = ["environment", "free_port", "hq"]


def environment(**values: str) -> dict[str, str]:
    """This process's environment without its HQ_ variables, and `values`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HQ_")} | values


def hq(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m knowledge *args` with `env` as its only HQ_ settings, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "knowledge", *args],
        env=environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A local TCP port that nothing listens on now, for a server started in a child process."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])
