"""Feature-level attacks on visually-aware recommenders (VBPR, AMR): perturb the items' CNN features.

The attacker adds ``delta_i`` with ``||delta_i||_2 <= eps`` to every item's (normalised) feature
row ``c_i`` and leaves the model's weights alone; the model is then evaluated with the
perturbed features (``amr_tf.evaluation.evaluate(model, dataset, features=...)``).

Two losses the attacker can maximise (``loss=``):

* ``"bpr"`` (the paper's): the model's pairwise loss (BPR, ``sum softplus(-(s_ui - s_uj))``, unless the
  model was built with another ``loss=``) on training triplets
  ``(u, i, j)``, one sampled negative per training pair (the :class:`~amr_tf.data.TripletSampler`
  epoch ``0`` of ``seed``; ``triplet_epochs`` epochs for more negatives). The one-step attack on it is AMR's
  training-time adversary applied to the whole epoch at once instead of one batch. It uses no
  test information. Items that occur in no triplet (for instance cold-start test items, which the
  original sampler never draws as negatives) get no gradient and stay unperturbed.
* ``"ranking"``: the same pairwise loss on the *test* candidates, ``sum_u sum_j softplus(-(s_u,t -
  s_u,j))`` with ``t`` the user's held-out item and ``j`` its sampled negatives: a white-box
  attack on the evaluation itself, an upper bound on what an attacker could do.

Attacks (``attack=``): ``"grad"`` one L2 fast-gradient step (:func:`~amr_tf.attacks.core.one_step_l2`),
``"pgd"`` projected gradient ascent with a random start (:func:`~amr_tf.attacks.core.pgd_l2`; here the
step defaults to the full radius ``eps``: the losses above are convex in the features, so every
projected step raises the loss, and a full-radius step forgets the random start's direction
within a few steps, whereas Madry's ``2.5 eps / steps`` would keep much of it after 10 steps),
``"random"`` Gaussian noise of norm exactly ``eps`` per item (:func:`~amr_tf.attacks.core.random_l2`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amr_tf.attacks.core import one_step_l2, pgd_l2, random_l2
from amr_tf.data.sampling import TripletSampler
from amr_tf.errors import AmrError
from amr_tf.models.losses import BPRLoss

ATTACKS = ("grad", "pgd", "random")
LOSSES = ("bpr", "ranking")


def _check_visual(model) -> None:
    if not hasattr(model, "features") or not hasattr(model, "E"):
        raise AmrError(f"{type(model).__name__} does not use item features; feature attacks need VBPR or AMR")


def training_triplets(dataset, seed: int = 0, epochs: int = 1, exclude_cold_start: bool = True):
    """``(users, positives, negatives)``: ``epochs`` epochs of the BPR sampler of ``seed``, concatenated."""
    if int(epochs) < 1:
        raise AmrError(f"need at least one epoch of triplets, got {epochs}")
    sampler = TripletSampler(dataset, seed=seed, exclude_cold_start=exclude_cold_start)
    parts = [sampler.sample_epoch(e) for e in range(int(epochs))]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _pairwise_loss(model):
    """The model's own pairwise loss (``loss=``; BPR by default), which the attacker maximises."""
    return getattr(model, "pairwise_loss", None) or BPRLoss()


def bpr_loss_fn(model, users, pos, neg):
    """``features -> loss(s_ui - s_uj)`` (BPR: ``sum softplus(-(s_ui - s_uj))``) over the triplets, weights fixed."""
    _check_visual(model)
    users, pos, neg = (tf.constant(np.asarray(a), tf.int32) for a in (users, pos, neg))
    pairwise = _pairwise_loss(model)

    def loss(features):
        p = tf.gather(model.user_vectors(), users)
        v = model.item_vectors(features)
        return pairwise(tf.reduce_sum(p * (tf.gather(v, pos) - tf.gather(v, neg)), axis=1))

    return loss


def ranking_loss_fn(model, dataset):
    """``features -> sum_u sum_j loss(s_u,test - s_u,j)`` over every user's test candidates."""
    _check_visual(model)
    cands = tf.constant(np.asarray(dataset.test_candidates), tf.int32)
    pairwise = _pairwise_loss(model)

    def loss(features):
        scores = tf.matmul(model.user_vectors(), model.item_vectors(features), transpose_b=True)
        cand = tf.gather(scores, cands, batch_dims=1)  # (users, 1 + negatives)
        return pairwise(cand[:, :1] - cand[:, 1:])

    return loss


def attack_loss_fn(model, dataset, loss: str = "bpr", seed: int = 0, triplet_epochs: int = 1, triplets=None):
    """The loss the attacker maximises (see the module docstring); ``triplets`` overrides the sampled ones."""
    if loss == "bpr":
        if triplets is None:
            triplets = training_triplets(dataset, seed=seed, epochs=triplet_epochs)
        return bpr_loss_fn(model, *triplets)
    if loss == "ranking":
        return ranking_loss_fn(model, dataset)
    raise AmrError(f"loss must be one of {LOSSES}, got {loss!r}")


def feature_perturbation(model, dataset, attack: str, eps, loss: str = "bpr", seed: int = 0, steps: int = 10,
                         step_size: float | None = None, triplet_epochs: int = 1, triplets=None,
                         loss_fn=None) -> np.ndarray:
    """The perturbation ``delta`` (items x F, ``||delta_i|| <= eps``) of ``attack`` against ``model``.

    ``seed`` keys the training triplets of the ``"bpr"`` loss, PGD's random start and the random
    noise, so equal arguments give equal perturbations. ``loss_fn`` (from :func:`attack_loss_fn`)
    may be passed to reuse one loss over many ``eps``. PGD's ``step_size`` defaults to ``eps``.
    """
    _check_visual(model)
    if attack not in ATTACKS:
        raise AmrError(f"attack must be one of {ATTACKS}, got {attack!r}")
    features = model.normalised_features()
    if float(np.max(eps)) == 0.0:
        return np.zeros(features.shape, np.float32)
    if attack == "random":
        return random_l2(features, eps, seed=seed).numpy()
    if loss_fn is None:
        loss_fn = attack_loss_fn(model, dataset, loss=loss, seed=seed, triplet_epochs=triplet_epochs,
                                 triplets=triplets)
    if attack == "grad":
        return one_step_l2(loss_fn, features, eps).numpy()
    if step_size is None:
        step_size = eps
    return pgd_l2(loss_fn, features, eps, steps=steps, step_size=step_size, random_start=True, seed=seed).numpy()


def perturbed_features(model, dataset, attack: str, eps, **kwargs) -> np.ndarray:
    """``model.features + feature_perturbation(...)``; at ``eps = 0`` the clean features themselves."""
    clean = np.asarray(model.normalised_features().numpy())
    if float(np.max(eps)) == 0.0:
        return clean
    return clean + feature_perturbation(model, dataset, attack, eps, **kwargs)
