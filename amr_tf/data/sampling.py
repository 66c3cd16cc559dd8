"""Training triplets (user, positive, negative) for BPR, one negative per training pair per epoch,
and the cold-start rule that says which items are never sampled as negatives."""

from __future__ import annotations

import numpy as np

from amr_tf.data.dataset import AmrDataset, pair_keys
from amr_tf.errors import DataError
from amr_tf.flags import COLD_START_RULES


def resolve_cold_start_rule(rule: bool | str, dataset: AmrDataset) -> str:
    """The cold-start rule ``rule`` means on ``dataset``: ``"original"``, ``"train"`` or ``"off"``.

    * ``original`` (``True``): the original code's rule, never sample a *test* positive that has
      no training pair. It reads the test split, so it changes training when the test items
      change; kept for fidelity.
    * ``train``: never sample an item that has no training pair (``dataset.untrained_items``). The
      same intent (an item nobody trained on is not pushed down as a negative) from the training
      pairs alone; on the embedded dataset under the original protocol both rules exclude the same
      12 items, since every item there is some user's positive.
    * ``off`` (``False``): only the user's own training items are rejected.
    * ``auto`` (the default): ``original`` under the original protocol (``dataset.validation ==
      "none"``: the numbers stay the original's), ``train`` with a validation split, so that
      nothing in training, selection or early stopping reads the test items.
    """
    if rule is True or rule is False:
        return "original" if rule else "off"
    if rule not in COLD_START_RULES:
        raise DataError(f"cold-start rule must be one of {', '.join(COLD_START_RULES)} (or a bool), got {rule!r}")
    if rule == "auto":
        return "original" if dataset.validation == "none" else "train"
    return rule


def _never_negative(dataset: AmrDataset, rule: str) -> np.ndarray:
    """Items the resolved ``rule`` never samples as negatives (a boolean mask over items)."""
    if rule == "original":
        return dataset.cold_start_items
    if rule == "train":
        return dataset.untrained_items
    return np.zeros(dataset.num_items, bool)


class TripletSampler:
    """The original's sampler, vectorised: shuffle the pairs, draw one uniform negative per pair.

    A negative is rejected when it is one of the user's training items or an item the cold-start
    rule excludes (``exclude_cold_start``: a rule of :func:`resolve_cold_start_rule`; ``"auto"``,
    the default, is the original's rule under the original protocol and a rule on the training
    pairs alone with a validation split; ``True`` is always the original's, which reads the test
    positives). Epoch ``e`` is a pure function of ``(seed, e)``, so a resumed run samples exactly
    what an uninterrupted run would.
    """

    def __init__(self, dataset: AmrDataset, seed: int = 0, exclude_cold_start: bool | str = "auto"):
        self.dataset = dataset
        self.seed = int(seed)
        self.cold_start_rule = resolve_cold_start_rule(exclude_cold_start, dataset)
        pairs = dataset.train_pairs
        self._keys = np.unique(pair_keys(pairs[:, 0], pairs[:, 1], dataset.num_items))
        self._forbidden_items = _never_negative(dataset, self.cold_start_rule)
        allowed = dataset.num_items - self._forbidden_items.sum() - np.diff(dataset.train_matrix.indptr)
        # A user whose training items (plus the cold items) cover the catalogue has no negative.
        if (allowed <= 0).any():
            u = int(np.argmax(allowed <= 0))
            raise DataError(f"{dataset.name}: user {u} has no item left to sample as a negative")

    @property
    def num_triplets(self) -> int:
        return len(self.dataset.train_pairs)

    def _rejected(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = pair_keys(users, items, self.dataset.num_items)
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, len(self._keys) - 1)
        return (self._keys[pos] == keys) | self._forbidden_items[items]

    def sample_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return shuffled ``(users, positives, negatives)`` int32 arrays for ``epoch``."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        pairs = self.dataset.train_pairs[rng.permutation(len(self.dataset.train_pairs))]
        users, pos = pairs[:, 0], pairs[:, 1]
        neg = rng.integers(0, self.dataset.num_items, size=len(users))
        todo = np.flatnonzero(self._rejected(users, neg))
        while len(todo):  # rejection sampling, vectorised over the rejected rows
            neg[todo] = rng.integers(0, self.dataset.num_items, size=len(todo))
            todo = todo[self._rejected(users[todo], neg[todo])]
        return users.astype(np.int32), pos.astype(np.int32), neg.astype(np.int32)

    def batches(self, epoch: int, batch_size: int):
        """Yield the epoch's triplets in batches; the last, partial batch is kept (unlike the original)."""
        u, i, j = self.sample_epoch(epoch)
        for s in range(0, len(u), batch_size):
            yield u[s : s + batch_size], i[s : s + batch_size], j[s : s + batch_size]

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.num_triplets // batch_size)


def triplet_dataset(sampler: TripletSampler, batch_size: int, initial_epoch: int = 0) -> "tf.data.Dataset":
    """An endless, prefetched ``tf.data`` stream of batches, epoch after epoch from ``initial_epoch``.

    Use with ``model.fit(ds, epochs=..., steps_per_epoch=sampler.steps_per_epoch(batch_size),
    initial_epoch=initial_epoch)``: epoch boundaries then coincide with the sampler's.

    Each epoch's triplets are drawn by one call into NumPy (``sampler.sample_epoch``), then
    sliced into batches inside ``tf.data``: one Python call per epoch, not one per batch (no GIL
    taken per batch while the model trains), and the batches are exactly
    ``sampler.batches(epoch, batch_size)``.
    """
    import tensorflow as tf  # here, not at the top: the CLI's --help imports amr_tf.data without TensorFlow

    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    n = sampler.num_triplets

    def epoch_batches(epoch):
        triplet = tf.numpy_function(sampler.sample_epoch, [epoch], [tf.int32] * 3, stateful=False)
        for column in triplet:
            column.set_shape([n])
        # Slice whole batches (``from_tensor_slices(...).batch()`` would move triplets one by one).
        starts = tf.data.Dataset.range(0, n, batch_size)
        # A 1-tuple: the triplet is Keras' "x", there is no "y".
        return starts.map(lambda s: (tuple(column[s:s + batch_size] for column in triplet),))

    epochs = tf.data.Dataset.range(initial_epoch, np.iinfo(np.int64).max)
    batches = epochs.flat_map(epoch_batches)
    # Under a multi-worker strategy every worker generates the same stream (same seed): split its
    # batches by element, not by (non-existent) input files.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)
