"""Top-K evaluation: the original's sampled-candidates protocol and full ranking, vectorised.

The rank of a user's test positive is the number of competing items that score at least as
high (ties count against the positive, as in the original); ``HR@K = mean(rank < K)`` and
``NDCG@K = mean(log 2 / log(rank + 2))`` over users with ``rank < K`` (0 otherwise).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError

DEFAULT_KS = (5, 10, 20)
PROTOCOLS = ("sampled", "full")


def hit_ratio(ranks, k: int) -> float:
    """Fraction of users whose test item is ranked in the top ``k`` (rank is 0-based)."""
    return float(np.mean(np.asarray(ranks) < k))


def ndcg(ranks, k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gains = np.where(ranks < k, np.log(2.0) / np.log(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def metrics_from_ranks(ranks, ks=DEFAULT_KS) -> dict:
    """``{"HR@k": ..., "NDCG@k": ...}`` for every k, in that order."""
    out = {}
    for k in ks:
        out[f"HR@{k}"] = hit_ratio(ranks, k)
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    return out


def _rank_chunk(user_vecs, item_vecs, candidates, train_mask=None):
    """Ranks of column 0 of ``candidates`` (sampled) or of it among all unmasked items (full)."""
    scores = tf.matmul(user_vecs, item_vecs, transpose_b=True)  # (chunk, items)
    if train_mask is None:
        cand_scores = tf.gather(scores, candidates, batch_dims=1)
        return tf.reduce_sum(tf.cast(cand_scores[:, 1:] >= cand_scores[:, :1], tf.int32), axis=1)
    pos_scores = tf.gather(scores, candidates[:, :1], batch_dims=1)
    competing = (scores >= pos_scores) & ~train_mask
    # The positive itself is counted by ">=" unless it is masked: do not let it compete with itself.
    itself = ~tf.gather(train_mask, candidates[:, :1], batch_dims=1)
    return tf.reduce_sum(tf.cast(competing, tf.int32), axis=1) - tf.cast(itself[:, 0], tf.int32)


def rank_test_items(model, dataset, protocol: str = "sampled", features=None, max_chunk_entries: int = 1 << 24):
    """0-based rank of every user's test positive, computed in user chunks of bounded memory.

    Item vectors are computed once (``Q + C E`` with ``features`` overriding ``C`` when given);
    each chunk scores users against all items with one matrix product, then gathers the
    candidates (``"sampled"``) or masks the user's training items (``"full"``).
    """
    if protocol not in PROTOCOLS:
        raise AmrError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    cands = np.asarray(dataset.test_candidates)
    item_vecs = model.item_vectors(features) if features is not None else model.item_vectors()
    user_vecs = model.user_vectors()
    num_items = int(item_vecs.shape[0])
    chunk = max(1, min(len(cands), max_chunk_entries // max(num_items, 1)))
    ranks = []
    for start in range(0, len(cands), chunk):
        users = np.arange(start, min(start + chunk, len(cands)))
        mask = None
        if protocol == "full":
            mask = tf.constant(dataset.train_matrix[users].toarray() > 0)
        ranks.append(
            _rank_chunk(tf.gather(user_vecs, users), item_vecs, tf.constant(cands[users]), mask).numpy()
        )
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def evaluate(model, dataset, ks=DEFAULT_KS, protocol: str = "sampled", features=None) -> dict:
    """HR@k and NDCG@k of ``model`` on ``dataset``'s held-out items (see module docstring)."""
    return metrics_from_ranks(rank_test_items(model, dataset, protocol=protocol, features=features), ks)


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
