"""`hq-knowledge serve`: open the database, apply migrations, run the API until stopped."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from .config import Settings
from .db import connect, database, describe_url
from .migrations import migrate

__all__ = ["serve"]

log = logging.getLogger("hq_knowledge")


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    """Run until SIGINT/SIGTERM; the embedded server (if used) is released on the way out."""
    import uvicorn

    from .api import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command's output at INFO
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again with the
    # handler found at start: make that handler an exit that unwinds through `database()`,
    # so the embedded server is released instead of orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with database(settings) as url:
        with connect(url, autocommit=True) as conn:
            result = migrate(conn)
        log.info("database %s: %d migration(s) applied, %d already there",
                 describe_url(url), len(result.applied), len(result.skipped))
        config = uvicorn.Config(create_app(url), host=host or settings.host,
                                port=port or settings.port, log_level="info")
        uvicorn.Server(config).run()
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
