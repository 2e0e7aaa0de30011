"""Telemetry around the engine and the transport: OpenTelemetry traces, Prometheus metrics and
structured logs. The engine reports through its ``Observer`` seam and imports nothing here."""
