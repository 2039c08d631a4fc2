"""Typed exceptions of the library; `cli/` turns them into one-line messages."""

from __future__ import annotations


class SimsearchError(Exception):
    """Base of every error the library raises on purpose."""


class ModelError(SimsearchError):
    """A model file or backbone cannot be loaded or does not fit."""


class DecodeError(SimsearchError):
    """An image file cannot be decoded."""


class IndexNotFoundError(SimsearchError):
    """No index directory was found where one was needed."""


class IndexUnavailableError(SimsearchError):
    """The index directory exists but cannot be opened (permissions, corruption, lock)."""


class CorruptIndexError(IndexUnavailableError):
    """The index database holds a value simsearch never writes (a content hash that is no SHA-256, say): it was
    edited or damaged, and the value is refused, never used."""


class DatabaseURLError(SimsearchError):
    """A `--db` URL (or `$SIMSEARCH_DB`) that does not parse or names a database simsearch does not speak."""


class SchemaTooNewError(SimsearchError):
    """The index database was migrated by a newer simsearch than this one."""


class IndexWriteError(SimsearchError):
    """Writing to the index database failed (a full disk, an I/O error); what was committed before stays."""


class DeviceError(SimsearchError):
    """The torch device asked for does not exist or is not available."""


class ModelMismatchError(SimsearchError):
    """The index was built with another model than the one asked for."""

    @classmethod
    def between(cls, root: object, built: tuple[str, str], asked: tuple[str, str], advice: str) -> ModelMismatchError:
        """The error for the index at `root`, built with model `built` and asked to use `asked` (each a name and
        a content hash), ending with what to do."""
        return cls(f"the index at {root} was built with model {built[0]} ({built[1][:12]}), "
                   f"not {asked[0]} ({asked[1][:12]}); {advice}")


class InputPathError(SimsearchError):
    """A path given by the user does not exist or holds nothing usable."""


class OutputWriteError(SimsearchError):
    """A file the user asked for cannot be written (permissions, a full disk, ...)."""


class CalibrationError(SimsearchError):
    """No usable threshold: no calibration for this model, or data that cannot calibrate one."""


class InvalidArgumentError(SimsearchError, ValueError):
    """An argument of the right type with a value that means nothing (k = 0, a NaN threshold, ...)."""


class ArgumentTypeError(SimsearchError, TypeError):
    """An argument of the wrong type (a str for a list of paths, a float for k, ...)."""


class MoveError(SimsearchError):
    """Moving duplicates or undoing moves cannot start: a target folder that cannot be made or written, a manifest
    that cannot be read. (A single file that is not moved or not restored is reported, never raised.)"""


class ShardError(SimsearchError):
    """A shard (a WebDataset tar, a parquet file of image bytes) cannot be read: not one, truncated, or lacking
    the columns asked for."""
