"""MF-eALS: element-wise ALS on implicit feedback with popularity-weighted missing data.

He, Zhang, Kan and Chua, "Fast Matrix Factorization for Online Recommendation with Implicit
Feedback" (SIGIR 2016) -- the MF-eALS row of the AMR paper's comparison. The objective over
*all* user-item pairs is

    L = sum_{(u,i) in R} w (1 - s_ui)^2 + sum_{(u,i) not in R} c_i s_ui^2 + lam (sum ||p_u||^2 + sum ||q_i||^2)

with ``s_ui = p_u . q_i``, observed weight ``w`` and the popularity-aware weight of a missing
entry ``c_i = c0 f_i^alpha / sum_j f_j^alpha`` (``f_i`` the item's number of training pairs).

One epoch minimises ``L`` exactly in every coordinate in turn: all users' ``p_uf`` for
``f = 1..K``, then all items' ``q_if``. The sum over the missing entries is never formed: writing
it as the sum over *all* pairs minus the observed ones, the all-pairs part of a user's update
only needs the cached Gram matrix ``S^q = sum_i c_i q_i q_i^T`` (and ``S^p = sum_u p_u p_u^T``
for the items), and the observed part the cached predictions ``s_ui`` of the training pairs,
updated after every coordinate. An epoch costs ``O((M + N) K^2 + |R| K)``.

Vectorisation: during the user phase the users do not interact (each update reads only its own
row, ``Q`` and its own cached predictions), so updating coordinate ``f`` of *all* users at once
gives exactly the result of the paper's user-by-user loop; the same holds for the items. Each
coordinate step is then a handful of ``bincount``s over the training pairs and one
matrix-vector product with the Gram matrix.

Everything is NumPy float64; :meth:`EALS.user_vectors`/:meth:`EALS.item_vectors` return float32
tensors so that :func:`amr_tf.evaluation.evaluate` ranks an ``EALS`` like the Keras models.

It is not trained by SGD, so it is not a Keras model; :func:`amr_tf.training.fit` runs its epochs
(:meth:`EALS.fit_epoch`) with the same callbacks as the others. For the project's checkpoints it
has ``parameter_names``, ``get_config`` and ``save_weights``/``load_weights`` in the Keras
``.weights.h5`` layout (written and read through a small Keras holder of the two matrices), so the
CLI's ``best``/``last`` checkpoints, ``evaluate`` and ``--resume`` treat it like the others.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError


def missing_weights(popularity, c0: float, alpha: float) -> np.ndarray:
    """``c_i = c0 f_i^alpha / sum_j f_j^alpha``: the weight of item i's missing entries.

    Items without training pairs get ``0`` when ``alpha > 0`` (and ``c0 / N`` at ``alpha = 0``,
    where every item weighs the same).
    """
    f = np.asarray(popularity, dtype=np.float64)
    if f.ndim != 1 or np.any(f < 0):
        raise AmrError("item popularity must be a 1-D array of non-negative counts")
    powered = np.power(f, float(alpha)) if alpha != 0 else np.ones_like(f)
    total = powered.sum()
    if total <= 0:
        raise AmrError("no item has a training pair: the missing-data weights are undefined")
    return float(c0) * powered / total


class EALS:
    """Matrix factorisation trained by element-wise ALS (MF-eALS); see the module docstring.

    ``c0`` is the paper's ``w0`` (the total weight of the missing data), ``alpha`` the popularity
    exponent, ``w`` the weight of an observed entry, ``reg`` the paper's ``lambda``. The factors
    start from a normal of stddev ``init_stddev`` drawn from ``numpy.random.default_rng(seed)``.
    The paper tunes ``w0`` and ``alpha`` per dataset (``reproduce.overall`` chooses them on the
    validation split); the defaults here are only a starting point. ``seen_items`` is accepted
    for :func:`amr_tf.training.build_model`'s interface and not used (scores only).
    """

    parameter_names = ("P", "Q")

    def __init__(self, num_users: int, num_items: int, embed_dim: int = 64, c0: float = 1.0, alpha: float = 0.5,
                 w: float = 1.0, reg: float = 0.01, init_stddev: float = 0.01, seed: int | None = 0,
                 seen_items=None):
        for arg, value in (("num_users", num_users), ("num_items", num_items), ("embed_dim", embed_dim)):
            if int(value) <= 0:
                raise AmrError(f"{arg} must be a positive integer, got {value}")
        for arg, value in (("c0", c0), ("alpha", alpha), ("w", w), ("reg", reg), ("init_stddev", init_stddev)):
            if not np.isfinite(value) or value < 0:
                raise AmrError(f"{arg} must be finite and >= 0, got {value}")
        self.num_users, self.num_items, self.embed_dim = int(num_users), int(num_items), int(embed_dim)
        self.c0, self.alpha, self.w, self.reg = float(c0), float(alpha), float(w), float(reg)
        self.init_stddev, self.seed = float(init_stddev), seed
        rng = np.random.default_rng(seed)
        self.P = rng.normal(scale=init_stddev, size=(self.num_users, self.embed_dim))
        self.Q = rng.normal(scale=init_stddev, size=(self.num_items, self.embed_dim))
        self.epochs_trained = 0
        self.stop_training = False  # set by callbacks (early stopping), read by amr_tf.training.fit
        self._cache = None  # (dataset fingerprint, users, items, c) of the last dataset trained on

    # ------------------------------------------------------------------ configuration

    def get_config(self) -> dict:
        return {"num_users": self.num_users, "num_items": self.num_items, "embed_dim": self.embed_dim,
                "c0": self.c0, "alpha": self.alpha, "w": self.w, "reg": self.reg,
                "init_stddev": self.init_stddev, "seed": self.seed}

    def weight_arrays(self) -> dict:
        """The factor matrices by name (float64 copies)."""
        return {"P": self.P.copy(), "Q": self.Q.copy()}

    @property
    def variables(self) -> list:
        """The factor matrices (their shapes size a checkpoint before it is written)."""
        return [self.P, self.Q]

    def compile(self, **_):
        """Nothing to compile (closed-form updates, no optimiser); for the Keras models' interface."""

    # ------------------------------------------------------------------ persistence (Keras weights layout)

    def _holder(self):
        """A Keras model holding copies of P and Q as its two variables (``vars/0``, ``vars/1`` in the file)."""
        import keras

        holder = keras.Model()
        holder.P = holder.add_weight(shape=self.P.shape, dtype="float64", initializer="zeros", name="P")
        holder.Q = holder.add_weight(shape=self.Q.shape, dtype="float64", initializer="zeros", name="Q")
        holder.built = True
        return holder

    def save_weights(self, path) -> None:
        holder = self._holder()
        holder.P.assign(self.P)
        holder.Q.assign(self.Q)
        holder.save_weights(str(path))

    def load_weights(self, path) -> None:
        """Read P and Q from ``path`` (the caller checks the file first: ``amr_tf.checkpoints.load_weights``)."""
        holder = self._holder()
        holder.load_weights(str(path))
        self.P[...] = holder.P.numpy()
        self.Q[...] = holder.Q.numpy()

    # ------------------------------------------------------------------ scoring (the evaluation interface)

    def user_vectors(self):
        return tf.constant(self.P, tf.float32)

    def item_vectors(self, features=None):
        """All items' vectors; ``features`` is accepted for the evaluation interface and ignored."""
        return tf.constant(self.Q, tf.float32)

    # ------------------------------------------------------------------ training

    def _pairs(self, dataset):
        """The binary training matrix's entries ``(users, items)`` and the weights ``c``."""
        if (dataset.num_users, dataset.num_items) != (self.num_users, self.num_items):
            raise AmrError(f"dataset {dataset.name!r} has {dataset.num_users} users and {dataset.num_items} items; "
                           f"the model was built for {self.num_users} and {self.num_items}")
        key = getattr(dataset, "fingerprint", None)
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1:]
        m = dataset.train_matrix.tocoo()  # duplicates are collapsed: each observed entry once
        users, items = m.row.astype(np.int64), m.col.astype(np.int64)
        popularity = np.bincount(items, minlength=self.num_items)
        out = users, items, missing_weights(popularity, self.c0, self.alpha)
        if key is not None:
            self._cache = (key, *out)
        return out

    def objective(self, dataset) -> float:
        """The weighted loss ``L`` (module docstring), computed from scratch (no caches)."""
        users, items, c = self._pairs(dataset)
        s = np.einsum("nk,nk->n", self.P[users], self.Q[items])
        s_p = self.P.T @ self.P
        s_q = self.Q.T @ (c[:, None] * self.Q)
        all_pairs = float(np.sum(s_p * s_q))  # sum_u sum_i c_i s_ui^2
        observed = float(np.sum(self.w * (1.0 - s) ** 2 - c[items] * s ** 2))
        penalty = self.reg * float(np.sum(self.P ** 2) + np.sum(self.Q ** 2))
        return all_pairs + observed + penalty

    def fit(self, dataset, epochs: int = 1, callback=None) -> list[float]:
        """Run ``epochs`` epochs of eALS on ``dataset``'s training pairs; returns the objective after each.

        ``callback(epoch, model)``, if given, runs after every epoch (for evaluation or logging).
        """
        if int(epochs) < 0:
            raise AmrError(f"epochs must be >= 0, got {epochs}")
        history = []
        for _ in range(int(epochs)):
            history.append(self.fit_epoch(dataset))
            if callback is not None:
                callback(self.epochs_trained, self)
        return history

    def fit_epoch(self, dataset) -> float:
        """One epoch of eALS on ``dataset``'s training pairs; returns the objective after it."""
        users, items, c = self._pairs(dataset)
        self._epoch(users, items, c)
        self.epochs_trained += 1
        return self.objective(dataset)

    def _epoch(self, users, items, c):
        """One pass over every coordinate: the user phase, then the item phase."""
        P, Q, w, lam = self.P, self.Q, self.w, self.reg
        m, n, k = self.num_users, self.num_items, self.embed_dim
        c_obs = c[items]  # c_i of every observed entry
        pred = np.einsum("nk,nk->n", P[users], Q[items])  # cached s_ui of the observed entries

        s_q = Q.T @ (c[:, None] * Q)  # S^q = sum_i c_i q_i q_i^T (Q is fixed during the user phase)
        for f in range(k):
            q_f = Q[items, f]
            partial = pred - P[users, f] * q_f  # s_ui without coordinate f
            num = np.bincount(users, (w - (w - c_obs) * partial) * q_f, minlength=m)
            num -= P @ s_q[:, f] - P[:, f] * s_q[f, f]  # sum_{k != f} p_uk S^q_kf
            den = np.bincount(users, (w - c_obs) * q_f * q_f, minlength=m) + s_q[f, f] + lam
            P[:, f] = _solve(num, den)
            pred = partial + P[users, f] * q_f

        s_p = P.T @ P  # S^p = sum_u p_u p_u^T (P is fixed during the item phase)
        for f in range(k):
            p_f = P[users, f]
            partial = pred - Q[items, f] * p_f
            num = np.bincount(items, (w - (w - c_obs) * partial) * p_f, minlength=n)
            num -= c * (Q @ s_p[:, f] - Q[:, f] * s_p[f, f])  # c_i sum_{k != f} q_ik S^p_kf
            den = np.bincount(items, (w - c_obs) * p_f * p_f, minlength=n) + c * s_p[f, f] + lam
            Q[:, f] = _solve(num, den)
            pred = partial + Q[items, f] * p_f


def _solve(num, den):
    """``num / den``, and 0 where ``den == 0`` (the loss does not depend on that coordinate: keep it at 0)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out
