"""OpenTelemetry traces across client and worker (issue 12; placeholder until it lands)."""
