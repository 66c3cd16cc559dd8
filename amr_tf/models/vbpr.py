"""VBPR as in the AMR paper: ``s_ui = p_u . (q_i + c_i E)`` (one user vector, no biases)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.models.base import PairwiseModel


@keras.saving.register_keras_serializable(package="amr_tf")
class VBPR(PairwiseModel):
    """Visual BPR: ID embeddings P, Q plus a projection E of each item's fixed CNN feature.

    ``features`` (items x F) stay constant on the device; they are not weights and are not saved
    in checkpoints (a checkpoint records the dataset's fingerprint instead).
    """

    parameter_names = ("P", "Q", "E")

    def __init__(
        self,
        num_users: int,
        num_items: int,
        features,
        embed_dim: int = 64,
        regs=(0.1, 1e-3, 0.0),
        learning_rates=(0.01, 1e-4, 1e-3),
        **kwargs,
    ):
        super().__init__(num_users, num_items, embed_dim=embed_dim, regs=regs, learning_rates=learning_rates, **kwargs)
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != self.num_items:
            raise AmrError(f"features must have shape ({self.num_items}, F), got {features.shape}")
        self.feature_dim = int(features.shape[1])
        self.features = tf.constant(features, dtype=tf.float32)
        seed = None if self.seed is None else self.seed + 2
        init = keras.initializers.TruncatedNormal(stddev=self.init_stddev, seed=seed)
        self.E = self.add_weight(shape=(self.feature_dim, self.embed_dim), initializer=init, name="E")

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim}

    def item_vectors(self, features=None):
        feats = self.features if features is None else tf.convert_to_tensor(features, tf.float32)
        return self.Q + tf.matmul(feats, self.E)

    def batch_item_vectors(self, batch):
        # The visual part c_i E once per distinct item of the batch, then spread over its rows.
        visual = tf.matmul(tf.gather(self.features, batch.unique), self.E)
        return batch.q_rows + tf.gather(visual, batch.index), visual

    def extra_penalty(self):
        return tf.reduce_sum(tf.square(self.E))
