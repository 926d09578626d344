"""Ingestion: everything that turns documents and assets into passages and vectors.

- `queue`: the embedding queue (leases, failures with back-off, retries, depth);
- `worker`: the worker that leases records, extracts, chunks, embeds and writes them;
- `extract`, `tiptap`, `markdown_blocks`, `chunking`: a record's text and its passages;
- `leases`, `outage`: who holds a lease, and how the worker rides out a database outage;
- `reembedder`: the thread that runs a re-embedding job (its records: knowledge.ingest.reembed_jobs).
"""
