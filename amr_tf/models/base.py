"""The pairwise (BPR) training loop shared by MF-BPR, VBPR and AMR.

Subclasses say how a batch's item vectors are formed and may add an adversarial term; the
loss, the three-optimiser update and the metrics live here once. The split follows
``tensorflow_recommenders``: ``pairwise_losses`` computes, ``train_step`` applies.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from amr_tf import compat
from amr_tf.errors import AmrError
from amr_tf.evaluation import DEFAULT_KS, candidate_ranks
from amr_tf.metrics import ranking_metrics
from amr_tf.models.adversary import replica_context
from amr_tf.models.losses import BPRLoss, get_loss
from amr_tf.models.optimizers import Adagrad
from amr_tf.models.serving import ServingMixin
from amr_tf.models.variables import variable_rows


def pair_margins(p, v):
    """``s_ui - s_uj = p_u . (v_i - v_j)`` per triplet, from the users' rows (B x K) and positives-then-negatives (2B x K)."""
    b = tf.shape(p)[0]
    return tf.reduce_sum(p * (v[:b] - v[b:]), axis=-1)


def _as_pair(values, n, name):
    values = tuple(float(v) for v in values)
    if len(values) != n:
        raise AmrError(f"{name} needs {n} values, got {len(values)}: {values}")
    return values


# Methods that define a model's training scores: the declaration ``visual_projection_is_linear``
# holds for the ones it was made with (:class:`PairwiseModel`).
SCORING_METHODS = ("batch_forward", "batch_item_vectors", "batch_visual", "item_rows_from_visual")


class ItemBatch:
    """The items of one batch: positives then negatives, their unique ids and ID embeddings."""

    def __init__(self, q_rows, unique, index):
        self.q_rows = q_rows  # (2B, K): Q rows of positives then negatives
        self.unique = unique  # (n,): the distinct item ids of the batch
        self.index = index  # (2B,): position of each row's item in ``unique``


class PairwiseModel(ServingMixin, keras.Model):
    """Base of the BPR models: user embeddings ``P``, item embeddings ``Q``, Adagrad per matrix.

    Scores are ``p_u . v_i``; subclasses define ``v_i``. The loss on a batch of triplets is
    ``loss(s_ui - s_uj)`` (``loss=``, a pairwise loss of :mod:`amr_tf.models.losses`; by default
    the original release's BPR sum ``sum softplus(-(s_ui - s_uj))``) plus
    ``r1 sum ||p_u||^2 + r2 sum (||v_i||^2 + ||v_j||^2) + r3 extra`` (sums over batch rows).

    Beside training (``train_step``), the model is a complete Keras citizen: ``evaluate`` /
    ``fit(validation_data=...)`` on ``(users, candidates)`` report HR@K and NDCG@K
    (:meth:`test_step`), ``save("m.keras")`` / ``keras.models.load_model`` round-trip it with its
    features, optimisers and seen items, and ``recommend`` / ``export`` serve it
    (:class:`amr_tf.models.serving.ServingMixin`).
    """

    #: Whether the training scores are linear in each item's feature row ``c_i`` through ``c_i E``, so
    #: that AMR's adversary may take its projected fast path (:mod:`amr_tf.models.amr`). A class
    #: declares it for the scoring it defines (VBPR does); a subclass that changes one of
    #: :data:`SCORING_METHODS` without declaring it again is not assumed linear (``__init_subclass__``).
    visual_projection_is_linear = False
    _linear_scoring = ()  # the scoring methods the declaration was made for

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        scoring = tuple(getattr(cls, name, None) for name in SCORING_METHODS)
        if "visual_projection_is_linear" in vars(cls):
            cls._linear_scoring = scoring
        elif cls.visual_projection_is_linear and scoring != cls._linear_scoring:
            cls.visual_projection_is_linear = False  # a changed score never inherits the shortcut

    # Names of the weight matrices, one Adagrad optimiser (and learning rate) each.
    parameter_names: tuple[str, ...] = ("P", "Q")

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embed_dim: int = 64,
        regs=(0.0, 0.0, 0.0),
        learning_rates=None,
        init_stddev: float = 0.01,
        seed: int | None = None,
        seen_items=None,
        eval_ks=DEFAULT_KS,
        loss=None,
        **kwargs,
    ):
        """Create ``P`` (users x K) and ``Q`` (items x K), initialised as the original.

        Args:
            num_users: number of users (rows of ``P``).
            num_items: number of items (rows of ``Q``).
            embed_dim: K, the embedding size.
            regs: ``(r1, r2, r3)``, the penalties on user vectors, item vectors and the extra term.
            learning_rates: one Adagrad learning rate per matrix (``parameter_names``).
            init_stddev: standard deviation of the truncated-normal initialisation.
            seed: seeds the initialisation (``None``: random).
            seen_items: each user's training items, excluded by :meth:`recommend`: a SciPy sparse
                users x items matrix, an ``AmrDataset`` (its ``train_matrix``) or ``None``
                (set later with :meth:`set_seen_items`).
            eval_ks: the cut-offs K of the HR@K and NDCG@K metrics of :meth:`test_step`.
            loss: the pairwise loss on score margins (:mod:`amr_tf.models.losses`; ``None``: the
                original's BPR sum).
            **kwargs: passed to ``keras.Model`` (e.g. ``name``).
        """
        super().__init__(**kwargs)
        self.pairwise_loss = get_loss(loss)
        for arg, value in (("num_users", num_users), ("num_items", num_items), ("embed_dim", embed_dim)):
            if int(value) <= 0:
                raise AmrError(f"{arg} must be a positive integer, got {value}")
        self.num_users, self.num_items, self.embed_dim = int(num_users), int(num_items), int(embed_dim)
        self.regs = _as_pair(regs, 3, "regs")
        n_params = len(self.parameter_names)
        if learning_rates is None:
            learning_rates = (0.01, 1e-4, 1e-3)[:n_params]
        self.learning_rates = _as_pair(learning_rates, n_params, "learning_rates")
        if any(lr <= 0 for lr in self.learning_rates):
            raise AmrError(f"learning rates must be positive, got {self.learning_rates}")
        self.init_stddev = float(init_stddev)
        self.seed = seed
        # The original initialises every matrix with a truncated normal of stddev 0.01.
        init = keras.initializers.TruncatedNormal(stddev=init_stddev, seed=seed)
        self.P = self.add_weight(shape=(self.num_users, embed_dim), initializer=init, name="P")
        init = keras.initializers.TruncatedNormal(stddev=init_stddev, seed=None if seed is None else seed + 1)
        self.Q = self.add_weight(shape=(self.num_items, embed_dim), initializer=init, name="Q")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bpr_tracker = keras.metrics.Mean(name="bpr_loss")
        self.eval_ks = tuple(int(k) for k in eval_ks)
        self.eval_metrics = ranking_metrics(self.eval_ks)
        self.optimizers_by_param: list = []
        self.set_seen_items(seen_items)
        # Every weight's shape is known from the constructor: no deferred build.
        self.built = True

    # ------------------------------------------------------------------ configuration

    def get_config(self):
        """The constructor's arguments (JSON); the arrays (features, seen items) travel as ``.keras`` assets."""
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "embed_dim": self.embed_dim,
            "regs": list(self.regs),
            "learning_rates": list(self.learning_rates),
            "init_stddev": self.init_stddev,
            "seed": self.seed,
            "eval_ks": list(self.eval_ks),
            "name": self.name,
            **({} if self.pairwise_loss == BPRLoss() else
               {"loss": keras.saving.serialize_keras_object(self.pairwise_loss)}),
        }

    def parameter_groups(self) -> list:
        return [getattr(self, name) for name in self.parameter_names]

    def compile(self, optimizer=None, **kwargs):
        """Create one Adagrad (initial accumulator 0.1) per weight matrix, as the original.

        Args:
            optimizer: ``None`` (the default Adagrads at ``learning_rates``) or a list with one
                optimiser per matrix of ``parameter_names``.
            **kwargs: passed to ``keras.Model.compile`` (e.g. ``steps_per_execution``).
        """
        if optimizer is None:
            optimizer = [Adagrad(learning_rate=lr) for lr in self.learning_rates]
        if not isinstance(optimizer, (list, tuple)):
            raise AmrError("compile(optimizer=...) expects a list with one optimiser per weight matrix")
        if len(optimizer) != len(self.parameter_names):
            raise AmrError(f"need {len(self.parameter_names)} optimisers ({self.parameter_names}), got {len(optimizer)}")
        self.optimizers_by_param = list(optimizer)
        for opt, var in zip(self.optimizers_by_param, self.parameter_groups()):
            opt.build([var])
        # Keras' own bookkeeping (iterations, callbacks) uses the first one.
        super().compile(optimizer=self.optimizers_by_param[0], **kwargs)

    def get_compile_config(self):
        """All the per-matrix optimisers (Keras' default would record only the first)."""
        if not self.optimizers_by_param:
            return {}
        return {"optimizers": [keras.saving.serialize_keras_object(o) for o in self.optimizers_by_param]}

    def compile_from_config(self, config):
        """Recreate the per-matrix optimisers on ``keras.models.load_model``; their state is loaded next."""
        optimizers = [keras.saving.deserialize_keras_object(c) for c in config.get("optimizers", [])]
        self.compile(optimizer=optimizers or None)

    # ------------------------------------------------------------------ scoring

    def user_vectors(self):
        return tf.convert_to_tensor(self.P)

    def item_vectors(self, features=None):
        """All items' vectors ``v_i`` (items x K); ``features`` overrides the item features if used."""
        return tf.convert_to_tensor(self.Q)

    def call(self, inputs):
        """Scores of ``(users, items)``: ``items`` (B,) gives (B,) scores, (B, n) candidates give (B, n)."""
        users, items = inputs
        users = tf.convert_to_tensor(users)
        items = tf.convert_to_tensor(items)
        p = variable_rows(self.P, users)  # only the batch's rows, not a copy of P per call
        v = self.gather_item_vectors(items)
        if len(v.shape) == 3:
            return tf.einsum("bk,bnk->bn", p, v)
        return tf.reduce_sum(p * v, axis=-1)

    def gather_item_vectors(self, items):
        """``v_i`` of the given item ids (any shape), computed for those items only."""
        return tf.gather(self.item_vectors(), items)

    # ------------------------------------------------------------------ training

    def batch_items(self, pos, neg) -> ItemBatch:
        items = tf.concat([pos, neg], axis=0)
        unique, index = tf.unique(items)
        return ItemBatch(self.batch_id_rows(items), unique, index)

    def batch_id_rows(self, items):
        """The ID embeddings ``q_i`` of the batch rows (2B x K): ``ItemBatch.q_rows``."""
        return variable_rows(self.Q, items)

    def batch_item_vectors(self, batch: ItemBatch, feature_rows=None):
        """Clean item vectors of the batch rows (2B x K); ``feature_rows`` (one per distinct item) if features are used."""
        return batch.q_rows

    def batch_forward(self, p, batch: ItemBatch, feature_rows=None):
        """``(margins, item_rows)``: ``s_ui - s_uj`` per triplet (B,) and the item vectors the penalty sees (2B x K).

        The one scoring function of training: the clean pass, the adversary's gradient and its
        second pass all call it. ``feature_rows`` are the distinct batch items' feature rows
        (``batch.unique`` order), or ``None`` for the model's own; models without features ignore them.
        """
        v = self.batch_item_vectors(batch, feature_rows)
        return pair_margins(p, v), v

    def forward_terms(self, p, batch: ItemBatch):
        """``(item_rows, clean loss, adversarial loss or None)`` of one batch.

        Models with an adversary (:class:`~amr_tf.models.AMR`) override this: the clean pass is
        computed once and also gives the adversary its gradient.
        """
        margins, v = self.batch_forward(p, batch)
        return v, self.pairwise_loss(margins), None

    def extra_penalty(self):
        return tf.constant(0.0)

    def pairwise_losses(self, users, pos, neg):
        """All loss terms of one batch of triplets: ``loss`` (the objective), ``bpr_loss``, ``adv_loss``.

        ``bpr_loss`` is the clean pairwise loss (BPR unless the model was given another ``loss=``;
        the name is kept for the logs), ``adv_loss`` the same loss under the adversary.
        """
        users = tf.convert_to_tensor(users)
        p = variable_rows(self.P, users)
        batch = self.batch_items(pos, neg)
        v, clean, adv = self.forward_terms(p, batch)
        r1, r2, r3 = self.regs
        # Penalties on the batch rows (repeats count each time), on the whole clean item vector.
        penalty = r1 * tf.reduce_sum(tf.square(p)) + r2 * tf.reduce_sum(tf.square(v))
        if r3:
            # A penalty on a whole matrix belongs to the global batch: each of R replicas adds 1/R.
            ctx = replica_context()
            penalty += r3 * self.extra_penalty() / (1.0 if ctx is None else float(ctx.num_replicas_in_sync))
        terms = {"bpr_loss": clean}
        loss = clean + penalty
        if adv is not None:
            terms["adv_loss"] = adv
            loss = loss + self.adv_weight * adv
        terms["loss"] = loss
        return terms

    def train_step(self, data):
        """One step on a batch of triplets: gradients of the summed loss, one Adagrad per matrix.

        Under ``tf.distribute`` each replica holds part of the batch; its loss is the sum over its
        triplets, so the optimisers' all-reduce (a sum) yields the gradient of the whole batch --
        no loss scaling is needed. The logged losses are all-reduced too (the whole batch's sums).
        """
        # (users, positives, negatives) is the model's input "x"; there are no targets.
        (users, pos, neg), _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not self.optimizers_by_param:
            raise AmrError("call model.compile() before training")
        variables = self.parameter_groups()
        with tf.GradientTape() as tape:
            terms = self.pairwise_losses(users, pos, neg)
        grads = tape.gradient(terms["loss"], variables)
        for opt, grad, var in zip(self.optimizers_by_param, grads, variables):
            opt.apply_gradients([(grad, var)])
        ctx = replica_context()
        if ctx is not None:  # each replica tracks the whole batch's losses
            terms = ctx.all_reduce(tf.distribute.ReduceOp.SUM, terms)
        for tracker in self.metrics:
            if tracker.name in terms:  # AMR with adv_weight=0 computes no adversarial term
                tracker.update_state(terms[tracker.name])
        logs = {m.name: m.result() for m in self.metrics}
        return compat.multi_worker_logs(logs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 + MultiWorkerMirroredStrategy: see amr_tf.compat.maybe_symbolic_build.
        return compat.maybe_symbolic_build(self, super()._maybe_symbolic_build, iterator, data_batch)

    @property
    def metrics(self):
        return [self.loss_tracker, self.bpr_tracker]

    # ------------------------------------------------------------------ evaluation

    def test_step(self, data):
        """HR@K and NDCG@K on a batch of ``(users, candidates)``, the held-out positive in column 0.

        What ``model.evaluate(...)`` and ``fit(..., validation_data=...)`` run: the logs carry
        ``HR@k`` and ``NDCG@k`` for every ``k`` in ``eval_ks`` (``val_``-prefixed under ``fit``).
        Use :func:`amr_tf.metrics.candidate_dataset` to build the input.
        """
        (users, candidates), _, _ = keras.utils.unpack_x_y_sample_weight(data)
        ranks = candidate_ranks(self((users, candidates)))
        for metric in self.eval_metrics:
            metric.update_state(ranks)
        return {metric.name: metric.result() for metric in self.eval_metrics}

    def reset_metrics(self):
        """Reset the training trackers and the evaluation metrics (Keras calls this before each run)."""
        super().reset_metrics()
        for metric in self.eval_metrics:
            metric.reset_state()

    # ------------------------------------------------------------------ summary

    def weight_table(self) -> list[tuple[str, tuple, int, bool]]:
        """``(name, shape, count, trainable)`` of every matrix the model holds, for :meth:`summary`."""
        rows = [(name, tuple(getattr(self, name).shape), int(np.prod(getattr(self, name).shape)), True)
                for name in self.parameter_names]
        features = getattr(self, "features", None)
        if features is not None:
            rows.append(("features", tuple(features.shape), int(np.prod(features.shape)), False))
        return rows

    def summary(self, print_fn=None, **kwargs):
        """Print the model's matrices: ``P``, ``Q`` (and ``E``) trained, the item features constant.

        Keras' table lists sub-layers, and these models hold their matrices directly; this lists
        the matrices. Keyword arguments of ``keras.Model.summary`` other than ``print_fn`` are ignored.
        """
        print_fn = print_fn or print
        rows = self.weight_table()
        trainable = sum(n for *_, n, t in rows if t)
        fixed = sum(n for *_, n, t in rows if not t)
        lines = [f'Model: "{self.name}" ({type(self).__name__}, K = {self.embed_dim})',
                 f"{'matrix':<10}{'shape':<18}{'parameters':>14}  kind"]
        for name, shape, count, is_trained in rows:
            kind = "trainable (Adagrad)" if is_trained else "non-trainable (item features; not in .weights.h5)"
            lines.append(f"{name:<10}{str(shape):<18}{count:>14,}  {kind}")
        lines += [f"Total params: {trainable + fixed:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {fixed:,}"]
        print_fn("\n".join(lines))

    def weight_arrays(self) -> dict:
        """The weight matrices as NumPy arrays, by name (for export and tests)."""
        return {name: np.asarray(getattr(self, name).numpy()) for name in self.parameter_names}


@keras.saving.register_keras_serializable(package="amr_tf")
class MFBPR(PairwiseModel):
    """Matrix factorisation with BPR: VBPR without the visual term (``s_ui = p_u . q_i``)."""

    parameter_names = ("P", "Q")

    def __init__(self, num_users: int, num_items: int, embed_dim: int = 64, regs=(1e-3, 1e-3, 0.0),
                 learning_rates=(0.05, 0.05), init_stddev: float = 0.01, seed: int | None = None,
                 seen_items=None, **kwargs):
        """MF-BPR with ``P`` (users x K) and ``Q`` (items x K).

        Args:
            num_users, num_items, embed_dim: the matrices' shapes (K = ``embed_dim``).
            regs: ``(r1, r2, r3)`` penalties on user vectors, item vectors and (unused here) ``r3``.
            learning_rates: ``(lr_P, lr_Q)`` of the two Adagrad optimisers.
            init_stddev, seed: the truncated-normal initialisation.
            seen_items: the users' training items (see :class:`PairwiseModel`).
            **kwargs: ``loss``, ``eval_ks``, ``name`` and other ``keras.Model`` arguments.
        """
        super().__init__(num_users, num_items, embed_dim=embed_dim, regs=regs, learning_rates=learning_rates,
                         init_stddev=init_stddev, seed=seed, seen_items=seen_items, **kwargs)
