"""The project's own error type: every bad input surfaces as an ``AmrError`` with a clear message."""


class AmrError(Exception):
    """A problem the user can fix (bad file, bad flag, mismatched checkpoint); printed without a traceback."""


class DataError(AmrError, ValueError):
    """A dataset file is missing or malformed; the message names the file, line and what was expected."""


class CheckpointError(AmrError, ValueError):
    """A checkpoint or weights file does not fit the model or is corrupt."""
