"""The original release's weights format: a pickled object array ``[P, Q, E]`` in a ``.npy``.

Read only through ``amr_tf.safe_io.read_pickled_npy`` (an allow-listed unpickler that rebuilds
plain arrays and nothing else, bounded by the file's size); written with ``np.save`` as the
original did, atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amr_tf.checkpoints.project import assign_finite
from amr_tf.errors import CheckpointError
from amr_tf.safe_io import read_pickled_npy, write_pickled_npy


def read_original_npy(path) -> list[np.ndarray]:
    """The arrays of the original release's weights file: a pickled object array ``[P, Q, E]``.

    This is the only pickled ``.npy`` the project reads (the original release wrote its weights
    that way, from Python 2). A crafted file cannot run code or claim more memory than it holds.
    """
    path = Path(path)
    arrays = read_pickled_npy(path, "original-release weights file", CheckpointError)
    try:
        return [np.asarray(a, dtype=np.float32) for a in arrays]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: expected a list of numeric matrices [P, Q, E] ({exc})") from None


def load_original_npy(path, model, arrays: list | None = None) -> None:
    """Import the original release's weights (``read_original_npy``) into ``model``, shapes checked.

    ``arrays``: the file's arrays, if the caller has already read them.
    """
    path = Path(path)
    arrays = read_original_npy(path) if arrays is None else arrays
    names = list(getattr(model, "parameter_names", ("P", "Q", "E")))
    if len(arrays) != len(names):
        raise CheckpointError(f"{path}: holds {len(arrays)} arrays, expected {len(names)} ({', '.join(names)})")
    for name, arr in zip(names, arrays):
        want = tuple(getattr(model, name).shape)
        if arr.shape != want:
            raise CheckpointError(f"{path}: {name} has shape {arr.shape}, the model expects {want}")
    assign_finite(model, names, arrays, path)


def export_original_npy(model, path) -> None:
    """Write ``[P, Q, E]`` as the original release did (an object array), atomically."""
    arrays = np.empty(len(model.parameter_names), dtype=object)
    for k, name in enumerate(model.parameter_names):
        arrays[k] = getattr(model, name).numpy()
    write_pickled_npy(path, arrays)
