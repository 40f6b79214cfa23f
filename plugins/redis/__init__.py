"""redis:// transport (placeholder until the Redis issue lands)."""
