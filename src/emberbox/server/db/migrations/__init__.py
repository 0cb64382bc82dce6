"""Alembic environment and revisions; run by :func:`emberbox.server.db.engine.migrate`."""
