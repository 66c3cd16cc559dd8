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
SPLITS = ("test", "validation")

# Work per chunk of users, in float32 entries: a score block (users x items) or gathered candidate
# vectors (users x candidates x K) of about 8-16 MB stays in cache; larger blocks are slower here.
_SCORE_BLOCK = 1 << 21
_GATHER_BLOCK = 1 << 22
# With this many more items than candidates, scoring all items costs more than gathering the
# candidates' vectors (measured on a 2-core CPU: 4x slower at 5x, 4x faster at 100x).
_GATHER_RATIO = 20


def hit_ratio(ranks, k: int) -> float:
    """Fraction of users whose test item is ranked in the top ``k`` (rank is 0-based)."""
    return float(np.mean(np.asarray(ranks) < k))


def ndcg_gains(ranks, k: int) -> np.ndarray:
    """Per-user NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, np.log(2.0) / np.log(ranks + 2.0), 0.0)


def ndcg(ranks, k: int) -> float:
    """Mean NDCG@k over users (:func:`ndcg_gains`)."""
    return float(np.mean(ndcg_gains(ranks, k)))


def metrics_from_ranks(ranks, ks=DEFAULT_KS) -> dict:
    """``{"HR@k": ..., "NDCG@k": ...}`` for every k, in that order."""
    out = {}
    for k in ks:
        out[f"HR@{k}"] = hit_ratio(ranks, k)
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    return out


def candidate_ranks(cand_scores):
    """0-based rank of column 0 among each row's candidates: how many others score at least as high.

    The project's one rank definition (ties count against the positive, as the original), used by
    the vectorised evaluation below and by the Keras metrics' ``test_step`` (:mod:`amr_tf.metrics`).
    """
    return tf.reduce_sum(tf.cast(cand_scores[:, 1:] >= cand_scores[:, :1], tf.int32), axis=1)


def _rank_chunk(user_vecs, item_vecs, candidates, train=None, gather=False):
    """Ranks of column 0 of ``candidates`` (sampled) or of it among all items but ``train`` (full).

    ``train`` is the chunk's training interactions as ``(rows, items, positive_is_train)``: the
    users' CSR entries (row within the chunk, item id) and whether each user's positive is one.
    """
    if train is None:  # sampled: candidates scoring at least the positive
        if gather:  # few candidates: batched dot products with the candidates' vectors
            cand_scores = tf.einsum("uk,unk->un", user_vecs, tf.gather(item_vecs, candidates))
        else:
            scores = tf.matmul(user_vecs, item_vecs, transpose_b=True)  # (chunk, items)
            cand_scores = tf.gather(scores, candidates, batch_dims=1)
        return candidate_ranks(cand_scores)
    scores = tf.matmul(user_vecs, item_vecs, transpose_b=True)  # (chunk, items)
    # Items scoring at least the positive, minus the user's training items among them (masking by
    # subtraction: only the sparse training entries are looked at, no users x items mask is built),
    # minus the positive itself unless it was already subtracted as a training item.
    rows, items, positive_is_train = train
    pos_scores = tf.gather(scores, candidates[:, 0], batch_dims=1)
    above = tf.reduce_sum(tf.cast(scores >= pos_scores[:, None], tf.int32), axis=1)
    train_scores = tf.gather_nd(scores, tf.stack([rows, items], axis=1))
    train_above = tf.math.unsorted_segment_sum(
        tf.cast(train_scores >= tf.gather(pos_scores, rows), tf.int32), rows, tf.shape(scores)[0])
    return above - train_above - (1 - tf.cast(positive_is_train, tf.int32))


def split_rows(dataset, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(users, candidates)`` of a held-out split: row k of ``candidates`` (positive first) is user ``users[k]``.

    ``"test"``: ``neg.txt``'s rows, row u for user u. ``"validation"``: the dataset's
    ``validation_candidates`` for its ``validation_users`` (an error without a validation split).
    """
    if split not in SPLITS:
        raise AmrError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        cands = np.asarray(dataset.test_candidates)
        return np.arange(len(cands), dtype=np.int64), cands
    if getattr(dataset, "validation_candidates", None) is None:
        raise AmrError(f"{getattr(dataset, 'name', 'the dataset')}: has no validation split; load it with "
                       "validation='holdout' (--validation holdout) or add a val.txt")
    return np.asarray(dataset.validation_users, dtype=np.int64), np.asarray(dataset.validation_candidates)


def rank_test_items(model, dataset, protocol: str = "sampled", features=None, max_chunk_entries: int = 1 << 24,
                    split: str = "test"):
    """0-based rank of every held-out positive of ``split`` (``"test"`` or ``"validation"``, see
    :func:`split_rows`), computed in user chunks of bounded memory.

    Item vectors are computed once (``Q + C E`` with ``features`` overriding ``C`` when given);
    each chunk scores users against all items with one matrix product, then gathers the
    candidates (``"sampled"``) or masks the user's training items (``"full"``). When the catalogue
    is much larger than the candidate lists, ``"sampled"`` gathers the candidates' vectors and
    takes batched dot products instead. ``max_chunk_entries`` bounds the entries of a chunk's
    score (or gathered-vector) block; chunks are kept smaller still where that is faster.

    ``"full"`` on the validation split ranks the validation positive among all items but the
    user's training items: the user's test item stays among the competitors (at selection time the
    future test item is unknown, and excluding it would make selection read the test split).
    """
    if protocol not in PROTOCOLS:
        raise AmrError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    split_users, cands = split_rows(dataset, split)
    item_vecs = model.item_vectors(features) if features is not None else model.item_vectors()
    user_vecs = model.user_vectors()
    num_items = int(item_vecs.shape[0])
    gather = protocol == "sampled" and cands.ndim == 2 and num_items > _GATHER_RATIO * cands.shape[1]
    if gather:
        per_user = max(cands.shape[1] * int(item_vecs.shape[1]), 1)
        chunk = min(max_chunk_entries, _GATHER_BLOCK) // per_user
    else:
        chunk = min(max_chunk_entries, _SCORE_BLOCK) // max(num_items, 1)
    chunk = max(1, min(len(cands), chunk))
    ranks = []
    for start in range(0, len(cands), chunk):
        rows = np.arange(start, min(start + chunk, len(cands)))
        users = split_users[rows]
        train = None
        if protocol == "full":
            sub = dataset.train_matrix[users]
            entry_rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
            positive_is_train = np.asarray(sub[np.arange(len(users)), cands[rows, 0]]).ravel() > 0
            train = (tf.constant(entry_rows, tf.int64), tf.constant(sub.indices, tf.int64),
                     tf.constant(positive_is_train))
        ranks.append(
            _rank_chunk(tf.gather(user_vecs, users), item_vecs, tf.constant(cands[rows]), train, gather).numpy()
        )
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def evaluate(model, dataset, ks=DEFAULT_KS, protocol: str = "sampled", features=None, split: str = "test") -> dict:
    """HR@k and NDCG@k of ``model`` on ``dataset``'s held-out items of ``split`` (``"test"`` or
    ``"validation"``; see the module docstring and :func:`rank_test_items`)."""
    return metrics_from_ranks(rank_test_items(model, dataset, protocol=protocol, features=features, split=split), ks)


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
