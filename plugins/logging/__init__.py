"""Structured (JSON) logs with task ids (issue 12; placeholder until it lands)."""
