"""A seeded synthetic dataset with a planted visual signal, so VBPR measurably beats MF on it."""

from __future__ import annotations

import numpy as np

from amr_tf.data.dataset import AmrDataset
from amr_tf.errors import DataError


def make_synthetic(
    num_users: int = 300,
    num_items: int = 400,
    feature_dim: int = 64,
    num_pairs: int | None = None,
    num_negatives: int = 100,
    latent_dim: int = 8,
    visual_share: float = 0.8,
    seed: int = 0,
    name: str | None = None,
) -> AmrDataset:
    """Generate users' interactions from latent tastes that the item features partly reveal.

    Item taste vectors ``z_i`` are mixed from a visual part (``visual_share``), which the
    non-negative "CNN" features ``c_i = relu(z_vis_i W) + noise`` encode, and a hidden part the
    features do not show. Users pick items by ``softmax(u . z_i)`` (Gumbel top-k); each user has
    at least two positives: the last drawn is the held-out test item, the others are training pairs.
    ``num_pairs`` is the number of training pairs (default: 5 per user).
    """
    if min(num_users, num_items, feature_dim, latent_dim) <= 0:
        raise DataError("synthetic dataset: num_users, num_items, feature_dim and latent_dim must be positive")
    if num_pairs is None:
        num_pairs = 5 * num_users
    if num_pairs < num_users:
        raise DataError(f"synthetic dataset: num_pairs={num_pairs} must be >= num_users={num_users}")
    per_user_max = num_items - 1 - num_negatives
    if per_user_max < 2:
        raise DataError(
            f"synthetic dataset: {num_items} items leave no room for {num_negatives} negatives per user"
        )
    rng = np.random.default_rng(seed)
    z_vis = rng.normal(size=(num_items, latent_dim))
    z_hid = rng.normal(size=(num_items, latent_dim))
    z = np.sqrt(visual_share) * z_vis + np.sqrt(1.0 - visual_share) * z_hid
    w = rng.normal(size=(latent_dim, feature_dim)) / np.sqrt(latent_dim)
    features = np.maximum(z_vis @ w, 0.0) + 0.05 * rng.random((num_items, feature_dim))
    user_taste = rng.normal(size=(num_users, latent_dim))
    popularity = rng.normal(scale=0.5, size=num_items)

    # Training positives per user: at least 1, the remainder spread at random (capped per user).
    counts = np.ones(num_users, dtype=np.int64)
    extra = num_pairs - num_users
    if extra:
        cap = per_user_max - 1
        if extra > num_users * (cap - 1):
            raise DataError(f"synthetic dataset: num_pairs={num_pairs} too large for {num_items} items")
        while extra:
            add = np.bincount(rng.integers(0, num_users, extra), minlength=num_users)
            add = np.minimum(add, cap - counts)
            counts += add
            extra -= int(add.sum())

    train, cands = [], np.empty((num_users, 1 + num_negatives), dtype=np.int64)
    for start in range(0, num_users, 512):
        users = np.arange(start, min(start + 512, num_users))
        logits = user_taste[users] @ z.T / np.sqrt(latent_dim) * 2.0 + popularity
        noisy = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-noisy, axis=1, kind="stable")
        for row, u in enumerate(users):
            k = counts[u]
            chosen = order[row, : k + 1]
            train.extend((u, i) for i in chosen[:k])
            rest = order[row, k + 1 :]
            cands[u, 0] = chosen[k]
            cands[u, 1:] = rng.choice(rest, size=num_negatives, replace=False)
    pairs = np.array(train, dtype=np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    features = features.astype(np.float32)
    features /= np.abs(features).max()
    return AmrDataset(
        num_users=num_users,
        num_items=num_items,
        features=features,
        train_pairs=pairs,
        test_candidates=cands,
        name=name or f"synthetic-{num_users}x{num_items}x{feature_dim}-seed{seed}",
    )
