"""A training run's directory (``--weight_dir``): what in it belongs to the run, moving an old run
aside (``--overwrite``), and the evaluation history a resumed run carries over.

A run never destroys another: ``train`` refuses a directory holding anything it did not write
unless it resumes the run there or moves the old contents aside, whole, to a timestamped sibling.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from amr_tf.errors import AmrError
from amr_tf.io import LOCK_NAME, directory_lock, recorded_writer_tags, remove_stale_temp_files, temp_file_tag
from amr_tf.safe_io import read_json


def refuse_non_directory(path, flag: str) -> None:
    """An ``error:`` when ``flag``'s ``path`` exists (or is a dangling link) and is not a directory."""
    if path and (Path(path).exists() or Path(path).is_symlink()) and not Path(path).is_dir():
        raise AmrError(f"{path}: {flag} is not a directory (a file is in the way)")


@contextlib.contextmanager
def claimed_run_directory(path: Path, flag: str, overwrite: bool, stamp: str, *, process: str = "training",
                          has_checkpoint: bool = False, resuming: bool | None = None):
    """Hold the output directory of one run (``train --weight_dir``, ``tune --out``) for the block.

    The directory (created if absent) is locked against another process writing to it; the
    temporary files a killed writer of it left behind are removed; anything another run wrote
    there (:func:`foreign_entries`) is refused, unless ``overwrite`` first moves the old contents,
    whole, to a timestamped sibling (:func:`move_aside`: nothing is deleted). ``resuming``: the
    command is continuing the run there (``None``: a command that cannot resume); with
    ``has_checkpoint`` everything there belongs to that run.
    """
    running = False  # a BlockingIOError from the run itself is not the lock's
    try:
        with directory_lock(path):
            occupied = foreign_entries(path, has_checkpoint, bool(resuming))
            if occupied and not overwrite:
                shown = ", ".join(occupied[:5]) + (", ..." if len(occupied) > 5 else "")
                raise AmrError(
                    f"{path}: already holds {'a run' if resuming else 'files'} ({shown}); "
                    + ("--resume found no 'last' checkpoint to continue from; " if resuming else "")
                    + ("pass --resume to continue it, " if resuming is not None else "pass ")
                    + f"--overwrite to move it aside and start afresh, or choose another {flag}"
                )
            if not occupied:
                _remove_stale(path)
                running = True
                yield path
                return
            aside = move_aside(path, stamp)
            print(f"--overwrite: moved the previous contents of {path} to {aside}")
            with directory_lock(path):  # a fresh directory, locked before the old lock is released
                _remove_stale(path)
                running = True
                yield path
    except BlockingIOError:
        if running:
            raise
        raise AmrError(f"{path}: another {process} process is writing to this directory; wait for it to "
                       f"finish or choose another {flag}") from None


def _remove_stale(path: Path) -> None:
    removed = remove_stale_temp_files(path)  # only files named with a writer tag recorded in the lock
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted run in {path}")


def foreign_entries(weight_dir: Path, has_checkpoint: bool, resuming: bool) -> list[str]:
    """What in ``weight_dir`` a new run would overwrite or mix with (sorted names; empty if nothing).

    Ignored: the lock file and the temporary files of this directory's own writers. When resuming
    from a ``last`` checkpoint (``has_checkpoint``) everything there belongs to the run; resuming
    without one, only a log directory may be there (a run killed before its first checkpoint).
    """
    if has_checkpoint:
        return []
    tags = recorded_writer_tags(weight_dir)
    allowed = {LOCK_NAME} | ({"logs"} if resuming else set())
    return sorted(p.name for p in weight_dir.iterdir() if p.name not in allowed and temp_file_tag(p) not in tags)


def move_aside(weight_dir: Path, stamp: str) -> Path:
    """Rename ``weight_dir`` to an unused timestamped sibling (``NAME.replaced-<time>[-k]``)."""
    for k in range(1000):
        aside = weight_dir.with_name(f"{weight_dir.name}.replaced-{stamp}" + (f"-{k}" if k else ""))
        if not aside.exists() and not aside.is_symlink():
            weight_dir.rename(aside)
            return aside
    raise AmrError(f"{weight_dir}: cannot find a free name to move the old run aside")


def previous_evaluations(weight_dir: Path, initial_epoch: int) -> list[dict]:
    """The evaluations recorded in ``metrics.json`` by the runs a resumed run continues (up to its epoch)."""
    path = weight_dir / "metrics.json"
    if not (path.exists() or path.is_symlink()):
        return []
    try:
        history = read_json(path, "run summary").get("evaluations")
    except (AmrError, AttributeError) as exc:
        print(f"warning: {exc}; the evaluation history before epoch {initial_epoch} is not carried over",
              file=sys.stderr)
        return []
    if not isinstance(history, list):
        return []
    return [e for e in history if isinstance(e, dict) and isinstance(e.get("epoch"), int)
            and e["epoch"] <= initial_epoch]
