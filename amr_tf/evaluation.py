"""Top-K evaluation: the original's sampled-candidates protocol and full ranking, vectorised.

The rank of a user's test positive is the number of competing items that score at least as
high (ties count against the positive, as in the original); ``HR@K = mean(rank < K)`` and
``NDCG@K = mean(log 2 / log(rank + 2))`` over users with ``rank < K`` (0 otherwise).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amr_tf.data.dataset import pair_keys
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
# Full ranking: users per block before the catalogue is split into item blocks (a 256 x 8,192 block
# keeps the matrix product efficient and the block at 8 MB).
_FULL_MIN_USERS = 256


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


def _gather_rows(vectors, rows):
    """``vectors[rows]`` as a tensor, for item vectors held as a NumPy array (:func:`model_vectors`,
    gathered on the host) or as a tensor (gathered where it lives, e.g. a GPU)."""
    if isinstance(vectors, np.ndarray):
        return tf.constant(vectors[np.asarray(rows)])
    return tf.gather(vectors, rows)


def _device_vectors(item_vecs):
    """The item vectors where the rankings' products run: a NumPy array stays on the host (no copy
    of a million items' vectors), but with a GPU they go there once, not once per block."""
    if isinstance(item_vecs, np.ndarray) and tf.config.list_logical_devices("GPU"):
        return tf.convert_to_tensor(item_vecs)
    return item_vecs


def sampled_scores(user_vecs, item_vecs, users, cands, max_chunk_entries: int = 1 << 24):
    """The candidates' scores of the sampled protocol, one user chunk at a time (a generator of
    chunk x candidates float32 tensors, in row order): row k is ``users[k]`` scoring ``cands[k]``.

    The chunks bound memory as :func:`rank_test_items` describes: all items scored with one matrix
    product per chunk, or, when the catalogue is much larger than the candidate lists, the
    candidates' vectors gathered (from the item vectors as a NumPy array, :func:`model_vectors`)
    and dotted.
    """
    num_items = int(item_vecs.shape[0])
    gather = cands.ndim == 2 and num_items > _GATHER_RATIO * cands.shape[1]
    if gather:
        per_user = max(cands.shape[1] * int(item_vecs.shape[1]), 1)
        chunk = min(max_chunk_entries, _GATHER_BLOCK) // per_user
        item_vecs = _device_vectors(item_vecs)
    else:
        chunk = min(max_chunk_entries, _SCORE_BLOCK) // max(num_items, 1)
        item_vecs = tf.convert_to_tensor(item_vecs)  # once, not per chunk: this path is for smaller catalogues
    chunk = max(1, min(len(cands), chunk))
    for start in range(0, len(cands), chunk):
        block = np.arange(start, min(start + chunk, len(cands)))
        chunk_users = tf.gather(user_vecs, users[block])
        if gather:  # few candidates: batched dot products with the candidates' vectors
            yield tf.einsum("uk,unk->un", chunk_users, _gather_rows(item_vecs, cands[block]))
        else:
            scores = tf.matmul(chunk_users, item_vecs, transpose_b=True)  # (chunk, items)
            yield tf.gather(scores, tf.constant(cands[block]), batch_dims=1)


def excluded_entries(train_matrix, users, positives):
    """``(rows, items)`` sorted by item: each user's training items and held-out positive (once each).

    What full ranking leaves out of a user's competitors: the positive itself and the items the
    user trained on (a positive that is also a training item is listed once).
    """
    sub = train_matrix[users]
    rows = np.concatenate([np.repeat(np.arange(len(users)), np.diff(sub.indptr)), np.arange(len(users))])
    items = np.concatenate([sub.indices.astype(np.int64), np.asarray(positives, np.int64)])
    keys = np.unique(pair_keys(rows, items, train_matrix.shape[1]))  # sorted; duplicates once
    rows, items = keys // train_matrix.shape[1], keys % train_matrix.shape[1]
    order = np.argsort(items, kind="stable")
    return rows[order], items[order]


def full_ranks_block(user_vecs, item_vecs, positives, excluded, item_block: int):
    """Full-ranking ranks of one user block, streamed over item blocks (no users x items matrix).

    The rank of user ``r``'s positive is the number of items scoring at least its score, the
    excluded entries (``excluded``: ``(rows, items)`` sorted by item, from :func:`excluded_entries`)
    left out. Each item block is scored once (``block_users x item_block`` entries); the excluded
    entries inside it are read from that same block, so an item is counted, or discounted, by one
    and the same score.
    """
    n = int(user_vecs.shape[0])
    num_items = int(item_vecs.shape[0])
    pos_scores = tf.reduce_sum(user_vecs * _gather_rows(item_vecs, positives), axis=1)
    threshold = pos_scores[:, None]
    ex_rows, ex_items = excluded
    counts = tf.zeros([n], tf.int32)
    for start in range(0, num_items, item_block):
        stop = min(start + item_block, num_items)
        scores = tf.matmul(user_vecs, item_vecs[start:stop], transpose_b=True)  # (block users, block items)
        counts += tf.reduce_sum(tf.cast(scores >= threshold, tf.int32), axis=1)
        lo, hi = np.searchsorted(ex_items, [start, stop])
        if hi > lo:
            rows = tf.constant(ex_rows[lo:hi])
            ex_scores = tf.gather_nd(scores, tf.stack([rows, tf.constant(ex_items[lo:hi] - start)], axis=1))
            counts -= tf.math.unsorted_segment_sum(
                tf.cast(ex_scores >= tf.gather(pos_scores, rows), tf.int32), rows, n)
    return counts


def split_rows(dataset, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(users, candidates)`` of a held-out split: row k of ``candidates`` (positive first) is user ``users[k]``.

    ``"test"``: ``neg.txt``'s rows, row u for user u. ``"validation"``: the dataset's
    ``validation_candidates`` for its ``validation_users`` (an error without a validation split).
    """
    if split not in SPLITS:
        raise AmrError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        cands = np.asarray(dataset.test_candidates)
        users = np.arange(len(cands), dtype=np.int64)
    else:
        if getattr(dataset, "validation_candidates", None) is None:
            raise AmrError(f"{getattr(dataset, 'name', 'the dataset')}: has no validation split; load it with "
                           "validation='holdout' (--validation holdout) or add a val.txt")
        users, cands = np.asarray(dataset.validation_users, dtype=np.int64), np.asarray(dataset.validation_candidates)
    if cands.ndim != 2 or cands.shape[1] < 2 or users.shape != (len(cands),):
        raise AmrError(f"{split} candidates must have shape (users, 1 + negatives) with one user each, "
                       f"got {cands.shape} for {users.shape[0]} users")
    return users, cands


def rank_test_items(model, dataset, protocol: str = "sampled", features=None, max_chunk_entries: int = 1 << 24,
                    split: str = "test", rows=None, user_block: int | None = None, item_block: int | None = None,
                    vectors=None):
    """0-based rank of every held-out positive of ``split`` (``"test"`` or ``"validation"``, see
    :func:`split_rows`), computed in blocks of bounded memory; ``rows`` (indices into the split's
    rows, default all) ranks only those.

    Item vectors are computed once (``Q + C E`` by row chunks of the features, with ``features``
    overriding ``C`` when given; items x K, the size of ``Q``). ``"sampled"`` scores user chunks
    against all items with one matrix product and gathers the candidates; when the catalogue is
    much larger than the candidate lists it gathers the candidates' vectors and takes batched dot
    products instead. ``"full"`` streams user blocks x item blocks (:func:`full_ranks_block`),
    never holding a users x items matrix, and leaves each user's training items and the positive
    itself out of its competitors. ``max_chunk_entries`` bounds the entries of any block (score or
    gathered vectors); blocks are kept smaller still where that is faster. ``user_block`` and
    ``item_block`` set the full protocol's block shape (tests use odd sizes).

    ``"full"`` on the validation split ranks the validation positive among all items but the
    user's training items: the user's test item stays among the competitors (at selection time the
    future test item is unknown, and excluding it would make selection read the test split).
    """
    if protocol not in PROTOCOLS:
        raise AmrError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    split_users, cands = split_rows(dataset, split)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        split_users, cands = split_users[rows], cands[rows]
    user_vecs, item_vecs = vectors if vectors is not None else model_vectors(model, features)
    num_items = int(item_vecs.shape[0])
    if protocol == "full":
        item_vecs = _device_vectors(item_vecs)  # its item blocks are sliced once per user block
        budget = min(max_chunk_entries, _SCORE_BLOCK)
        # The whole catalogue per block while that leaves room for a few hundred users, else item blocks.
        item_block = item_block or min(num_items, max(1, budget // _FULL_MIN_USERS))
        user_block = user_block or max(1, budget // item_block)
        ranks = []
        for start in range(0, len(cands), user_block):
            block = np.arange(start, min(start + user_block, len(cands)))
            users = split_users[block]
            excluded = excluded_entries(dataset.train_matrix, users, cands[block, 0])
            ranks.append(full_ranks_block(tf.gather(user_vecs, users), item_vecs, cands[block, 0], excluded,
                                          item_block).numpy())
        return np.concatenate(ranks).astype(np.int64) if ranks else np.zeros(0, np.int64)
    ranks = [candidate_ranks(scores).numpy()
             for scores in sampled_scores(user_vecs, item_vecs, split_users, cands, max_chunk_entries)]
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def candidate_scores(model, dataset, split: str = "test", features=None, vectors=None,
                     max_chunk_entries: int = 1 << 24) -> np.ndarray:
    """``s(users[k], candidates[k, n])`` for every row of ``split`` (rows x candidates, float32; the
    rows of :func:`split_rows`), scored exactly as :func:`rank_test_items`' sampled protocol ranks
    them (``features``, ``vectors`` as there). The certificate and the shared attack read these."""
    split_users, cands = split_rows(dataset, split)
    user_vecs, item_vecs = vectors if vectors is not None else model_vectors(model, features)
    out = [s.numpy() for s in sampled_scores(user_vecs, item_vecs, split_users, cands, max_chunk_entries)]
    return np.concatenate(out) if out else np.zeros((0, cands.shape[1]), np.float32)


def model_vectors(model, features=None):
    """``(user_vectors, item_vectors)`` of ``model``: what every ranking of it reads. Computed once
    and passed as ``vectors=`` when one model state is ranked on several splits.

    The item vectors are a NumPy array (the rankings gather and slice it). A model that computes
    them by row blocks (``item_vector_blocks``, VBPR's ``q_i + c_i E``) fills it block by block:
    joining the blocks into one tensor would hold the vectors twice (the blocks and the result),
    244 MiB more at a million items with K = 64."""
    blocks = getattr(model, "item_vector_blocks", None)
    if features is not None or blocks is None:
        return model.user_vectors(), np.asarray(model.item_vectors(features))
    items = None
    for start, stop, rows in blocks():
        if items is None:
            items = np.empty((model.num_items, rows.shape[1]), rows.dtype.as_numpy_dtype)
        items[start:stop] = rows.numpy()
    return model.user_vectors(), items


def evaluate(model, dataset, ks=DEFAULT_KS, protocol: str = "sampled", features=None, split: str = "test",
             vectors=None) -> dict:
    """HR@k and NDCG@k of ``model`` on ``dataset``'s held-out items of ``split`` (``"test"`` or
    ``"validation"``; see the module docstring and :func:`rank_test_items`); ``vectors`` as
    :func:`model_vectors` returns them, to reuse."""
    return metrics_from_ranks(rank_test_items(model, dataset, protocol=protocol, features=features, split=split,
                                              vectors=vectors), ks)


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
