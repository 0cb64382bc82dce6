# Generated from ../_async/__init__.py by scripts/unasync.py; edit that file instead.
"""The SDK's sync face. The only copy anyone edits: ``scripts/unasync.py`` writes ``_sync``."""
