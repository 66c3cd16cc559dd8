"""AMR: VBPR trained against an adversary that perturbs the items' image features."""

from __future__ import annotations

import keras
import tensorflow as tf

from amr_tf.errors import AmrError
from amr_tf.models.base import replica_context
from amr_tf.models.vbpr import VBPR, project

ADV_TYPES = ("grad", "random")
ADV_IMPLS = ("projected", "dense")

# The original normalises with tf.nn.l2_normalize: x / sqrt(max(sum(x^2), 1e-12)).
_NORM_FLOOR = 1e-12


@keras.saving.register_keras_serializable(package="amr_tf")
class AMR(VBPR):
    """Adversarial Multimedia Recommendation (Tang et al., TKDE 2019).

    Per batch, the adversary ``Delta`` has one row per distinct item in the batch: the gradient
    of the clean BPR sum with respect to that item's feature row (summed over its occurrences),
    L2-normalised and scaled to ``eps`` (``adv_type="grad"``), or random normal noise scaled
    the same way (``"random"``). The objective is
    ``BPR(clean) + adv_weight * BPR(features + Delta) + penalties``, with ``Delta`` a constant.

    ``adv_impl="projected"`` (default) never forms an F-dimensional tensor: with ``G`` the
    gradient with respect to the item's visual vector ``c_i E`` (a K-vector), the feature
    gradient is ``G E^T``, its norm is ``sqrt(G (E^T E) G^T)`` and its effect on the vector is
    ``Delta_i E = eps G (E^T E) / norm``. The adversarial scores reuse the clean pass:
    ``s_adv = s + p_u . Delta_i E``. ``adv_impl="dense"`` is the original's graph (the gradient
    with respect to the whole items x F feature matrix, densified, and a second forward pass on
    the perturbed features); it is kept as the reference the tests and benchmarks compare against.

    Under ``tf.distribute`` an item's gradient is summed over all replicas' parts of the batch
    before it is normalised, so ``Delta`` is the one a single device would compute.
    """

    def __init__(self, num_users: int, num_items: int, features, embed_dim: int = 64, eps: float = 0.1,
                 adv_weight: float = 1.0, adv_type: str = "grad", adv_impl: str = "projected",
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
            adv_impl: ``"projected"`` (fast, default) or ``"dense"`` (the original's graph, a reference).
            regs: ``(r1, r2, r3)``: penalties on ``p_u``, on the whole item vector, and on ``E``.
            learning_rates: ``(lr_P, lr_Q, lr_E)`` of the three Adagrad optimisers.
            init_stddev, seed: the truncated-normal initialisation; ``seed`` also seeds the random adversary.
            seen_items: the users' training items, excluded by ``recommend``.
            **kwargs: ``eval_ks``, ``name`` and other ``keras.Model`` arguments.
        """
        super().__init__(num_users, num_items, features, embed_dim=embed_dim, regs=regs,
                         learning_rates=learning_rates, init_stddev=init_stddev, seed=seed,
                         seen_items=seen_items, **kwargs)
        if adv_type not in ADV_TYPES:
            raise AmrError(f"adv_type must be one of {ADV_TYPES}, got {adv_type!r}")
        if adv_impl not in ADV_IMPLS:
            raise AmrError(f"adv_impl must be one of {ADV_IMPLS}, got {adv_impl!r}")
        if float(eps) < 0 or float(adv_weight) < 0:
            raise AmrError(f"eps and adv_weight must be >= 0, got eps={eps}, adv_weight={adv_weight}")
        self.eps, self.adv_weight = float(eps), float(adv_weight)
        self.adv_type, self.adv_impl = adv_type, adv_impl
        self.noise_seed = keras.random.SeedGenerator(self.seed)
        self.adv_tracker = keras.metrics.Mean(name="adv_loss")

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "adv_weight": self.adv_weight,
                "adv_type": self.adv_type, "adv_impl": self.adv_impl}

    @property
    def metrics(self):
        return super().metrics + [self.adv_tracker]

    # ------------------------------------------------------------------ the adversary

    def visual_gradient(self, p, batch, x):
        """d BPR / d (c_i E) per distinct batch item (n x K), summed over the item's occurrences.

        Under a multi-replica strategy the sum runs over every replica's occurrences of the item.
        A constant: no gradient flows through it (the original normalises a gradient it holds fixed).
        """
        sp = tf.sigmoid(-x)[:, None] * p  # d softplus(-x) / dx = -sigmoid(-x); dx / dv_i = p = -dx / dv_j
        rows = tf.concat([-sp, sp], axis=0)  # positives, then negatives
        grad = tf.math.unsorted_segment_sum(rows, batch.index, tf.shape(batch.unique)[0])
        grad = tf.stop_gradient(grad)
        ctx = replica_context()
        if ctx is not None:
            grad = _sum_over_replicas(ctx, grad, batch.unique, self.num_items)
        return grad

    def perturbation_effect(self, p, batch, x):
        """``Delta_i E`` for each distinct batch item (n x K), with ``Delta`` held constant.

        ``adv_type="grad"``: ``eps G (E0^T E) / sqrt(G E0^T E0 G^T)`` with ``E0 = stop_gradient(E)``
        -- no F-dimensional tensor is formed; ``"random"``: ``Delta`` is drawn in feature space.
        Training uses the same formula through :meth:`_projected_adversarial_bpr`.
        """
        if self.adv_type == "random":
            noise = keras.random.normal((tf.shape(batch.unique)[0], self.feature_dim), seed=self.noise_seed)
            delta = tf.stop_gradient(self.eps * tf.nn.l2_normalize(noise, axis=1, epsilon=_NORM_FLOOR))
            return project(delta, self.E)
        grad = self.visual_gradient(p, batch, x)
        # Gram matrix with the left factor held constant: d(Delta E)/dE must see Delta as fixed.
        e = tf.convert_to_tensor(self.E)
        effect, _ = _scaled_direction(grad, tf.matmul(tf.stop_gradient(e), e, transpose_a=True), self.eps)
        return effect

    def dense_perturbed_visual(self, p, batch, x):
        """``(c_i + Delta_i) E`` per distinct batch item, by the original's graph (``adv_impl="dense"``).

        The gradient w.r.t. the whole items x F feature matrix (what ``tf.gradients`` of a gather
        gives once densified), normalised row-wise and added to all features; kept as the reference
        the tests and benchmarks compare the projected adversary against.
        """
        grad = self.visual_gradient(p, batch, x)
        feature_grad = tf.IndexedSlices(
            tf.matmul(grad, tf.stop_gradient(self.E), transpose_b=True),
            batch.unique,
            tf.shape(self.features, out_type=batch.unique.dtype),
        )
        delta = self.eps * tf.nn.l2_normalize(tf.convert_to_tensor(feature_grad), axis=1, epsilon=_NORM_FLOOR)
        return tf.matmul(tf.gather(self.features + tf.stop_gradient(delta), batch.unique), self.E)

    def adversarial_bpr(self, p, batch, x):
        if self.adv_weight == 0.0:  # plain VBPR: no adversary computed
            return None
        if self.adv_type == "grad" and self.adv_impl == "projected":
            return self._projected_adversarial_bpr(p, batch, x)
        b = tf.shape(p)[0]
        if self.adv_type == "grad":
            # The original's second forward pass, on the perturbed features.
            adv_visual = self.dense_perturbed_visual(p, batch, x)
            v_adv = batch.q_rows + tf.gather(adv_visual, batch.index)
            x_adv = tf.reduce_sum(p * (v_adv[:b] - v_adv[b:]), axis=-1)
        else:
            # s_adv = p . (q + (c + Delta) E) = s + p . Delta E: reuse the clean scores.
            effect = self.perturbation_effect(p, batch, x)
            x_adv = x + tf.reduce_sum(p * _pair_difference(effect, batch.index, b), axis=-1)
        return tf.reduce_sum(tf.nn.softplus(-x_adv))

    def _projected_adversarial_bpr(self, p, batch, x):
        """``sum softplus(-(x + p . (Delta_i E - Delta_j E)))`` with a hand-written gradient.

        The same value and gradients as autodiff through :meth:`perturbation_effect` (a test holds
        them to round-off), with the backward pass written out: 21 fewer ops per step, which on a
        CPU cost about as much as their arithmetic. Inside, the Gram matrix is only a value
        (``E0^T E0``); the gradient below is the one of ``stop_gradient(E)^T E``, as the original's:
        with ``W`` the loss gradient w.r.t. each item's ``Delta_i E`` and ``Delta = S G E0^T`` held
        constant (``S`` the per-item scale), ``dE = Delta^T W = E0 (S G)^T W`` -- two products with a
        K x K side, no F-dimensional tensor.
        """
        b = tf.shape(p)[0]
        num_unique = tf.shape(batch.unique)[0]
        index, eps = batch.index, self.eps
        grad = self.visual_gradient(p, batch, x)

        @tf.custom_gradient
        def adversarial_bpr(x, p, e):
            effect, scale = _scaled_direction(grad, tf.matmul(e, e, transpose_a=True), eps)
            shift = _pair_difference(effect, index, b)
            x_adv = x + tf.reduce_sum(p * shift, axis=-1)

            def backward(upstream):
                dx = -upstream * tf.sigmoid(-x_adv)  # d softplus(-x_adv) / d x_adv
                rows = dx[:, None] * p  # d x_adv / d (Delta_i E) = p = -d x_adv / d (Delta_j E)
                w = tf.math.unsorted_segment_sum(tf.concat([rows, -rows], axis=0), index, num_unique)
                gram_grad = tf.matmul(grad * scale, w, transpose_a=True)  # (S G)^T W, K x K
                return dx, dx[:, None] * shift, tf.matmul(e, gram_grad)

            return tf.reduce_sum(tf.nn.softplus(-x_adv)), backward

        return adversarial_bpr(x, p, tf.convert_to_tensor(self.E))


def _scaled_direction(grad, gram, eps):
    """``(eps G gram / ||G E0^T||, scale)``: the projected perturbation of each item and its scale.

    ``gram``'s value is ``E0^T E0``, so ``||G_i E0^T||^2 = G_i gram G_i^T``; the scale is a constant
    (the original normalises a gradient it holds fixed).
    """
    direction = tf.matmul(grad, gram)
    sq_norm = tf.reduce_sum(tf.stop_gradient(direction) * grad, axis=1, keepdims=True)
    scale = eps * tf.math.rsqrt(tf.maximum(sq_norm, _NORM_FLOOR))
    return direction * scale, scale


def _pair_difference(item_rows, index, b):
    """``item_rows[pos] - item_rows[neg]`` for each triplet (rows are per distinct batch item)."""
    return tf.gather(item_rows, index[:b]) - tf.gather(item_rows, index[b:])


def _sum_over_replicas(ctx, values, ids, num_rows):
    """Rows ``values`` (one per id in ``ids``, distinct) summed with the other replicas' rows of the same ids.

    The replicas' ``(ids, values)`` are all-gathered (an all-reduce of ``IndexedSlices``), rows
    sharing an id are summed, and each replica reads back the sums for its own ids.
    """
    dense_shape = tf.stack([tf.cast(num_rows, tf.int64), tf.cast(tf.shape(values)[1], tf.int64)])
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.IndexedSlices(values, ids, dense_shape))
    if not isinstance(total, tf.IndexedSlices):  # a strategy that densifies sparse all-reduces
        return tf.gather(total, ids)
    all_ids, position = tf.unique(tf.cast(total.indices, ids.dtype))
    sums = tf.math.unsorted_segment_sum(total.values, position, tf.shape(all_ids)[0])
    order = tf.argsort(all_ids)
    where = tf.gather(order, tf.searchsorted(tf.gather(all_ids, order), ids))
    return tf.gather(sums, where)
