"""Emberbox's Python SDK: one async core (``_async``) and a generated sync twin (``_sync``)."""
