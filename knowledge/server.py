"""`hq-knowledge serve`: open the database, apply migrations, run the API until stopped."""

from __future__ import annotations

import logging

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
    with database(settings) as url:
        with connect(url, autocommit=True) as conn:
            result = migrate(conn)
        log.info("database %s: %d migration(s) applied, %d already there",
                 describe_url(url), len(result.applied), len(result.skipped))
        config = uvicorn.Config(create_app(url), host=host or settings.host,
                                port=port or settings.port, log_level="info")
        uvicorn.Server(config).run()
    return 0
