"""Exit statuses and the one-line messages of failures (docs/errors.md)."""

from __future__ import annotations

import errno
import os

# Exit statuses (docs/errors.md): argparse also exits with 2 on a malformed command line.
EXIT_INPUT = 2  # a problem with the input you can fix: AmrError (bad file, flag, checkpoint; divergence)

EXIT_SOFTWARE = 70  # TensorFlow failed in a way no check foresaw

EXIT_RESOURCES = 71  # out of memory (MemoryError, TensorFlow's ResourceExhaustedError)

EXIT_IO = 74  # the operating system refused a read or write (disk full, read-only, not a directory...)

EXIT_INTERRUPTED = 130


def one_line(text) -> str:
    """``text`` on one line (library messages, h5py's in particular, can span several)."""
    return " ".join(str(text).split())


def os_error_message(exc: OSError) -> str:
    """``path: reason`` for an OSError, with what it means for the files already written."""
    reason = one_line(exc.strerror) if exc.strerror and "\n" not in exc.strerror else (
        os.strerror(exc.errno) if exc.errno else one_line(exc))
    where = exc.filename if exc.filename is not None else None
    text = f"{where}: {reason}" if where is not None else one_line(exc) if not exc.errno else reason
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        text += " (nothing was half-written: the files written before are complete and kept)"
    return text
