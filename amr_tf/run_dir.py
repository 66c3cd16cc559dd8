"""A training run's directory (``--weight_dir``): what in it belongs to the run, moving an old run
aside (``--overwrite``), and the evaluation history a resumed run carries over.

A run never destroys another: ``train`` refuses a directory holding anything it did not write
unless it resumes the run there or moves the old contents aside, whole, to a timestamped sibling.
"""

from __future__ import annotations

import sys
from pathlib import Path

from amr_tf.errors import AmrError
from amr_tf.io import LOCK_NAME, recorded_writer_tags, temp_file_tag
from amr_tf.safe_io import read_json


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
