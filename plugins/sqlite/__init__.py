"""sqlite:// transport (placeholder until the SQLite issue lands)."""
