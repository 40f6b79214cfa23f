"""Message signing and encryption (placeholder until the serializers issue lands)."""
