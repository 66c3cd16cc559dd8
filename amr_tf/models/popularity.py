"""The popularity baseline: every user gets the items ranked by their number of training pairs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class Popularity:
    """Scores ``s_ui = count(i)``; exposes the same vector interface as the learned models."""

    def __init__(self, item_counts, num_users: int):
        self.item_counts = np.asarray(item_counts, dtype=np.float32)
        self.num_items, self.num_users = len(self.item_counts), int(num_users)

    @classmethod
    def from_dataset(cls, dataset) -> "Popularity":
        return cls(dataset.item_popularity, dataset.num_users)

    def user_vectors(self):
        return tf.ones((self.num_users, 1), tf.float32)

    def item_vectors(self, features=None):
        return tf.constant(self.item_counts[:, None])
