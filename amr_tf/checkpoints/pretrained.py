"""Initialising a model from a checkpoint or the original release's ``.npy`` (weights only)."""

from __future__ import annotations

from pathlib import Path

from amr_tf.checkpoints.original import load_original_npy
from amr_tf.checkpoints.project import _checkpoint_paths, assign_finite, check_shapes
from amr_tf.errors import CheckpointError
from amr_tf.safe_io import open_hdf5, read_hdf5_array


def load_pretrained(model, path) -> None:
    """Initialise ``model``'s matrices from a checkpoint or an original-release ``.npy``.

    Only the weights are taken (the optimiser starts fresh), as the original's ``--pretrain``
    did; this is how AMR starts from a pretrained VBPR. The arrays are read through
    ``amr_tf.safe_io`` (no external storage or links can feed them from another file).
    """
    path = Path(path)
    if path.suffix == ".npy":
        load_original_npy(path, model)
        return
    weights_path, _ = _checkpoint_paths(path)
    check_shapes(weights_path, model)
    with open_hdf5(weights_path, "weights file", CheckpointError) as f:
        arrays = [read_hdf5_array(f, f"vars/{k}", weights_path, CheckpointError)
                  for k in range(len(model.parameter_names))]
    assign_finite(model, model.parameter_names, arrays, weights_path)
