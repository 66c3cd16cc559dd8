"""AMR: VBPR trained against an adversary that perturbs the items' image features."""

from __future__ import annotations

import keras
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.models import adversary as adv
from amr_tf.models.base import SCORING_METHODS, pair_margins  # noqa: F401 - SCORING_METHODS re-exported
from amr_tf.models.vbpr import VBPR, project

ADV_TYPES = ("grad", "random")
#: ``"auto"``: the projected fast path where it applies, else the tape; ``"tape"``: always the reference.
ADVERSARIES = ("auto", "tape")
_LEGACY_ADV_IMPL = {"projected": "auto", "dense": "tape"}  # configs written before the tape adversary


@keras.saving.register_keras_serializable(package="amr_tf")
class AMR(VBPR):
    """Adversarial Multimedia Recommendation (Tang et al., TKDE 2019).

    Per batch, the adversary ``Delta`` has one row per distinct item in the batch: the gradient
    of the model's clean pairwise loss with respect to that item's feature row (summed over its
    occurrences), L2-normalised and scaled to ``eps`` (``adv_type="grad"``), or random normal
    noise scaled the same way (``"random"``). The objective is
    ``loss(clean) + adv_weight * loss(features + Delta) + penalties``, with ``Delta`` a constant.

    **The reference adversary** (:func:`amr_tf.models.adversary.feature_adversary`) derives
    ``Delta`` with a ``tf.GradientTape`` on the batch's distinct feature rows through
    :meth:`batch_forward`, then scores the perturbed rows with a second :meth:`batch_forward`.
    A subclass that changes the scoring (a visual bias, a non-linear feature network, another
    ``loss=``) is therefore trained against its own adversary with no gradient written by hand.

    **The projected fast path** applies when the scores are linear in the feature through
    ``c_i E`` (``visual_projection_is_linear``, declared by :class:`VBPR`; a subclass that
    overrides one of :data:`SCORING_METHODS` loses it unless it declares it again). With ``G``
    the gradient w.r.t. the visual vector ``c_i E`` (a K-vector), the feature gradient is
    ``G E^T``, its norm ``sqrt(G (E^T E) G^T)`` and its effect ``Delta_i E = eps G (E^T E) / norm``:
    no F-dimensional tensor, and the adversarial scores reuse the clean pass
    (``s_adv = s + p_u . Delta_i E``). A test holds it equal to the reference (loss, effect and a
    training step). ``adversary="tape"`` forces the reference.

    Under ``tf.distribute`` an item's gradient is summed over all replicas' parts of the batch
    before it is normalised, so ``Delta`` is the one a single device would compute.
    """

    def __init__(self, num_users: int, num_items: int, features, embed_dim: int = 64, eps: float = 0.1,
                 adv_weight: float = 1.0, adv_type: str = "grad", adversary: str = "auto",
                 regs=(0.1, 1e-3, 0.0), learning_rates=(0.01, 1e-4, 1e-3), init_stddev: float = 0.01,
                 seed: int | None = None, seen_items=None, **kwargs):
        """AMR: VBPR trained against the adversary.

        Args:
            num_users, num_items: the numbers of users and items.
            features: (items x F) item features (constant).
            embed_dim: K, the embedding size.
            eps: the adversary's L2 budget per item, in feature units (the paper's epsilon).
            adv_weight: the weight lambda of the adversarial BPR term (0: plain VBPR).
            adv_type: ``"grad"`` (the adversary) or ``"random"`` (noise of the same norm).
            adversary: ``"auto"`` (the projected fast path where the scores are linear in the feature,
                else the tape) or ``"tape"`` (the reference: a GradientTape on the feature rows).
            regs: ``(r1, r2, r3)``: penalties on ``p_u``, on the whole item vector, and on ``E``.
            learning_rates: ``(lr_P, lr_Q, lr_E)`` of the three Adagrad optimisers.
            init_stddev, seed: the truncated-normal initialisation; ``seed`` also seeds the random adversary.
            seen_items: the users' training items, excluded by ``recommend``.
            **kwargs: ``loss`` (a pairwise loss), ``eval_ks``, ``name`` and other ``keras.Model`` arguments.
        """
        legacy = kwargs.pop("adv_impl", None)  # manifests written before adversary=
        if legacy is not None:
            if legacy not in _LEGACY_ADV_IMPL:
                raise AmrError(f"adv_impl must be one of {tuple(_LEGACY_ADV_IMPL)}, got {legacy!r}")
            adversary = _LEGACY_ADV_IMPL[legacy]
        super().__init__(num_users, num_items, features, embed_dim=embed_dim, regs=regs,
                         learning_rates=learning_rates, init_stddev=init_stddev, seed=seed,
                         seen_items=seen_items, **kwargs)
        if adv_type not in ADV_TYPES:
            raise AmrError(f"adv_type must be one of {ADV_TYPES}, got {adv_type!r}")
        if adversary not in ADVERSARIES:
            raise AmrError(f"adversary must be one of {ADVERSARIES}, got {adversary!r}")
        if float(eps) < 0 or float(adv_weight) < 0:
            raise AmrError(f"eps and adv_weight must be >= 0, got eps={eps}, adv_weight={adv_weight}")
        self.eps, self.adv_weight = float(eps), float(adv_weight)
        self.adv_type, self.adversary = adv_type, adversary
        self.noise_seed = keras.random.SeedGenerator(self.seed)
        self.adv_tracker = keras.metrics.Mean(name="adv_loss")

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "adv_weight": self.adv_weight,
                "adv_type": self.adv_type, "adversary": self.adversary}

    @property
    def metrics(self):
        return super().metrics + [self.adv_tracker]

    # ------------------------------------------------------------------ the adversary

    @property
    def uses_projected_adversary(self) -> bool:
        """Whether training takes the projected fast path (scores declared linear in ``c_i E``, ``adversary="auto"``)."""
        return self.adversary == "auto" and self.visual_projection_is_linear

    def forward_terms(self, p, batch):
        if self.adv_weight == 0.0:  # plain VBPR: no adversary computed
            return super().forward_terms(p, batch)
        if self.uses_projected_adversary:
            return self._projected_terms(p, batch)
        return self._tape_terms(p, batch)

    def perturbation(self, p, batch):
        """``Delta`` (one feature row per distinct batch item, constant) and the clean ``(margins, item_rows, loss)``.

        The reference adversary, whatever the training path; tests compare the fast path with it.
        """
        return self._perturbation(p, batch, self._batch_feature_rows(batch))

    def _perturbation(self, p, batch, rows):
        """:meth:`perturbation` on the batch's already gathered feature ``rows``."""
        num_unique = tf.shape(batch.unique)[0]
        if self.adv_type == "random":
            margins, v = self.batch_forward(p, batch, rows)
            return self._random_delta(num_unique), (margins, v, self.pairwise_loss(margins))
        (margins, v), clean, delta = adv.feature_adversary(lambda r: self.batch_forward(p, batch, r),
                                                           self.pairwise_loss, rows, batch.unique, self.num_items,
                                                           self.eps)
        return delta, (margins, v, clean)

    def _batch_feature_rows(self, batch):
        return self.feature_rows(batch.unique)

    def _random_delta(self, n):
        noise = keras.random.normal((n, self.feature_dim), seed=self.noise_seed)
        return adv.unit_rows(noise, self.eps)

    def _tape_terms(self, p, batch):
        """The reference: ``Delta`` from a tape on the feature rows, then a second forward pass on ``rows + Delta``."""
        rows = self._batch_feature_rows(batch)  # gathered once, for both passes
        delta, (margins, v, clean) = self._perturbation(p, batch, rows)
        adv_margins, _ = self.batch_forward(p, batch, rows + delta)
        return v, clean, self.pairwise_loss(adv_margins)

    def perturbation_effect(self, p, batch):
        """The fast path's ``Delta_i E`` per distinct batch item (n x K) and the clean ``(margins, item_rows, loss)``."""
        if self.adv_type == "random":
            margins, v = self.batch_forward(p, batch)
            effect = project(self._random_delta(tf.shape(batch.unique)[0]), self.E)
            return effect, (margins, v, self.pairwise_loss(margins))
        grad, (margins, v, clean) = self._visual_gradient(p, batch)
        return adv.projected_effect(grad, self.E, self.eps), (margins, v, clean)

    def _visual_gradient(self, p, batch):
        """``G`` = d loss / d (c_i E) per distinct batch item (n x K, constant, summed over replicas); the clean pass.

        The loss's derivative with respect to the margins comes from a tape (any ``loss=``); the
        rest is the linear score the fast path is declared for: ``d x / d v_i = p_u = -d x / d v_j``,
        summed over each item's rows.
        """
        v = self.batch_item_vectors(batch)
        margins = pair_margins(p, v)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(margins)
            clean = self.pairwise_loss(margins)
        rows = tape.gradient(clean, margins)[:, None] * p
        grad = tf.math.unsorted_segment_sum(tf.concat([rows, -rows], axis=0), batch.index, tf.shape(batch.unique)[0])
        return adv.replica_sum(grad, batch.unique, self.num_items), (margins, v, clean)

    def _projected_terms(self, p, batch):
        """The fast path: ``loss(margins + p . (Delta_i E - Delta_j E))`` with the clean pass reused.

        Differentiated by autodiff through :func:`adversary.projected_effect` (whose left Gram factor
        is held constant, so ``Delta`` is a constant for the update). An earlier hand-written
        backward pass (a ``tf.custom_gradient``) was measured against this and retired: 15 fewer
        small ops per step after Grappler, no measurable difference in epoch time (docs/design.md).
        """
        effect, (margins, v, clean) = self.perturbation_effect(p, batch)
        shift = adv.pair_difference(effect, batch.index, tf.shape(p)[0])
        return v, clean, self.pairwise_loss(margins + tf.reduce_sum(p * shift, axis=-1))
