"""Sinks: the routed topics persisted to PostgreSQL, idempotently, with live counters."""
