"""Datasets: the original directory format, a synthetic generator and the BPR triplet sampler.

The sampler (TensorFlow) is imported on first use, so the loader, the writer and the dataset
builders stay free of TensorFlow's import time.
"""

from amr_tf.data.dataset import VALIDATION_MODES, AmrDataset, load_amr_dir, write_amr_dir, write_split
from amr_tf.data.features import ItemFeatures, load_features, load_item_features
from amr_tf.data.registry import DEFAULT_DATASET, resolve_dataset
from amr_tf.data.synthetic import make_synthetic
from amr_tf.data.validation import carve_holdout

__all__ = [
    "AmrDataset",
    "ItemFeatures",
    "DEFAULT_DATASET",
    "resolve_dataset",
    "TripletSampler",
    "VALIDATION_MODES",
    "carve_holdout",
    "load_amr_dir",
    "load_features",
    "load_item_features",
    "make_synthetic",
    "triplet_dataset",
    "write_amr_dir",
    "write_split",
]


def __getattr__(name):
    if name in ("TripletSampler", "triplet_dataset"):
        from amr_tf.data import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'amr_tf.data' has no attribute {name!r}")
