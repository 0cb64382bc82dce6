"""API keys and teams: key format and hashing, storage, and the ASGI auth middleware."""
