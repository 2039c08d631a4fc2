"""Alembic migrations of the index database; applied automatically when an index is opened."""
