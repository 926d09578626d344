"""What is stored: documents, assets, folders, tags, versions, API keys, and their checks."""
