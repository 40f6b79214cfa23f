"""Periodic tasks (issue 10; placeholder until it lands)."""
