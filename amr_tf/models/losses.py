"""The pairwise loss every model, the adversary and the feature attacks share.

A pairwise loss maps the score margins ``x = s_ui - s_uj`` of a batch of triplets to one scalar:
the **sum** over the batch (not the mean), as the original release did. Summing keeps a
``tf.distribute`` step simple (each replica's sum all-reduces to the whole batch's) and keeps the
learning rates of the original's runs meaningful. A model takes its loss as a constructor
argument (``loss=``); anything callable on a margin tensor that returns such a sum will do.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from amr_tf.errors import AmrError


@keras.saving.register_keras_serializable(package="amr_tf")
class BPRLoss:
    """Bayesian Personalised Ranking (Rendle et al. 2009): ``sum softplus(-x)`` = ``-sum log sigmoid(x)``."""

    name = "bpr"

    def __call__(self, margins):
        return tf.reduce_sum(tf.nn.softplus(-margins))

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        return "BPRLoss()"


def get_loss(loss=None):
    """A pairwise loss from ``None`` (BPR), a name (``"bpr"``), a Keras config dict, or a callable."""
    if loss is None or (isinstance(loss, str) and loss.lower() == BPRLoss.name):
        return BPRLoss()
    if isinstance(loss, dict):
        return keras.saving.deserialize_keras_object(loss)
    if callable(loss):
        return loss
    raise AmrError(f"loss must be 'bpr' or a callable on score margins, got {loss!r}")
