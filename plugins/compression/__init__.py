"""Compressors (placeholder until the serializers issue lands)."""
