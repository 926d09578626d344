"""How this process's query embedders are made: the query cache's size, the batch, where
exported models live. The service sets it at start from its Settings
(knowledge.cli.apply_settings); the parsers say what the HQ_QUERY_CACHE and HQ_QUERY_BATCH
settings accept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE_SIZE",
    "QuerySettings",
    "configure_query_embedders",
    "configured_query_embedders",
    "default_cache_dir",
    "query_batch_size",
    "query_cache_size",
]

CACHE_SIZE = 2048  # query vectors cached by default


def query_cache_size(value: str) -> int:
    """Entries of the query-vector cache for the setting HQ_QUERY_CACHE (0 turns it off;
    blank: CACHE_SIZE). Raises ValueError naming what is accepted."""
    value = value.strip()
    if not value:
        return CACHE_SIZE
    if not value.isdigit() or int(value) > 1_000_000:
        raise ValueError(
            f"HQ_QUERY_CACHE must be a number of cached queries from 0 (no cache) to 1000000, got {value!r}"
        )
    return int(value)


def query_batch_size(value: str) -> int:
    """Queries embedded together at most for the setting HQ_QUERY_BATCH (blank: 0, no
    batching); raises ValueError naming what is accepted. Off by default: on the 2-core CPUs
    measured, a batch of short queries costs what its queries cost one by one (6.1 against
    6.3 ms a query with two threads) and more once padded to its longest, so a shared run
    only makes each query wait for the others (benchmarks/load.py)."""
    value = value.strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) > 256:
        raise ValueError(f"HQ_QUERY_BATCH must be a number of queries from 0 (no batching) to 256, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class QuerySettings:
    """How this process's query embedders are made (the service's Settings say)."""

    cache_size: int = CACHE_SIZE
    batch: int = 0
    cache_dir: Path | None = None  # exported models; None: the user cache directory


_configured = QuerySettings()


def configured_query_embedders() -> QuerySettings:
    """What `configure_query_embedders` was last given (the defaults before)."""
    return _configured


def configure_query_embedders(settings: QuerySettings) -> None:
    """Set how the query embedders made from now on cache, batch and store their models
    (the service does, at start, from its Settings)."""
    global _configured
    _configured = settings


def default_cache_dir() -> Path:
    """Where exported models live unless a caller names a directory: the directory the
    service configured (`configure_query_embedders`: its data directory's models/ when
    HQ_DATA_DIR is set), else the user cache directory of hq-knowledge."""
    if _configured.cache_dir is not None:
        return _configured.cache_dir
    import platformdirs

    return platformdirs.user_cache_path("hq-knowledge")
