"""What produced a result: package versions and the git commit, recorded in manifests and metrics.json."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path



@functools.lru_cache(maxsize=1)
def _provenance() -> dict:
    import h5py
    import keras
    import numpy as np
    import scipy
    import tensorflow as tf

    import amr_tf

    here = Path(__file__).resolve().parent.parent  # the amr_tf package directory

    def git(*args):
        try:
            proc = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    # Only this project's own checkout counts (not, say, a user's repository holding a virtualenv).
    top = (git("rev-parse", "--show-toplevel") or "").strip()
    ours = bool(top) and (Path(top) / "amr_tf").resolve() == here
    commit = (git("rev-parse", "HEAD") or "").strip() or None if ours else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "amr_tf": amr_tf.__version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status.strip()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "h5py": h5py.__version__,
    }


def provenance() -> dict:
    """Versions and git commit (with whether the tree had uncommitted changes), recorded in every
    manifest and result file. Computed once per process."""
    return dict(_provenance())
