"""Typed exceptions of the library; `cli/` turns them into one-line messages."""


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


class ModelMismatchError(SimsearchError):
    """The index was built with another model than the one asked for."""


class InputPathError(SimsearchError):
    """A path given by the user does not exist or holds nothing usable."""


class OutputWriteError(SimsearchError):
    """A file the user asked for cannot be written (permissions, a full disk, ...)."""


class CalibrationError(SimsearchError):
    """No usable threshold: no calibration for this model, or data that cannot calibrate one."""
