"""HQ Knowledge: documents, assets, hybrid search and boot bundles on PostgreSQL + pgvector."""

__version__ = "0.1.0"
