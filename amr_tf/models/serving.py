"""Serving the pairwise models: the users' seen items, top-K recommendations and a SavedModel export.

The seen items (each user's training items) are held in CSR form -- ``indptr`` (users + 1) and
``indices`` (one entry per training pair) -- never as a users x items mask: a batch of users
gathers its rows as a ragged tensor and masks only those entries of its score block. The same
TensorFlow function, :func:`top_k_unseen`, ranks for :meth:`ServingMixin.recommend` and inside the
exported SavedModel, which holds the user and item vectors and the CSR arrays as plain variables
and can be loaded with ``tf.saved_model.load`` without amr_tf.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from amr_tf.errors import AmrError

SEEN_FILES = ("seen_indptr.npy", "seen_indices.npy")  # the .keras assets of the seen items
# Users per block of recommend(): a (block x items) float32 score matrix of about 32 MB at most.
_SCORE_ENTRIES = 1 << 23


def top_k_unseen(user_rows, item_vectors, users, k, seen_splits=None, seen_items=None):
    """``(item_ids, scores)`` of the ``k`` best items for each user row, the user's seen items excluded.

    ``user_rows`` (B x K) are the users' vectors, ``users`` (B,) their ids into the CSR arrays
    ``seen_splits`` (users + 1) and ``seen_items``; without them nothing is excluded. Excluded
    items get the score ``-inf``: with fewer than ``k`` unseen items the last slots hold ``-inf``.
    """
    scores = tf.matmul(user_rows, item_vectors, transpose_b=True)  # (B, items)
    if seen_splits is not None:
        seen = tf.gather(tf.RaggedTensor.from_row_splits(seen_items, seen_splits, validate=False), users)
        where = tf.stack([seen.value_rowids(), tf.cast(seen.flat_values, tf.int64)], axis=1)
        scores = tf.tensor_scatter_nd_update(scores, where, tf.fill(tf.shape(where)[:1], -np.inf))
    top = tf.math.top_k(scores, k=k)
    return tf.cast(top.indices, tf.int64), top.values


def as_csr(seen, num_users: int, num_items: int):
    """``(indptr, indices)`` (int64) of ``seen``: a sparse matrix, an ``AmrDataset`` or a dense 0/1 array."""
    if hasattr(seen, "train_matrix"):
        seen = seen.train_matrix
    matrix = sp.csr_matrix(seen)
    if matrix.shape != (num_users, num_items):
        raise AmrError(f"seen items must be a {num_users} x {num_items} (users x items) matrix, got {matrix.shape}")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)


def _check_csr(indptr, indices, num_users, num_items, where) -> None:
    ok = (indptr.ndim == 1 and indices.ndim == 1 and len(indptr) == num_users + 1 and indptr[0] == 0
          and indptr[-1] == len(indices) and np.all(np.diff(indptr) >= 0)
          and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < num_items)))
    if not ok:
        raise AmrError(f"{where}: the seen items are not a valid CSR matrix of {num_users} users x {num_items} items")


def read_asset(path: Path, dtype_kind: str) -> np.ndarray:
    """A ``.npy`` asset of a ``.keras`` file, read without pickle and memory-mapped."""
    from amr_tf.safe_io import read_npy

    array = read_npy(path, f"{path.name} in the .keras file", AmrError, mmap=True)
    if array.dtype.kind not in dtype_kind:
        raise AmrError(f"{path.name} in the .keras file: unexpected dtype {array.dtype}")
    return array


class SeenItems:
    """Each user's seen items in CSR form: ``indptr`` (users + 1) and ``indices``, both int64.

    A plain object (not a tuple) so that neither Keras nor TensorFlow tracking wraps it.
    """

    def __init__(self, indptr, indices):
        self.indptr, self.indices = indptr, indices


class _ServingModule(tf.Module):
    """What :meth:`ServingMixin.export` saves: vectors, the seen-item CSR, and two functions."""

    def __init__(self, user_vectors, item_vectors, seen_splits, seen_items):
        super().__init__()
        self.user_vectors = tf.Variable(user_vectors, trainable=False, name="user_vectors")
        self.item_vectors = tf.Variable(item_vectors, trainable=False, name="item_vectors")
        self.seen_splits = tf.Variable(seen_splits, trainable=False, name="seen_splits")
        self.seen_items = tf.Variable(seen_items, trainable=False, name="seen_items")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="users"),
                                  tf.TensorSpec([None], tf.int64, name="items")])
    def serve(self, users, items):
        """Scores ``p_u . v_i`` of the ``(users[b], items[b])`` pairs."""
        return {"scores": tf.reduce_sum(tf.gather(self.user_vectors, users) * tf.gather(self.item_vectors, items), -1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="users"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def recommend(self, users, k):
        """The top ``k`` unseen items of each user and their scores."""
        ids, scores = top_k_unseen(tf.gather(self.user_vectors, users), self.item_vectors, users, k,
                                   self.seen_splits, self.seen_items)
        return {"item_ids": ids, "scores": scores}


class ServingMixin:
    """Seen items, ``recommend``, ``export``, ``.keras`` assets and a clear ``.h5`` error for the pairwise models."""

    # ------------------------------------------------------------------ seen items

    def set_seen_items(self, seen) -> None:
        """Record each user's training items (excluded by :meth:`recommend` and the exported ``recommend``).

        Args:
            seen: a SciPy sparse users x items matrix, an ``AmrDataset`` (its ``train_matrix``),
                a dense 0/1 array, or ``None`` to forget them.
        """
        self._seen = None if seen is None else SeenItems(*as_csr(seen, self.num_users, self.num_items))

    @property
    def seen_items(self):
        """The seen items as a SciPy CSR matrix (users x items), or ``None`` if unknown."""
        if getattr(self, "_seen", None) is None:
            return None
        indptr, indices = self._seen.indptr, self._seen.indices
        return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(self.num_users, self.num_items))

    def _seen_tensors(self, required: bool):
        if getattr(self, "_seen", None) is None:
            if required:
                raise AmrError("the model does not know the users' seen items: pass seen_items= to the constructor, "
                               "call model.set_seen_items(dataset), or use exclude_seen=False")
            return None, None
        return tf.constant(self._seen.indptr), tf.constant(self._seen.indices)

    # ------------------------------------------------------------------ recommendations

    def recommend(self, users, k: int = 10, exclude_seen: bool = True, batch_size: int | None = None):
        """The ``k`` best items for each user, by score.

        Args:
            users: user ids (any integer sequence).
            k: how many items per user (1 <= k <= num_items).
            exclude_seen: leave out each user's training items (:meth:`set_seen_items`). If a
                user has fewer than ``k`` unseen items, the last slots have score ``-inf``.
            batch_size: users per score block (default: a block of about 32 MB).

        Returns:
            ``(item_ids, scores)``: NumPy arrays of shape ``(len(users), k)`` (int64, float32),
            best first.
        """
        users = np.asarray(users).reshape(-1)
        if users.dtype.kind not in "iu" or (len(users) and (users.min() < 0 or users.max() >= self.num_users)):
            raise AmrError(f"users must be integer ids in [0, {self.num_users}), got {users[:5]}...")
        users = users.astype(np.int64)
        k = int(k)
        if not 1 <= k <= self.num_items:
            raise AmrError(f"k must be between 1 and the number of items ({self.num_items}), got {k}")
        splits, items = self._seen_tensors(required=exclude_seen) if exclude_seen else (None, None)
        item_vecs, user_vecs = self.item_vectors(), self.user_vectors()
        block = int(batch_size or max(1, _SCORE_ENTRIES // self.num_items))
        ids, scores = [np.zeros((0, k), np.int64)], [np.zeros((0, k), np.float32)]
        for start in range(0, len(users), block):
            chunk = tf.constant(users[start:start + block])
            i, s = top_k_unseen(tf.gather(user_vecs, chunk), item_vecs, chunk, k, splits, items)
            ids.append(i.numpy())
            scores.append(s.numpy())
        return np.concatenate(ids), np.concatenate(scores)

    # ------------------------------------------------------------------ export and saving

    def export(self, filepath, format="tf_saved_model", verbose=True, version=None, **kwargs):
        """Write a SavedModel for serving: ``serve(users, items)`` and ``recommend(users, k)``.

        The artifact holds the user vectors ``P``, the item vectors ``v_i`` (for VBPR/AMR
        ``q_i + c_i E``, so no feature matrix is needed), and the seen items in CSR form; it is
        loaded with ``tf.saved_model.load(path)`` in any TensorFlow process (amr_tf not needed).
        Signatures (also the loaded object's methods, each returning a dict):

        * ``serve`` (and ``serving_default``): ``users`` int64 (B,), ``items`` int64 (B,) -> ``scores`` (B,);
        * ``recommend``: ``users`` int64 (B,), ``k`` int32 scalar -> ``item_ids`` int64 (B, k),
          ``scores`` float32 (B, k), each user's seen items excluded (a model without seen items
          excludes nothing).

        Args:
            filepath: the SavedModel directory.
            format: only ``"tf_saved_model"``.
            verbose: print where it was written.
            version: if given, write to ``filepath/<version>`` -- TensorFlow Serving's layout
                (``--model_base_path=filepath``).

        Returns:
            The directory written, as a ``Path``.
        """
        if format != "tf_saved_model" or kwargs:
            raise AmrError(f"export supports format='tf_saved_model' only (got format={format!r}, {sorted(kwargs)})")
        path = Path(filepath) if version is None else Path(filepath) / str(int(version))
        if getattr(self, "_seen", None) is None:
            splits, items = np.zeros(self.num_users + 1, np.int64), np.zeros(0, np.int64)
        else:
            splits, items = self._seen.indptr, self._seen.indices
        module = _ServingModule(self.user_vectors(), self.item_vectors(), splits, items)
        signatures = {
            "serving_default": module.serve.get_concrete_function(),
            "serve": module.serve.get_concrete_function(),
            "recommend": module.recommend.get_concrete_function(),
        }
        tf.saved_model.save(module, os.fspath(path), signatures=signatures)
        if verbose:
            print(f"saved a SavedModel with signatures serve, recommend to {path}")
        return path

    def save(self, filepath, *args, **kwargs):
        """``keras.Model.save`` to a ``.keras`` file (weights, optimisers, features, seen items)."""
        if str(filepath).endswith((".h5", ".hdf5")):
            raise AmrError(f"{filepath}: the legacy HDF5 (.h5) model format cannot hold an amr-tf model; use "
                           "model.save('model.keras') for the whole model, or amr_tf.checkpoints.save_checkpoint("
                           "model, 'name') for lean weights (NAME.weights.h5) with a manifest")
        return super().save(filepath, *args, **kwargs)

    def save_assets(self, dir_path):
        """Keras hook, called for ``.keras`` files only (not ``.weights.h5``): the seen items."""
        if getattr(self, "_seen", None) is not None:
            for name, array in zip(SEEN_FILES, (self._seen.indptr, self._seen.indices)):
                np.save(Path(dir_path) / name, array, allow_pickle=False)

    def load_assets(self, dir_path):
        """Keras hook of ``keras.models.load_model``: read back what :meth:`save_assets` wrote."""
        paths = [Path(dir_path) / name for name in SEEN_FILES]
        if all(p.exists() for p in paths):
            indptr, indices = (np.array(read_asset(p, "iu"), np.int64) for p in paths)
            _check_csr(indptr, indices, self.num_users, self.num_items, "seen items in the .keras file")
            self._seen = SeenItems(indptr, indices)
