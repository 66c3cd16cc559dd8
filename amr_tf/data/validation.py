"""Carve a validation split out of the training pairs of a dataset that has none (``holdout``).

For an original-format directory without ``val.txt`` (the original release's data has no
validation split), :func:`carve_holdout` holds out one training pair per user, so that epochs and
hyper-parameters can be chosen without looking at the test items:

* users: every user with at least two distinct training items (one to validate, at least one left
  to train on); users with fewer keep all their pairs and have no validation row;
* the pair: one of the user's distinct training items, uniformly at random (pos.txt carries no
  timestamps, so "the latest" is not available), every ``pos.txt`` line of that (user, item) pair
  leaves the training set;
* negatives: as many as ``neg.txt`` has per row, distinct, drawn uniformly without replacement
  from the items the user has no training pair with (before the hold-out) and that are not the
  user's test item, then sorted ascending;
* randomness: one ``numpy.random.default_rng(seed)``, users in ascending order, for each user
  first the item, then the negatives.

Why the test item stays out of the validation negatives: it is construction of the protocol, not
selection. A validation negative stands for an item the user did not interact with; the test
item is one the user did (exactly as a ``val.txt`` built by :mod:`amr_tf.datasets` never draws a
rated item), and taking it as a negative would make validation reward models that rank the
user's real test item *low*, which is a bias against the test set, not independence from it. The
carving reads only the identity of the test *positive* (never the test negatives, never a score),
so poisoning ``neg.txt``'s negatives leaves the carved split unchanged, and so do training,
selection and early stopping on it (tests/test_selection.py). A directory whose ``val.txt`` is
written (the embedded dataset, or ``write_amr_dir`` of a carved split) has no such dependency at
all once written.

The result's ``validation`` label is ``"holdout(seed=S)"``; it and the validation rows enter the
dataset's fingerprint.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from amr_tf.data.dataset import pair_keys
from amr_tf.errors import DataError

__all__ = ["carve_holdout"]


def carve_holdout(ds, seed: int = 0):
    """A copy of ``ds`` (an :class:`~amr_tf.data.dataset.AmrDataset` without validation split)
    with one validation pair per eligible user moved out of ``train_pairs`` (module docstring)."""
    if ds.validation_candidates is not None:
        raise DataError(f"{ds.name}: already has a validation split ({ds.validation})")
    n_neg = ds.test_candidates.shape[1] - 1
    train = ds.train_matrix  # distinct training items per user, sorted
    rng = np.random.default_rng(seed)
    tests = ds.test_candidates[:, 0]
    users, rows = [], []
    for u in range(ds.num_users):
        items = train.indices[train.indptr[u]:train.indptr[u + 1]]
        if len(items) < 2:
            continue
        held = int(items[rng.integers(len(items))])
        # The negatives are drawn among the items outside the user's training and test items,
        # without listing them (O(catalogue) per user): draw positions among the free items, then
        # map each to its item past the excluded ones before it. rng.choice(n, ...) and
        # rng.choice(pool, ...) with len(pool) == n draw the same positions.
        excluded = np.union1d(items, tests[u:u + 1])  # sorted
        free = ds.num_items - len(excluded)
        if free < n_neg:
            raise DataError(
                f"{ds.name}: --validation holdout: user {u} has only {free} items outside its training "
                f"and test items, fewer than the {n_neg} negatives per row of neg.txt"
            )
        positions = rng.choice(free, size=n_neg, replace=False)
        negatives = positions + np.searchsorted(excluded - np.arange(len(excluded)), positions, side="right")
        users.append(u)
        rows.append(np.concatenate([[held], np.sort(negatives)]))
    if not users:
        raise DataError(f"{ds.name}: --validation holdout: no user has two distinct training items to hold one out")
    val = np.asarray(rows, dtype=np.int64).reshape(len(users), 1 + n_neg)
    val_users = np.asarray(users, dtype=np.int64)
    held_key = pair_keys(val_users, val[:, 0], ds.num_items)
    pair_key = pair_keys(ds.train_pairs[:, 0], ds.train_pairs[:, 1], ds.num_items)
    kept = ds.train_pairs[~np.isin(pair_key, held_key)]
    return dataclasses.replace(
        ds, train_pairs=kept, validation_candidates=val, validation_users=val_users,
        validation=f"holdout(seed={seed})",
    )
