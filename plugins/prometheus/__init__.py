"""Prometheus metrics from every worker (issue 12; placeholder until it lands)."""
