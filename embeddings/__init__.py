"""Model loading, text extraction, chunking and the ingestion worker of HQ Knowledge."""
