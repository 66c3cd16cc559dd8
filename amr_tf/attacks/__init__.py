"""Adversarial attacks: generic L2 attacks (:mod:`.core`) and feature-level attacks on VBPR/AMR (:mod:`.features`).

>>> from amr_tf.attacks import perturbed_features
>>> feats = perturbed_features(model, dataset, "grad", eps=0.1)        # doctest: +SKIP
>>> evaluate(model, dataset, features=feats)                           # doctest: +SKIP
"""

from amr_tf.attacks.core import (
    NORM_FLOOR,
    l2_normalize,
    l2_norms,
    loss_and_gradient,
    one_step_l2,
    pgd_l2,
    project_l2_ball,
    random_in_l2_ball,
    random_l2,
)
from amr_tf.attacks.features import (
    ATTACKS,
    LOSSES,
    attack_loss_fn,
    bpr_loss_fn,
    feature_perturbation,
    perturbed_features,
    ranking_loss_fn,
    training_triplets,
)

__all__ = [
    "ATTACKS",
    "LOSSES",
    "NORM_FLOOR",
    "attack_loss_fn",
    "bpr_loss_fn",
    "feature_perturbation",
    "l2_normalize",
    "l2_norms",
    "loss_and_gradient",
    "one_step_l2",
    "perturbed_features",
    "pgd_l2",
    "project_l2_ball",
    "random_in_l2_ball",
    "random_l2",
    "ranking_loss_fn",
    "training_triplets",
]
