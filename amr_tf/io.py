"""Atomic file writes: a temporary file in the same directory, flushed, fsynced, then renamed.

A reader therefore sees either the old complete file or the new complete file, never a
half-written one, even if the writer is killed (``SIGKILL``, power loss after the fsync).
Temporary files are named ``.<target>.<writer tag>.<8 random chars>.tmp[<suffix>]``: hidden, and
carrying this process's random ``WRITER_TAG``. A process that holds a directory's lock records its
tag in the lock file, so ``remove_stale_temp_files`` can later delete exactly the temporary files
that a killed writer of that directory left behind, and nothing that merely looks like one.

Also the file helpers beneath every layer: ``sha256_file`` and ``portable_path`` (a path as result
files record it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

from amr_tf.errors import AmrError
from amr_tf.safe_io import open_regular

# This process's mark on its temporary files (recorded in a directory's lock file while it holds it).
WRITER_TAG = secrets.token_hex(4)
# What ``tempfile.mkstemp(prefix=".<name>.<tag>.", suffix=".tmp<suffix>")`` produces (8 chars of [a-z0-9_]).
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<tag>[0-9a-f]{8})\.[a-z0-9_]{8}\.tmp(?P<suffix>\..+)?$")
MAX_LOCK_BYTES = 1 << 20  # the lock file's record of writer tags (9 bytes per training process)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    ``suffix`` keeps an extension some writers insist on (Keras wants ``.weights.h5``).
    On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{WRITER_TAG}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private (0600); the result should not be
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npy(path: str | os.PathLike, array, allow_pickle: bool = False) -> None:
    """``np.save`` to exactly ``path`` (no ``.npy`` appended), atomically, streamed (no in-memory copy)."""
    import numpy as np  # only here: the rest of this module is standard library

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=allow_pickle)


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like one of ``atomic_path``'s temporary files (of any writer)."""
    return TEMP_NAME.match(Path(path).name) is not None


def temp_file_tag(path: str | os.PathLike) -> str | None:
    """The writer tag in a temporary file's name, or ``None`` for any other name."""
    match = TEMP_NAME.match(Path(path).name)
    return match["tag"] if match else None


def remove_stale_temp_files(directory: str | os.PathLike, tags=None) -> list[Path]:
    """Delete the temporary files that writers of ``directory`` left behind (not recursive).

    Only files whose name carries one of ``tags`` are touched (default: the tags recorded in the
    directory's lock file by the processes that held it, see ``directory_lock``), so a file that
    merely looks like a temporary file, or one of another program, is never deleted. Only call this
    while holding the directory's lock. Returns what was removed.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    tags = set(recorded_writer_tags(directory) if tags is None else tags)
    for entry in sorted(directory.iterdir()):
        if temp_file_tag(entry) in tags and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would race with other
# threads creating files if it were done on every write.
UMASK = _read_umask()


_PACKAGE = Path(__file__).resolve().parent  # the amr_tf package directory


def portable_path(path) -> str:
    """``path`` as result files record it: inside the installed package, relative to its parent
    (``amr_tf/datasets/data/...``), so that a shipped manifest names no machine's directories;
    anything else as given."""
    try:
        # Relative to the package itself: in an editable install its parent is the repository,
        # and a user's dataset beside the package (``../mydata``) is not part of it.
        return str(Path(_PACKAGE.name) / Path(path).resolve().relative_to(_PACKAGE))
    except (ValueError, OSError):
        return str(path)


def sha256_file(path: str | os.PathLike, what: str = "a file", error=AmrError) -> str:
    """SHA-256 of a regular file's bytes, read in 1 MiB blocks.

    Opened through :func:`amr_tf.safe_io.open_regular`: a FIFO, a device (``/dev/zero`` never
    ends), a directory or a missing path is ``error`` naming the path, at once, never a hang.
    """
    digest = hashlib.sha256()
    with open_regular(path, what, error) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOCK_NAME = ".amr_tf.lock"


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike):
    """Hold an exclusive advisory lock on ``directory`` (file ``.amr_tf.lock``) for the block.

    Raises ``BlockingIOError`` at once if another process holds it. The operating system releases
    the lock when the holder exits, however it exits (``SIGKILL`` included), so a stale lock file
    never blocks anything. Once locked, this process's ``WRITER_TAG`` is appended to the lock file:
    the record of who may have left temporary files here. Where ``fcntl`` is unavailable
    (Windows) this does nothing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(directory / LOCK_NAME, flags, 0o666 & ~UMASK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{directory / LOCK_NAME} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            if os.fstat(fd).st_size < MAX_LOCK_BYTES:
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, f"{WRITER_TAG}\n".encode("ascii"))
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def recorded_writer_tags(directory: str | os.PathLike) -> set[str]:
    """The writer tags recorded in ``directory``'s lock file (empty if there is none or it is odd)."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return set()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return set()
        text = os.read(fd, MAX_LOCK_BYTES).decode("ascii", "replace")
    finally:
        os.close(fd)
    return {line for line in text.split() if re.fullmatch(r"[0-9a-f]{8}", line)}
