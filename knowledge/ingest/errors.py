"""The error of text extraction, in a module of its own so that `ingest.tiptap` and
`ingest.extract` (which re-exports it) can both raise it without importing each other."""

from __future__ import annotations

from knowledge.errors import InvalidInput

__all__ = ["ExtractError"]


class ExtractError(InvalidInput, ValueError):
    """Content that cannot be turned into text; the message says where and why. A 422 where it
    reaches the API, and a ValueError to the pure functions' callers."""
