"""The tape-derived adversary on models whose scores the projected shortcut does not cover.

Each toy model below changes only the scoring (no gradient is written anywhere), and AMR's
training must follow: its ``Delta`` is checked against a float64 NumPy central-difference
gradient of the same scores, and a few training steps must run and move every weight.
"""

import numpy as np
import pytest
import tensorflow as tf

from amr_tf.models import AMR, BPRLoss
from amr_tf.models.base import pair_margins
from amr_tf.models.variables import variable_rows
from tests.test_models import random_problem


class VisualBiasAMR(AMR):
    """VBPR plus a visual bias ``beta . c_i`` (He & McAuley's VBPR has one): ``s_ui = p_u . v_i + beta . c_i``."""

    parameter_names = ("P", "Q", "E", "beta")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        init = tf.keras.initializers.RandomNormal(stddev=0.3, seed=5)
        self.beta = self.add_weight(shape=(self.feature_dim,), initializer=init, name="beta")

    def batch_forward(self, p, batch, feature_rows=None):
        rows = variable_rows(self.features, batch.unique) if feature_rows is None else feature_rows
        v = self.batch_item_vectors(batch, rows)
        bias = tf.gather(tf.linalg.matvec(rows, self.beta), batch.index)
        b = tf.shape(p)[0]
        return pair_margins(p, v) + bias[:b] - bias[b:], v


class TanhVisualAMR(AMR):
    """A non-linear feature network: ``v_i = q_i + tanh(c_i E)``."""

    def batch_visual(self, batch, feature_rows=None):
        return tf.tanh(super().batch_visual(batch, feature_rows))


class RedeclaredAMR(AMR):
    """Overrides the scoring (identically) and declares it linear again: keeps the fast path."""

    visual_projection_is_linear = True

    def batch_item_vectors(self, batch, feature_rows=None):
        return super().batch_item_vectors(batch, feature_rows)


def numpy_margins(kind, P, Q, E, beta, C, u, i, j):
    visual = np.tanh(C @ E) if kind == "tanh" else C @ E
    v = Q + visual
    x = np.sum(P[u] * (v[i] - v[j]), axis=1)
    if kind == "bias":
        x = x + C[i] @ beta - C[j] @ beta
    return x


def numpy_delta(kind, loss, P, Q, E, beta, C, u, i, j, eps, h=1e-6):
    """``eps * g / ||g||`` per distinct batch item, ``g`` by central differences in float64."""
    P, Q, E, beta, C = (np.asarray(a, np.float64) for a in (P, Q, E, beta, C))
    items = np.unique(np.concatenate([i, j]))
    grad = np.zeros((len(items), C.shape[1]))
    for r, item in enumerate(items):
        for f in range(C.shape[1]):
            up, down = C.copy(), C.copy()
            up[item, f] += h
            down[item, f] -= h
            grad[r, f] = (loss(numpy_margins(kind, P, Q, E, beta, up, u, i, j))
                          - loss(numpy_margins(kind, P, Q, E, beta, down, u, i, j))) / (2 * h)
    return items, eps * grad / np.sqrt(np.maximum(np.sum(grad ** 2, axis=1, keepdims=True), 1e-12))


def softplus_sum(x):
    return np.logaddexp(0.0, -x).sum()


def build(cls, C, P, Q, E, **kw):
    lrs = (0.05,) * len(cls.parameter_names)
    model = cls(P.shape[0], Q.shape[0], C, embed_dim=P.shape[1], regs=(0.01, 0.01, 0.01), learning_rates=lrs,
                eps=0.3, adv_weight=1.0, **kw)
    model.compile()
    for name, value in (("P", P), ("Q", Q), ("E", E)):
        getattr(model, name).assign(value)
    return model


@pytest.mark.parametrize("cls,kind", [(VisualBiasAMR, "bias"), (TanhVisualAMR, "tanh")])
def test_toy_model_trains_against_its_own_adversary(rng, cls, kind):
    C, P, Q, E, u, i, j = random_problem(rng, feats=6)
    model = build(cls, C, P, Q, E)
    assert not model.uses_projected_adversary  # the scoring changed: the fast path does not apply
    beta = model.beta.numpy() if kind == "bias" else np.zeros(C.shape[1], np.float32)

    batch = model.batch_items(i, j)
    delta, (x, _, clean) = model.perturbation(tf.gather(model.P, u), batch)
    items, want = numpy_delta(kind, softplus_sum, P, Q, E, beta, C, u, i, j, 0.3)
    np.testing.assert_array_equal(np.sort(batch.unique.numpy()), items)
    order = np.argsort(batch.unique.numpy())
    np.testing.assert_allclose(delta.numpy()[order], want, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(x.numpy(), numpy_margins(kind, P, Q, E, beta, C, u, i, j), rtol=1e-5, atol=1e-6)

    # The adversarial term is the loss at C + Delta (a second forward pass) and hurts.
    terms = {k: float(v) for k, v in model.pairwise_losses(u, i, j).items()}
    Ca = np.asarray(C, np.float64).copy()
    Ca[items] += want
    np.testing.assert_allclose(terms["adv_loss"], softplus_sum(numpy_margins(kind, P, Q, E, beta, Ca, u, i, j)),
                               rtol=1e-4)
    assert terms["adv_loss"] > terms["bpr_loss"] == pytest.approx(float(clean))

    before = [w.numpy().copy() for w in model.parameter_groups()]
    for _ in range(3):
        logs = model.train_on_batch((u, i, j), return_dict=True)
    assert np.isfinite(logs["loss"]) and "adv_loss" in logs
    for name, w0, w in zip(model.parameter_names, before, model.parameter_groups()):
        assert np.abs(w.numpy() - w0).max() > 1e-4, name  # every weight (beta too) is trained


def test_fast_path_follows_the_declaration(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    assert build(AMR, C, P, Q, E).uses_projected_adversary
    assert not build(TanhVisualAMR, C, P, Q, E).uses_projected_adversary
    assert not build(AMR, C, P, Q, E, adversary="tape").uses_projected_adversary
    redeclared = build(RedeclaredAMR, C, P, Q, E)
    assert redeclared.uses_projected_adversary
    np.testing.assert_allclose(float(redeclared.pairwise_losses(u, i, j)["loss"]),
                               float(build(AMR, C, P, Q, E, adversary="tape").pairwise_losses(u, i, j)["loss"]),
                               rtol=1e-6)


class ScaledLogistic:
    """Another pairwise loss: ``sum softplus(-2 x)`` (BPR on doubled margins)."""

    def __call__(self, x):
        return tf.reduce_sum(tf.nn.softplus(-2.0 * x))


@pytest.mark.parametrize("adversary", ["auto", "tape"])
def test_another_loss_is_a_constructor_argument(rng, adversary):
    C, P, Q, E, u, i, j = random_problem(rng, feats=6)
    model = build(AMR, C, P, Q, E, loss=ScaledLogistic(), adversary=adversary)
    batch = model.batch_items(i, j)
    p = tf.gather(model.P, u)
    if adversary == "auto":
        assert model.uses_projected_adversary
        effect = model.perturbation_effect(p, batch)[0].numpy()
    else:
        effect = (model.perturbation(p, batch)[0] @ model.E).numpy()
    items, want = numpy_delta("linear", lambda x: np.logaddexp(0.0, -2 * x).sum(), P, Q, E, None, C, u, i, j, 0.3)
    order = np.argsort(batch.unique.numpy())
    np.testing.assert_allclose(effect[order], want @ E, rtol=2e-4, atol=2e-6)
    x = numpy_margins("linear", P, Q, E, None, C, u, i, j)
    np.testing.assert_allclose(float(model.pairwise_losses(u, i, j)["bpr_loss"]), np.logaddexp(0, -2 * x).sum(),
                               rtol=1e-5)
    # BPR's own result differs: the loss really is the one given.
    assert abs(float(model.pairwise_losses(u, i, j)["bpr_loss"]) - softplus_sum(x)) > 1e-3


def test_bpr_loss_is_the_batch_sum_of_softplus():
    x = np.array([-3.0, 0.0, 0.5, 40.0], np.float32)
    np.testing.assert_allclose(float(BPRLoss()(tf.constant(x))), np.logaddexp(0.0, -x.astype(np.float64)).sum(),
                               rtol=1e-6)
