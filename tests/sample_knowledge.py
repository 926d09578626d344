"""A small knowledge base shared by the client and MCP tests: the search tests' documents, a
long sectioned document in /Operations, an agent `closer` with two boot documents; all indexed
with the fake embedder."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from knowledge.store.documents import create_document
from knowledge.store.folders import create_folder

from .factories import add_document, index_with_fake
from .test_search import DOCS

LONG = "\n\n".join(f"Paragraph {i}: " + "the quarterly review covers revenue and churn. " * 6 for i in range(12))


class KB:
    """The knowledge base written into the database at `url` through `conn`: `ids` by title,
    `ops` the id of the /Operations folder."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], url: str) -> None:
        self.url = url
        self.ids: dict[str, uuid.UUID] = {title: add_document(conn, title, body, tags) for title, body, tags in DOCS}
        conn.execute("INSERT INTO agents (slug, name) VALUES ('closer', 'Closer')")
        self.ops = create_folder(conn, "document", name="Operations").id
        self.ids["Quarterly review"] = create_document(
            conn,
            title="Quarterly review",
            folder_id=self.ops,
            tags=["finance"],
            content_text=f"# Summary\n\nRevenue grew.\n\n## Churn\n\n{LONG}\n\n## Hiring\n\nTwo engineers joined.",
        ).id
        self.ids["Sales playbook"] = create_document(
            conn, title="Sales playbook", tags=["boot:closer"], content_text="Always ask for the budget first."
        ).id
        self.ids["House rules"] = create_document(
            conn, title="House rules", tags=["boot:all"], pinned=True, content_text="Be kind. Write things down."
        ).id
        index_with_fake(conn, url)
