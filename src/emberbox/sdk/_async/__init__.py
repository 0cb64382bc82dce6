"""The SDK's async core. The only copy anyone edits: ``scripts/unasync.py`` writes ``_sync``."""
