"""SQLAlchemy models of the index database; Alembic migrations under `migrations/` build it.

Vectors are stored here as well as in the FAISS file, so the FAISS index (exact now, approximate
later) can always be rebuilt without decoding an image again. A vector belongs to one model and
one file content: copies of a file share it, and `vectors.id` is the id used inside FAISS.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (BigInteger, CheckConstraint, Dialect, Float, ForeignKey, Integer, LargeBinary, MetaData, String,
                        Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from retrieval.errors import CorruptIndexError
from retrieval.sources.content_hash import is_content_hash

STATUS_OK = "ok"
STATUS_ERROR = "error"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}
"""Constraint names on both dialects: PostgreSQL's own default names (so the databases that migration 0001 made
there already carry them), SQLAlchemy's for indexes (which the migrations use); check constraints are named where
they are declared. A migration can then drop or alter a constraint by name on PostgreSQL and SQLite alike."""


class ContentHash(TypeDecorator[str]):
    """A SHA-256 column (`String(64)` in the database). What is read back is checked by `is_content_hash`: a hash
    becomes a file name (a thumbnail, a model file), so a value that is none (a database edited by hand, a
    damaged one) is a `CorruptIndexError`, never a path. Writes need no check: simsearch writes only `hexdigest`s
    and the rows `import` checked."""

    impl = String(64)
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and not is_content_hash(value):
            raise CorruptIndexError(f"the index database holds a content hash that is no SHA-256 ({value[:70]!r}): "
                                    "it was edited or damaged; build a new index (`simsearch index PATH --index NEW`)")
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelRecord(Base):
    """A model that embedded vectors of this index; its file is stored in `model_files` (and cached in the index
    directory)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(ContentHash, unique=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[str] = mapped_column(Text)
    embedding_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelFileRecord(Base):
    """The bytes of a model's file, by the model's content hash, with their SHA-256: the database holds every
    model it has used, so a machine with only its URL can load one; `models/` in the index directory is a cache
    of these rows. Bytes that do not hash to `sha256` are refused."""

    __tablename__ = "model_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(ContentHash, unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class VectorRecord(Base):
    """One embedding of one file content by one model (float32 bytes)."""

    __tablename__ = "vectors"
    __table_args__ = (UniqueConstraint("model_id", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(ContentHash)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImageRecord(Base):
    """A file of the collection, indexed or recorded as failed."""

    __tablename__ = "images"
    __table_args__ = (CheckConstraint("status IN ('ok', 'error')", name="ck_images_status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    file_id: Mapped[str | None] = mapped_column(String(48), index=True)
    """`device:inode` of the file at `path` when it was scanned: another path with the same file_id is an alias
    (a symbolic or hard link) of this file, not a second image."""
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(ContentHash, index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8))
    error: Mapped[str | None] = mapped_column(Text)
    vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="SET NULL"), index=True)
    indexed_at: Mapped[datetime] = mapped_column(default=utcnow)

    vector: Mapped[VectorRecord | None] = relationship()


class CalibrationRecord(Base):
    """A distance threshold calibrated for one model, with the metrics that justified it."""

    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    criterion: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float] = mapped_column(Float)
    metrics: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DistinctPair(Base):
    """A person's decision that two file contents are not duplicates: by content, so it survives moves,
    copies and re-indexing, and every later dedup honours it."""

    __tablename__ = "distinct_pairs"
    __table_args__ = (UniqueConstraint("first_hash", "second_hash"),
                      CheckConstraint("first_hash < second_hash", name="ck_distinct_pairs_ordered"))

    id: Mapped[int] = mapped_column(primary_key=True)
    first_hash: Mapped[str] = mapped_column(ContentHash)
    second_hash: Mapped[str] = mapped_column(ContentHash)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChosenKeeper(Base):
    """A content a person chose to keep where it has duplicates: it keeps in every later dedup, before the rules."""

    __tablename__ = "chosen_keepers"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(ContentHash, unique=True)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexState(Base):
    """The single row that says which model the index serves and which FAISS file matches it.

    `database_id` is made once with the database; `generation` is bumped in the same transaction as any change
    to the served vectors. A FAISS file carries both in its name, so a file written for another database (one
    deleted and made anew, say) or another generation is known to be stale.
    """

    __tablename__ = "index_state"
    __table_args__ = (CheckConstraint("id = 1", name="ck_index_state_single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    database_id: Mapped[str] = mapped_column(String(32))
    index_type: Mapped[str | None] = mapped_column(String(200))
    """A FAISS factory string the user chose (`--index-type`); None: chosen by size."""
    max_memory: Mapped[int | None] = mapped_column(BigInteger)
    """Bytes the vector index may hold in memory (`--max-memory`); None: no limit."""
    target_recall: Mapped[float | None] = mapped_column(Float)
    """The recall@10 an approximate index is tuned to (`simsearch tune`); None: the default."""

    model: Mapped[ModelRecord | None] = relationship()
