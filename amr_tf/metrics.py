"""HR@K and NDCG@K as Keras metrics, for ``model.evaluate`` and ``fit(validation_data=...)``.

A pairwise model's ``test_step`` scores ``(users, candidates)`` -- each row of ``candidates``
holds the user's held-out positive in column 0, then the items it competes with -- ranks the
positive with :func:`amr_tf.evaluation.candidate_ranks` (the project's rank definition: ties count
against the positive) and updates these metrics, so that the logs carry ``HR@10``, ``NDCG@10``
etc. (``val_HR@10`` under ``fit``). The CLI's evaluation (:func:`amr_tf.evaluation.evaluate`)
computes the same numbers on the same candidates with its vectorised engine.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError


class _RankMetric(keras.metrics.Metric):
    """Mean over users of a per-user gain of the positive's 0-based rank."""

    prefix = ""

    def __init__(self, k: int = 10, name: str | None = None, **kwargs):
        if int(k) <= 0:
            raise AmrError(f"k must be a positive integer, got {k}")
        super().__init__(name=name or f"{self.prefix}@{int(k)}", **kwargs)
        self.k = int(k)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float64")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float64")

    def gains(self, ranks):
        raise NotImplementedError

    def update_state(self, ranks, sample_weight=None):
        """Add users whose positives have the 0-based ``ranks`` (see :func:`amr_tf.evaluation.candidate_ranks`)."""
        gains = self.gains(tf.cast(tf.reshape(ranks, [-1]), tf.float64))
        if sample_weight is not None:
            weight = tf.cast(tf.reshape(sample_weight, [-1]), tf.float64)
            gains, n = gains * weight, tf.reduce_sum(weight)
        else:
            n = tf.cast(tf.size(gains), tf.float64)
        self.total.assign_add(tf.reduce_sum(gains))
        self.count.assign_add(n)

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"k": self.k, "name": self.name}


@keras.saving.register_keras_serializable(package="amr_tf")
class HitRate(_RankMetric):
    """HR@K: the fraction of users whose positive ranks in the top ``k`` (``rank < k``)."""

    prefix = "HR"

    def gains(self, ranks):
        return tf.cast(ranks < self.k, tf.float64)


@keras.saving.register_keras_serializable(package="amr_tf")
class NDCG(_RankMetric):
    """NDCG@K with one relevant item: ``log 2 / log(rank + 2)`` inside the top ``k``, else 0
    (as :func:`amr_tf.evaluation.ndcg_gains`)."""

    prefix = "NDCG"

    def gains(self, ranks):
        return tf.where(ranks < self.k, math.log(2.0) / tf.math.log(ranks + 2.0), tf.zeros_like(ranks))


def ranking_metrics(ks=(5, 10, 20)) -> list:
    """``[HitRate(k), NDCG(k)]`` for each ``k``: the order of :func:`amr_tf.evaluation.metrics_from_ranks`."""
    return [metric for k in ks for metric in (HitRate(k), NDCG(k))]


def candidate_dataset(users, candidates, batch_size: int = 1024) -> tf.data.Dataset:
    """A batched ``tf.data`` stream of ``(users, candidates)`` for ``model.evaluate`` or ``fit(validation_data=...)``.

    Args:
        users: (N,) user ids.
        candidates: (N, C) item ids per user, the held-out positive in column 0 (e.g. a dataset's
            ``test_candidates`` with ``users = np.arange(num_users)``).
        batch_size: users per batch.

    Returns:
        A dataset of 1-tuples ``((users, candidates),)``: the pair is Keras' ``x``; there is no ``y``.
    """
    users = np.asarray(users)
    candidates = np.asarray(candidates)
    if users.ndim != 1 or candidates.ndim != 2 or len(users) != len(candidates) or candidates.shape[1] < 1:
        raise AmrError(f"expected users (N,) and candidates (N, C) with the positive first, got shapes "
                       f"{users.shape} and {candidates.shape}")
    if users.dtype.kind not in "iu" or candidates.dtype.kind not in "iu":
        raise AmrError(f"users and candidates must be integer ids, got {users.dtype} and {candidates.dtype}")
    pairs = tf.data.Dataset.from_tensor_slices(((users.astype(np.int64), candidates.astype(np.int64)),))
    return pairs.batch(int(batch_size))
