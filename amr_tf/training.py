"""Building and fitting the models on a dataset: what the CLI and the reproduction scripts share."""

from __future__ import annotations

import keras
import tensorflow as tf

from amr_tf.data import TripletSampler, triplet_dataset
from amr_tf.errors import AmrError
from amr_tf.models import AMR, MFBPR, VBPR, Popularity

MODEL_NAMES = ("AMR", "VBPR", "MFBPR", "POP")


def build_model(name: str, dataset, embed_dim=64, regs=(0.1, 1e-3, 0.0), learning_rates=(0.01, 1e-4, 1e-3),
                eps=0.1, adv_weight=1.0, adv_type="grad", seed=None, compile=True, **kwargs):
    """A freshly initialised (and compiled) model of the named kind for ``dataset``."""
    name = name.upper()
    if name in ("POP", "POPULARITY"):
        return Popularity.from_dataset(dataset)
    common = dict(embed_dim=embed_dim, regs=regs, seed=seed, **kwargs)
    if name in ("MF", "MFBPR", "BPR"):
        model = MFBPR(dataset.num_users, dataset.num_items, learning_rates=tuple(learning_rates)[:2], **common)
    elif name == "VBPR":
        model = VBPR(dataset.num_users, dataset.num_items, dataset.features, learning_rates=learning_rates, **common)
    elif name == "AMR":
        model = AMR(dataset.num_users, dataset.num_items, dataset.features, learning_rates=learning_rates,
                    eps=eps, adv_weight=adv_weight, adv_type=adv_type, **common)
    else:
        raise AmrError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if compile:
        model.compile()
    return model


def fit(model, dataset, epochs: int, batch_size: int = 512, seed: int = 0, initial_epoch: int = 0,
        callbacks=(), verbose="auto", exclude_cold_start: bool = True):
    """Train with BPR triplets sampled afresh each epoch (``TripletSampler``) through ``model.fit``."""
    if epochs < initial_epoch:
        raise AmrError(f"epochs ({epochs}) must be >= initial_epoch ({initial_epoch})")
    if batch_size <= 0:
        raise AmrError(f"batch_size must be positive, got {batch_size}")
    sampler = TripletSampler(dataset, seed=seed, exclude_cold_start=exclude_cold_start)
    return model.fit(
        triplet_dataset(sampler, batch_size, initial_epoch=initial_epoch),
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=sampler.steps_per_epoch(batch_size),
        callbacks=list(callbacks),
        verbose=verbose,
        shuffle=False,
    )


def set_seed(seed: int | None, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TF ops bit-for-bit repeatable."""
    if seed is None:
        return
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
