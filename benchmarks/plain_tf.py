"""Baselines written without Keras: plain-TF VBPR, the original AMR graph, the original's evaluation loop.

``PlainVBPR`` is the "plain TF" yardstick for the framework's overhead: the same forward pass
and loss as :class:`amr_tf.models.VBPR` (visual part once per distinct batch item), the
gradients from one ``GradientTape`` and three TF1-style Adagrad updates done with raw ops
(``ResourceSparseApplyAdagrad`` on the summed duplicate rows of ``P`` and ``Q``, as TF1's
``AdagradOptimizer`` did; ``ResourceApplyAdagrad`` on ``E``), in one ``tf.function`` called
from a Python loop over the epoch's batches -- the shape of the original release's
``sess.run`` loop, without ``keras.Model.fit``. ``projection_gradient=True`` uses amr_tf's
arrangement of the ``E`` gradient (:func:`amr_tf.models.vbpr.project`), so that the remaining
difference to amr_tf is the framework alone.

``OriginalAMR`` is the original release's AMR graph written straightforwardly in plain TF: every
batch row looks up its item's feature row (no de-duplication), the adversary is the gradient of
the clean BPR loss with respect to the whole items x F feature matrix (``tf.gradients`` of a
lookup, densified), row-normalised, added to all features, and the adversarial scores are a
second forward pass on the perturbed features.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amr_tf.models.losses import BPRLoss
from amr_tf.models.vbpr import project

bpr = BPRLoss()


def _sparse_adagrad(var, accum, lr, grad):
    """TF1 ``AdagradOptimizer._resource_apply_sparse_duplicate_indices``: sum repeated rows, apply."""
    if isinstance(grad, tf.IndexedSlices):
        unique, pos = tf.unique(grad.indices)
        values = tf.math.unsorted_segment_sum(grad.values, pos, tf.shape(unique)[0])
        return tf.raw_ops.ResourceSparseApplyAdagrad(var=var.handle, accum=accum.handle, lr=lr, grad=values,
                                                     indices=unique)
    return tf.raw_ops.ResourceApplyAdagrad(var=var.handle, accum=accum.handle, lr=lr, grad=grad)


class PlainVBPR:
    """VBPR in plain TensorFlow (variables, tape, raw Adagrad ops); initialised from a Keras model's weights."""

    def __init__(self, P, Q, E, features, regs=(0.1, 1e-3, 0.0), learning_rates=(0.01, 1e-4, 1e-3),
                 initial_accumulator=0.1, jit_compile=False, projection_gradient=False):
        self.P, self.Q, self.E = (tf.Variable(np.asarray(w, np.float32)) for w in (P, Q, E))
        self.accums = [tf.Variable(tf.fill(tf.shape(v), initial_accumulator)) for v in (self.P, self.Q, self.E)]
        self.features = tf.constant(features, tf.float32)
        self.regs = tuple(float(r) for r in regs)
        self.lrs = [tf.constant(lr, tf.float32) for lr in learning_rates]
        self.projection_gradient = projection_gradient
        self.step = tf.function(self._step, jit_compile=jit_compile, reduce_retracing=True)

    def _penalty(self, p, v):
        r1, r2, r3 = self.regs
        return r1 * tf.reduce_sum(tf.square(p)) + r2 * tf.reduce_sum(tf.square(v)) + r3 * tf.reduce_sum(tf.square(self.E))

    def _loss(self, u, i, j):
        b = tf.shape(u)[0]
        p = tf.gather(self.P, u)
        items = tf.concat([i, j], axis=0)
        unique, index = tf.unique(items)
        rows = tf.gather(self.features, unique)
        visual = project(rows, self.E) if self.projection_gradient else tf.matmul(rows, self.E)
        v = tf.gather(self.Q, items) + tf.gather(visual, index)
        x = tf.reduce_sum(p * (v[:b] - v[b:]), axis=-1)
        return bpr(x) + self._penalty(p, v)

    def _step(self, u, i, j):
        variables = (self.P, self.Q, self.E)
        with tf.GradientTape() as tape:
            loss = self._loss(u, i, j)
        grads = tape.gradient(loss, variables)
        for var, acc, lr, g in zip(variables, self.accums, self.lrs, grads):
            _sparse_adagrad(var, acc, lr, g)
        return loss

    def train_epoch(self, users, pos, neg, batch_size):
        """One pass over the given triplets, one ``tf.function`` call per batch (as ``sess.run``)."""
        loss = None
        for s in range(0, len(users), batch_size):
            loss = self.step(users[s:s + batch_size], pos[s:s + batch_size], neg[s:s + batch_size])
        return float(loss)


class OriginalAMR(PlainVBPR):
    """The original release's AMR graph, straightforwardly, in plain TF (see the module docstring)."""

    def __init__(self, P, Q, E, features, eps=0.1, adv_weight=1.0, **kwargs):
        super().__init__(P, Q, E, features, **kwargs)
        self.eps, self.adv_weight = float(eps), float(adv_weight)

    def _rows(self, features, u, i, j):
        """Per-row scores difference and item vectors (the original looks up every row's feature)."""
        p = tf.gather(self.P, u)
        v_i = tf.gather(self.Q, i) + tf.matmul(tf.gather(features, i), self.E)
        v_j = tf.gather(self.Q, j) + tf.matmul(tf.gather(features, j), self.E)
        return p, v_i, v_j, tf.reduce_sum(p * (v_i - v_j), axis=-1)

    def _loss(self, u, i, j):
        with tf.GradientTape() as inner:
            inner.watch(self.features)
            p, v_i, v_j, x = self._rows(self.features, u, i, j)
            clean = bpr(x)
        # d BPR / d features: IndexedSlices of the looked-up rows, densified to items x F.
        grad = tf.convert_to_tensor(inner.gradient(clean, self.features))
        delta = tf.stop_gradient(self.eps * tf.nn.l2_normalize(grad, axis=1, epsilon=1e-12))
        _, _, _, x_adv = self._rows(self.features + delta, u, i, j)
        adv = bpr(x_adv)
        return clean + self.adv_weight * adv + self._penalty(p, tf.concat([v_i, v_j], axis=0))


class PerUserEvaluator:
    """The original release's evaluation loop: one model call per user on its candidate list.

    The original ran ``sess.run`` once per user on ``(user, [test item] + negatives)`` and ranked
    the scores in NumPy; here each call is one traced ``tf.function`` around ``model((users, items))``
    (which computes the candidates' vectors ``q_i + c_i E`` for that user alone, as the original did).
    """

    def __init__(self, model, dataset):
        self.model, self.dataset = model, dataset
        self._score = tf.function(lambda u, items: model((u, items)), reduce_retracing=True)

    def rank(self, user: int) -> int:
        row = self.dataset.test_candidates[user]
        scores = self._score(np.full(len(row), user, np.int32), row.astype(np.int32)).numpy()
        return int(np.sum(scores[1:] >= scores[0]))

    def ranks(self, users) -> np.ndarray:
        return np.array([self.rank(int(u)) for u in users], dtype=np.int64)
