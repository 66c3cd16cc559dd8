"""The models against an independent NumPy reference, and the properties of the adversary."""

import numpy as np
import pytest
import tensorflow as tf

from amr_tf.models import AMR, MFBPR, VBPR
from tests import numpy_reference as ref

REGS = (0.1, 1e-3, 0.01)
LRS = (0.01, 1e-4, 1e-3)


def random_problem(rng, users=7, items=9, feats=11, k=5, batch=16):
    """A small problem whose batch repeats users and items, as positives and negatives."""
    C = rng.random((items, feats)).astype(np.float32)
    C /= np.abs(C).max()
    P, Q, E = (rng.normal(scale=0.3, size=s).astype(np.float32) for s in ((users, k), (items, k), (feats, k)))
    u = rng.integers(0, users, batch).astype(np.int32)
    i = rng.integers(0, items, batch).astype(np.int32)
    j = (i + 1 + rng.integers(0, items - 1, batch)).astype(np.int32) % items
    u[:3], i[:3], j[3] = 0, 2, 2  # repeated user; item 2 as a positive thrice and a negative once
    assert len(np.unique(u)) < batch and len(np.unique(np.concatenate([i, j]))) < 2 * batch
    return C, P, Q, E, u, i, j


def make(cls, C, P, Q, E, **kw):
    model = cls(P.shape[0], Q.shape[0], C, embed_dim=P.shape[1], regs=REGS, learning_rates=LRS, **kw)
    model.compile()
    model.P.assign(P)
    model.Q.assign(Q)
    model.E.assign(E)
    return model


@pytest.mark.parametrize(
    "cls,kw",
    [
        (VBPR, {}),
        (AMR, {"eps": 0.5, "adv_weight": 0.7}),
        (AMR, {"eps": 0.5, "adv_weight": 0.7, "adversary": "tape"}),
    ],
)
def test_one_step_matches_numpy_reference(rng, cls, kw):
    C, P, Q, E, u, i, j = random_problem(rng)
    model = make(cls, C, P, Q, E, **kw)
    eps, lmd = kw.get("eps", 0.0), kw.get("adv_weight", 0.0)
    (P1, Q1, E1), _, (total, bpr, adv) = ref.train_step(P, Q, E, C, u, i, j, REGS, LRS, eps, lmd)

    terms = {k: float(v) for k, v in model.pairwise_losses(u, i, j).items()}
    np.testing.assert_allclose(terms["loss"], total, rtol=1e-5)
    np.testing.assert_allclose(terms["bpr_loss"], bpr, rtol=1e-5)
    if lmd:
        np.testing.assert_allclose(terms["adv_loss"], adv, rtol=1e-5)
        assert adv > bpr  # the adversary hurts

    model.train_on_batch((u, i, j))
    for name, want in (("P", P1), ("Q", Q1), ("E", E1)):
        got = getattr(model, name).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # The step moved every matrix (so the comparison is not vacuous).
    for name, before in (("P", P), ("Q", Q), ("E", E)):
        assert np.abs(getattr(model, name).numpy() - before).max() > 1e-5


def test_several_steps_match_reference_with_accumulators(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    model = make(AMR, C, P, Q, E, eps=0.3, adv_weight=1.0)
    params, accums = (P, Q, E), None
    for step in range(3):
        perm = np.random.default_rng(step).permutation(len(u))
        params, accums, _ = ref.train_step(*params, C, u[perm], i[perm], j[perm], REGS, LRS, 0.3, 1.0, accums)
        model.train_on_batch((u[perm], i[perm], j[perm]))
    for name, want in zip("PQE", params):
        np.testing.assert_allclose(getattr(model, name).numpy(), want, rtol=2e-5, atol=1e-6, err_msg=name)


def test_amr_with_zero_weight_trains_exactly_like_vbpr(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    vbpr = make(VBPR, C, P, Q, E)
    amr = make(AMR, C, P, Q, E, eps=0.5, adv_weight=0.0)
    for step in range(4):
        perm = np.random.default_rng(step).permutation(len(u))
        vbpr.train_on_batch((u[perm], i[perm], j[perm]))
        amr.train_on_batch((u[perm], i[perm], j[perm]))
    for name in "PQE":
        np.testing.assert_array_equal(getattr(vbpr, name).numpy(), getattr(amr, name).numpy())


def test_projected_and_tape_adversary_are_equal(rng):
    """The fast path against the tape-derived reference: losses, Delta's effect, three training steps."""
    C, P, Q, E, u, i, j = random_problem(rng, feats=40)
    a = make(AMR, C, P, Q, E, eps=0.2)
    b = make(AMR, C, P, Q, E, eps=0.2, adversary="tape")
    assert a.uses_projected_adversary and not b.uses_projected_adversary
    for name, value in a.pairwise_losses(u, i, j).items():
        np.testing.assert_allclose(float(value), float(b.pairwise_losses(u, i, j)[name]), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(_perturbation(a, u, i, j)[1], _perturbation(b, u, i, j)[1], rtol=1e-5, atol=1e-7)
    for _ in range(3):
        a.train_on_batch((u, i, j))
        b.train_on_batch((u, i, j))
    for name in "PQE":
        np.testing.assert_allclose(getattr(a, name).numpy(), getattr(b, name).numpy(), rtol=1e-5, atol=1e-7)


def _perturbation(model, u, i, j):
    """``Delta_i E`` per distinct batch item, as the model applies it (tape reference or projected)."""
    p = tf.gather(model.P, u)
    batch = model.batch_items(i, j)
    if model.uses_projected_adversary:
        return batch, model.perturbation_effect(p, batch)[0].numpy()
    delta, _ = model.perturbation(p, batch)
    return batch, (delta @ model.E).numpy()


@pytest.mark.parametrize("adv_type,adversary", [("grad", "tape"), ("grad", "auto"), ("random", "auto"),
                                                ("random", "tape")])
def test_perturbation_has_norm_eps_per_item(rng, adv_type, adversary):
    C, P, Q, E, u, i, j = random_problem(rng)
    model = make(AMR, C, P, Q, E, eps=0.37, adv_type=adv_type, adversary=adversary)
    if adv_type == "grad":
        delta = ref.adversary(P, Q, E, C, u, i, j, 0.37)
        items = np.unique(np.concatenate([i, j]))
        np.testing.assert_allclose(np.linalg.norm(delta[items], axis=1), 0.37, rtol=1e-6)
        others = np.setdiff1d(np.arange(len(C)), items)
        assert np.all(delta[others] == 0)
    # The model's Delta E equals eps * unit(d) E for some d: check its norm through E's pseudo-inverse
    # would be ill-posed, so check instead against the reference Delta E (grad) / the norm bound (random).
    batch, dE = _perturbation(model, u, i, j)
    if adv_type == "grad":
        want = delta[batch.unique.numpy()] @ E
        np.testing.assert_allclose(dE, want, rtol=1e-4, atol=1e-6)
    else:
        smax = np.linalg.svd(E, compute_uv=False)[0]
        assert np.all(np.linalg.norm(dE, axis=1) <= 0.37 * smax * (1 + 1e-5))


def test_perturbation_increases_loss_to_first_order(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    clean = ref.losses(P, Q, E, C, u, i, j, (0, 0, 0))[1]
    # First order: L(C + Delta) - L(C) ~ <grad, Delta> = eps * sum of per-item gradient norms.
    gradient_norms = np.linalg.norm(ref.feature_gradient(P, Q, E, C, u, i, j), axis=1).sum()
    for eps in (1e-3, 1e-2):
        model = make(AMR, C, P, Q, E, eps=eps)
        adv = float(model.pairwise_losses(u, i, j)["adv_loss"])
        assert adv > clean
        np.testing.assert_allclose(adv - clean, eps * gradient_norms, rtol=0.05)


def test_no_gradient_flows_through_the_perturbation(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    model = make(AMR, C, P, Q, E, eps=0.4, adv_weight=1.0)
    with tf.GradientTape() as tape:
        loss = model.pairwise_losses(u, i, j)["loss"]
    got = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [model.P, model.Q, model.E])]
    # Reference gradients with Delta as a constant; letting it depend on E would change gE.
    want = ref.gradients(*(a.astype(np.float64) for a in (P, Q, E, C)), u, i, j, REGS, 0.4, 1.0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_mfbpr_is_vbpr_without_the_visual_term(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    mf = MFBPR(P.shape[0], Q.shape[0], embed_dim=P.shape[1], regs=REGS, learning_rates=LRS[:2])
    mf.compile()
    mf.P.assign(P)
    mf.Q.assign(Q)
    zero = np.zeros_like(C)
    (P1, Q1, _), _, (total, _, _) = ref.train_step(P, Q, E * 0, zero, u, i, j, (REGS[0], REGS[1], 0.0), LRS)
    np.testing.assert_allclose(float(mf.pairwise_losses(u, i, j)["loss"]), total, rtol=1e-5)
    mf.train_on_batch((u, i, j))
    np.testing.assert_allclose(mf.P.numpy(), P1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mf.Q.numpy(), Q1, rtol=1e-5, atol=1e-7)


def test_scores_call_matches_formula(rng):
    """``model((users, items))`` for one item per user and for several candidates per user."""
    C, P, Q, E, u, i, j = random_problem(rng)
    model = make(VBPR, C, P, Q, E)
    want = np.sum(P[u] * (Q[i] + C[i] @ E), axis=1)
    np.testing.assert_allclose(model((u, i)).numpy(), want, rtol=1e-5, atol=1e-6)
    cands = np.stack([i, j, (i + j) % len(C)], axis=1)
    want = np.einsum("bk,bnk->bn", P[u], Q[cands] + C[cands] @ E)
    np.testing.assert_allclose(model((u, cands)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_invalid_hyper_parameters_raise_project_error(rng):
    from amr_tf.errors import AmrError

    C, *_ = random_problem(rng)
    with pytest.raises(AmrError, match="adv_type"):
        AMR(3, C.shape[0], C, adv_type="pgd")
    with pytest.raises(AmrError, match="eps"):
        AMR(3, C.shape[0], C, eps=-1)
    with pytest.raises(AmrError, match="embed_dim"):
        VBPR(3, C.shape[0], C, embed_dim=0)
    with pytest.raises(AmrError, match="learning_rates"):
        VBPR(3, C.shape[0], C, learning_rates=(0.1, 0.1))


def test_features_are_stored_once_and_read_by_rows(tiny_dataset):
    model = AMR(tiny_dataset.num_users, tiny_dataset.num_items, tiny_dataset.features, embed_dim=4, seed=0)
    assert isinstance(model.features, tf.Variable) and not model.features.trainable
    assert all(w is not model.features for w in model.weights)  # not a Keras weight: never saved
    np.testing.assert_array_equal(model.features.numpy(), tiny_dataset.features)
    full = model.item_vectors().numpy()
    chunked = (model.Q + model.visual_vectors(chunk_bytes=4 * tiny_dataset.feature_dim * 7)).numpy()
    np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(full, model.Q.numpy() + tiny_dataset.features @ model.E.numpy(), rtol=1e-5, atol=1e-6)


def test_linearity_declaration_follows_the_scoring_through_inheritance():
    """``visual_projection_is_linear`` is a class's own declaration for the scoring it defines: kept by
    subclasses that score alike (AMR, the DUIF diamond), dropped by one that changes a scoring
    method, directly or through a mixin placed before the model, and re-declarable either way."""
    from amr_tf.models.duif import DUIF, AdversarialDUIF

    class Mixin:  # not a model: changes the score of whatever it is mixed into
        def batch_visual(self, batch, feature_rows=None):
            return 2.0 * super().batch_visual(batch, feature_rows)

    class Mixed(Mixin, AMR):
        pass

    class Changed(AMR):
        def item_rows_from_visual(self, batch, visual):
            return super().item_rows_from_visual(batch, visual)

    class Redeclared(Changed):
        visual_projection_is_linear = True

    class BelowRedeclared(Redeclared):  # scores as the class that declared it
        pass

    class DeclaredNot(AMR):
        visual_projection_is_linear = False

    linear = {cls: cls.visual_projection_is_linear for cls in
              (MFBPR, VBPR, AMR, DUIF, AdversarialDUIF, Mixed, Changed, Redeclared, BelowRedeclared, DeclaredNot)}
    assert linear == {MFBPR: False, VBPR: True, AMR: True, DUIF: True, AdversarialDUIF: True, Mixed: False,
                      Changed: False, Redeclared: True, BelowRedeclared: True, DeclaredNot: False}


def test_duif_batches_gather_no_item_embeddings(rng):
    """DUIF's batch reads no row of its zero ``Q``; its batch vectors are ``c_i E`` (NumPy)."""
    from amr_tf.models.duif import DUIF

    C, P, Q, E, u, i, j = random_problem(rng)
    model = DUIF(P.shape[0], Q.shape[0], C, embed_dim=P.shape[1], seed=0)
    model.E.assign(E)
    batch = model.batch_items(i, j)
    assert batch.q_rows is None
    np.testing.assert_allclose(model.batch_item_vectors(batch).numpy(), (C @ E)[np.concatenate([i, j])],
                               rtol=1e-5, atol=1e-6)
