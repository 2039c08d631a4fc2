"""Alembic migrations of the index database; applied automatically when an index is opened."""

HEAD = "0002"
"""The newest revision. Opening an index compares the database with it, so the common case (an
up-to-date index) does not load the migration scripts; a test keeps it equal to the chain's head."""
