"""Shared test helpers (pack loader, host import, tiny models, analytic model, server)."""
