"""Certified robustness of the held-out ranking to item-feature perturbations of L2 norm at most ``eps``.

For a model whose score is linear in the item feature -- ``s(u,i) = p_u . (q_i + c_i E)`` (VBPR,
AMR), ``p_u . (c_i E)`` (DUIF), or ``p_u . q_i`` (MF-BPR, MF-eALS: no feature at all) -- a
perturbation ``Delta_i`` of item i's feature row changes ``s(u,i)`` by ``Delta_i . (E p_u)``, at
most ``eps ||E p_u||`` in absolute value when ``||Delta_i|| <= eps``. Against one user ``u`` the
worst case therefore pushes the held-out item ``t`` down and every negative candidate ``j`` up by
that much (``Delta_t = -eps e_u``, ``Delta_j = +eps e_u``, ``e_u = E p_u / ||E p_u||``), and the
worst-case 0-based rank of ``t`` is

    #{negatives j : s(u,j) + 2 eps ||E p_u|| >= s(u,t)}

(ties count against the held-out item, as in :mod:`amr_tf.evaluation`). The bound is attained
for every user *separately*; an attacker who changes each item once for all users (see
:mod:`amr_tf.attacks.shared`) can only do as well or worse, so the certified metrics are a lower
bound on what any such attack leaves, and equal the clean metrics for a model without features.

The per-user *certified radius* at cut-off K is the supremum of the ``eps`` at which the held-out
item stays in the top K: ``g_(K) / (2 ||E p_u||)``, with ``g_(K)`` the K-th smallest margin
``s(u,t) - s(u,j)`` over the negatives; the item is in the top K for every ``eps`` below the
radius and out of it at the radius (ties count against it). A user not in the top K even
unperturbed has radius 0; one whose score ignores the features (``E p_u = 0``) or who has fewer
than K negatives keeps the item at any ``eps`` (radius ``inf``).

Units: the datasets divide every feature by the feature file's global max ``|value|`` when they
are loaded (:func:`amr_tf.data.load_features`), so ``eps`` is measured in those normalised units
(``eps`` times that max in the raw CNN's units), the same units as the attacks of
:mod:`amr_tf.attacks.features` and AMR's training ``eps``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.evaluation import DEFAULT_KS, candidate_scores, metrics_from_ranks, split_rows

def feature_sensitivity(model) -> np.ndarray:
    """``||E p_u||`` per user (float64): the most one unit of feature change moves any of u's scores.

    Zero for a model without a feature projection ``E`` (MF-BPR, MF-eALS, Popularity).
    """
    users = np.asarray(tf.convert_to_tensor(model.user_vectors()).numpy(), np.float64)
    if getattr(model, "E", None) is None:
        return np.zeros(len(users))
    E = np.asarray(tf.convert_to_tensor(model.E).numpy(), np.float64)  # features x K
    return np.linalg.norm(users @ E.T, axis=1)


def ranks_under_shift(margins, shift) -> np.ndarray:
    """0-based rank of the held-out item when every negative gains ``shift`` on it (per user).

    ``margins`` are ``s(u,t) - s(u,j)`` (users x negatives); a negative counts when its margin is
    at most the shift (ties count against the held-out item).
    """
    return np.sum(margins <= np.asarray(shift, np.float64)[:, None], axis=1)


def _check_eps(eps) -> float:
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise AmrError(f"eps must be finite and >= 0, got {eps}")
    return eps


@dataclasses.dataclass
class Certificate:
    """The certified (worst-case) result at one ``eps``: per-user ranks, their metrics, and radii."""

    eps: float
    ranks: np.ndarray  # worst-case 0-based rank of each row's held-out item (row k: user ``users[k]``)
    metrics: dict  # HR@K and NDCG@K at those ranks (amr_tf.evaluation's formulas)
    radius: dict  # K -> per-user certified radius (float64, 0 or inf at the extremes)
    clean_ranks: np.ndarray  # the unperturbed ranks (eps = 0)
    users: np.ndarray  # the user of each row (all users, in order, for the test split)


class Certifier:
    """Scores a model's candidates once, then certifies any number of ``eps`` cheaply."""

    def __init__(self, model, dataset, ks=DEFAULT_KS, split: str = "test"):
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise AmrError(f"cut-offs must be positive integers, got {ks}")
        self.users, cands = split_rows(dataset, split)
        scores = candidate_scores(model, dataset, split).astype(np.float64)
        self.margins = scores[:, :1] - scores[:, 1:]  # s(u,t) - s(u,j), rows x negatives
        self.sensitivity = feature_sensitivity(model)[self.users]
        self.clean_ranks = ranks_under_shift(self.margins, np.zeros(len(cands)))
        self.radius = {k: self._radius(k) for k in self.ks}

    def _radius(self, k: int) -> np.ndarray:
        n_neg = self.margins.shape[1]
        if n_neg < k:
            return np.full(len(self.margins), np.inf)
        kth = np.partition(self.margins, k - 1, axis=1)[:, k - 1]  # the K-th smallest margin
        with np.errstate(divide="ignore", invalid="ignore"):
            radius = kth / (2.0 * self.sensitivity)
        radius[self.sensitivity == 0] = np.inf
        radius[kth <= 0] = 0.0  # not in the top K even unperturbed
        return radius

    def at(self, eps) -> Certificate:
        eps = _check_eps(eps)
        ranks = ranks_under_shift(self.margins, 2.0 * eps * self.sensitivity)
        return Certificate(eps=eps, ranks=ranks, metrics=metrics_from_ranks(ranks, self.ks), radius=self.radius,
                           clean_ranks=self.clean_ranks, users=self.users)


def certify(model, dataset, eps, ks=DEFAULT_KS, split: str = "test") -> Certificate:
    """The certified HR@K/NDCG@K and per-user radii of ``model`` on ``split`` at budget ``eps`` (module docstring)."""
    return Certifier(model, dataset, ks=ks, split=split).at(eps)
