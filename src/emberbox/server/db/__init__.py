"""Persistence: SQLAlchemy 2 async models, Alembic migrations shipped in the package."""
