"""WAL positions (PostgreSQL's pg_lsn, written `16/B374D848`) as comparable integers: what the
API hands back after a write (`HQ-Write-LSN`) and what a read needs a replica to have replayed.
No dependencies, so that the HTTP client can use it."""

from __future__ import annotations

import re

__all__ = ["format_lsn", "parse_lsn"]

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str | None) -> int | None:
    """The position `text` names (`16/B374D848`), or None for None or anything else."""
    match = _LSN.fullmatch(text.strip()) if text else None
    if match is None:
        return None
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(position: int) -> str:
    """`position` as PostgreSQL writes a pg_lsn."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
