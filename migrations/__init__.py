"""Alembic migrations of the index database; applied automatically when an index is opened."""

REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
"""Every revision of the chain, oldest first: a database at another one was migrated by a newer simsearch."""
HEAD = REVISIONS[-1]
"""The newest revision. Opening an index compares the database with it, so the common case (an
up-to-date index) does not load the migration scripts; a test keeps it equal to the chain's head."""
