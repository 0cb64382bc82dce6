"""The E2B-compatible REST API (FastAPI)."""
