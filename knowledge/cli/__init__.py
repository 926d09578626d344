"""The `hq-knowledge` command line and its long-running commands."""
