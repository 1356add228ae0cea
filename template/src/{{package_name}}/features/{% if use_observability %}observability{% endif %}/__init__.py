"""Metrics at /metrics and traces to an OpenTelemetry collector (docs/observability.md)."""
