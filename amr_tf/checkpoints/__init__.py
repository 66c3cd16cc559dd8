"""Checkpoints: the project's own (``project``), the original release's ``.npy`` (``original``),
initialising from either (``pretrained``) and what produced a result (``provenance``).

Everything is re-exported here, so ``from amr_tf.checkpoints import X`` keeps working.
"""

from amr_tf.checkpoints.original import export_original_npy, load_original_npy, read_original_npy
from amr_tf.checkpoints.pretrained import load_pretrained
from amr_tf.checkpoints.project import (
    MANIFEST_ATTR,
    MANIFEST_VERSION,
    assign_finite,
    check_model_fits,
    check_shapes,
    checkpoint_exists,
    load_checkpoint,
    load_weights,
    non_finite_weights,
    read_manifest,
    restore_seed_generators,
    save_checkpoint,
    seed_generator_states,
)
from amr_tf.checkpoints.provenance import provenance

__all__ = [
    "MANIFEST_ATTR",
    "MANIFEST_VERSION",
    "assign_finite",
    "check_model_fits",
    "check_shapes",
    "checkpoint_exists",
    "export_original_npy",
    "load_checkpoint",
    "load_original_npy",
    "load_pretrained",
    "load_weights",
    "non_finite_weights",
    "provenance",
    "read_manifest",
    "read_original_npy",
    "restore_seed_generators",
    "save_checkpoint",
    "seed_generator_states",
]
