"""The project's own error types: every bad input surfaces as an ``AmrError`` with a clear message.

The command line prints ``error: <message>`` and exits with status 2 for any ``AmrError``; a
message names the file (and line, row or matrix) at fault and what was expected instead.
"""


class AmrError(Exception):
    """A problem the user can fix (bad file, bad flag, mismatched checkpoint); printed without a traceback."""


class DataError(AmrError, ValueError):
    """A dataset file is missing or malformed; the message names the file, line and what was expected."""


class CheckpointError(AmrError, ValueError):
    """A checkpoint or weights file does not fit the model or is corrupt."""


class TrainingDivergedError(AmrError, ArithmeticError):
    """The training loss or the weights became NaN or infinite; nothing was saved from that epoch on."""
