"""Settings, read from the environment in exactly one place: `Settings.from_env()`. Nothing
else in the package reads an HQ_ variable; what other modules need, they are given (the CLI
applies the process-wide part at start: knowledge.cli.apply_settings)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "default_data_dir", "describe_url"]


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def default_data_dir() -> Path:
    """Where the embedded database lives when HQ_DATA_DIR is not set.

    Root gets a system location (a home directory would have to be opened up to the
    unprivileged user that runs the embedded server); everyone else the user data dir.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/hq-knowledge")
    import platformdirs

    return platformdirs.user_data_path("hq-knowledge")


@dataclass(frozen=True)
class Settings:
    """Run-time settings.

    `database_url` None means: use the embedded server in `data_dir`.
    """

    database_url: str | None = None
    data_dir: Path = Path(".hq-data")
    host: str = "127.0.0.1"
    port: int = 8765
    # None: the worker embeds with the active model and follows a model switch; a name
    # ('fake', 'all-MiniLM-L6-v2') pins it to that model (HQ_EMBEDDER, for tests and demos).
    embedder: str | None = None
    # Who the API answers (knowledge.api.security.AccessPolicy): Host names besides the bound
    # loopback address (a proxy's), origins besides its own that may change state, and
    # whether a loopback service also wants a key on every request.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    require_keys: bool = False
    # The keyword leg's index (knowledge.db.keyword_index): auto, pg_textsearch or sql.
    keyword_index: str = "auto"
    # Streaming replicas of database_url that the API reads from (knowledge.db.replicas), and how
    # far behind the primary, in seconds, a replica may be and still be read.
    read_database_urls: tuple[str, ...] = ()
    read_max_lag: float = 5.0
    # Searches in flight at once, REST and MCP together, and how many more may wait for a
    # slot before a search is refused with 503 (knowledge.search.admission); None: from the cores.
    search_concurrency: int | None = None
    search_queue: int | None = None
    # The query embedder's cache and batch (embeddings.onnx), and where it keeps exported
    # models: the data directory's models/ when HQ_DATA_DIR is set, else the user cache.
    query_cache: int | None = None  # None: the embedder's default
    query_batch: int | None = None
    models_dir: Path | None = None
    # Prepared statements on the service's connections (HQ_PREPARED_STATEMENTS=0 for a pooler
    # in transaction mode: PgBouncer before 1.21, Supavisor on port 6543).
    prepared_statements: bool = True
    # A line a request on the console (uvicorn's access log). Off: under load the line cost
    # 7% of the service's CPU, and it would write every search's text into the log.
    access_log: bool = False
    # How long the server keeps an idle HTTP connection open for the client's next request. Longer
    # than an agent's usual pause between calls, so that its next request rarely finds the
    # connection closed (the client retries a read once when it does).
    keep_alive: int = 75  # seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        from embeddings.query_settings import query_batch_size, query_cache_size

        env = os.environ if env is None else env
        url = env.get("HQ_DATABASE_URL", "").strip() or None
        data_dir = env.get("HQ_DATA_DIR", "").strip()
        port = env.get("HQ_PORT", "").strip()
        return cls(
            database_url=url,
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
            host=env.get("HQ_HOST", "").strip() or "127.0.0.1",
            port=_port(port) if port else 8765,
            embedder=env.get("HQ_EMBEDDER", "").strip() or None,
            allowed_hosts=_words(env.get("HQ_ALLOWED_HOSTS", "")),
            allowed_origins=_words(env.get("HQ_ALLOWED_ORIGINS", "")),
            require_keys=_flag("HQ_REQUIRE_KEYS", env.get("HQ_REQUIRE_KEYS", "")),
            keyword_index=_keyword_index(env.get("HQ_KEYWORD_INDEX", "")),
            read_database_urls=_read_urls(env.get("HQ_READ_DATABASE_URL", "")),
            read_max_lag=_seconds("HQ_READ_MAX_LAG", env.get("HQ_READ_MAX_LAG", ""), 5.0),
            search_concurrency=_count("HQ_SEARCH_CONCURRENCY", env.get("HQ_SEARCH_CONCURRENCY", ""), minimum=1),
            search_queue=_count("HQ_SEARCH_QUEUE", env.get("HQ_SEARCH_QUEUE", ""), minimum=0),
            query_cache=_embedder_setting(query_cache_size, env.get("HQ_QUERY_CACHE", "")),
            query_batch=_embedder_setting(query_batch_size, env.get("HQ_QUERY_BATCH", "")),
            models_dir=Path(data_dir).expanduser() / "models" if data_dir else None,
            prepared_statements=_flag("HQ_PREPARED_STATEMENTS", env.get("HQ_PREPARED_STATEMENTS", ""), default=True),
            access_log=_flag("HQ_ACCESS_LOG", env.get("HQ_ACCESS_LOG", "")),
            keep_alive=_count("HQ_KEEP_ALIVE", env.get("HQ_KEEP_ALIVE", ""), minimum=1) or 75,
        )


def _keyword_index(value: str) -> str:
    from knowledge.errors import InvalidInput

    word = value.strip().lower() or "auto"
    if word not in ("auto", "pg_textsearch", "sql"):
        raise InvalidInput(f"HQ_KEYWORD_INDEX must be auto, pg_textsearch or sql, got {value!r}")
    return word


def _words(value: str) -> tuple[str, ...]:
    """A list setting: values separated by commas and/or white space."""
    return tuple(w for w in value.replace(",", " ").split() if w)


def _read_urls(value: str) -> tuple[str, ...]:
    """HQ_READ_DATABASE_URL: PostgreSQL URLs separated by white space or commas (a comma inside
    one URL, between the hosts of a multi-host URL, does not separate)."""
    import psycopg

    from knowledge.errors import InvalidInput

    pieces = re.split(r"\s+|,(?=\s*postgres(?:ql)?://)", value)
    urls = tuple(u.strip(",") for u in pieces if u.strip(","))
    for url in urls:
        problem = None if re.match(r"postgres(?:ql)?://", url) else "is not a PostgreSQL URL"
        if problem is None:
            try:
                psycopg.conninfo.conninfo_to_dict(url)
            except psycopg.ProgrammingError as e:
                problem = f"is not a valid PostgreSQL URL ({e})"
        if problem is not None:
            raise InvalidInput(
                f"HQ_READ_DATABASE_URL: {describe_url(url)[:200]!r} {problem}; give one or "
                "more postgresql://user:password@host:5432/dbname URLs separated by commas "
                "or spaces"
            )
    return urls


def _seconds(name: str, value: str, default: float) -> float:
    from knowledge.errors import InvalidInput

    if not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise InvalidInput(f"{name} must be a number of seconds greater than 0, got {value!r}")
    return seconds


def _embedder_setting(parse: Callable[[str], int], value: str) -> int:
    """A query embedder setting read by its own parser (embeddings.onnx), its ValueError
    turned into InvalidInput."""
    from knowledge.errors import InvalidInput

    try:
        return parse(value)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


def _count(name: str, value: str, *, minimum: int) -> int | None:
    """A whole number from `minimum` to 10000, or None when not set."""
    from knowledge.errors import InvalidInput

    word = value.strip()
    if not word:
        return None
    if not word.isdigit() or not minimum <= int(word) <= 10_000:
        raise InvalidInput(f"{name} must be a whole number from {minimum} to 10000, got {value!r}")
    return int(word)


def _flag(name: str, value: str, *, default: bool = False) -> bool:
    from knowledge.errors import InvalidInput

    word = value.strip().lower()
    if not word:
        return default
    if word in ("0", "false", "no", "off"):
        return False
    if word in ("1", "true", "yes", "on"):
        return True
    raise InvalidInput(f"{name} must be 1/true/yes/on or 0/false/no/off, got {value!r}")


def _port(value: str) -> int:
    from knowledge.errors import InvalidInput

    if not value.isdigit() or not 0 < int(value) < 65536:
        raise InvalidInput(f"HQ_PORT must be a port number from 1 to 65535, got {value!r}")
    return int(value)
