"""Feature-level attacks: budgets, PGD's projection and strength, determinism, and AMR's training rule."""

import numpy as np
import pytest
import tensorflow as tf

from amr_tf.attacks import (
    attack_loss_fn,
    bpr_loss_fn,
    feature_perturbation,
    l2_norms,
    one_step_l2,
    perturbed_features,
    pgd_l2,
    project_l2_ball,
    random_in_l2_ball,
    random_l2,
    ranking_loss_fn,
    training_triplets,
)
from amr_tf.errors import AmrError
from amr_tf.evaluation import evaluate
from amr_tf.models import MFBPR, VBPR
from tests import numpy_reference as ref


@pytest.fixture
def model(tiny_dataset, rng):
    """A VBPR with random, not tiny, weights so that scores and gradients are far from zero."""
    ds = tiny_dataset
    m = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=6, seed=0)
    for name in ("P", "Q", "E"):
        var = getattr(m, name)
        var.assign(rng.normal(scale=0.5, size=var.shape).astype(np.float32))
    return m


def norms(x):
    return np.linalg.norm(np.asarray(x).reshape(len(x), -1), axis=1)


def test_one_step_is_amrs_training_rule(model, tiny_dataset, rng):
    """On a batch of triplets, the one-step attack is exactly AMR's adversary (the NumPy reference)."""
    u = rng.integers(0, tiny_dataset.num_users, 32)
    i = rng.integers(0, tiny_dataset.num_items, 32)
    j = (i + 1 + rng.integers(0, tiny_dataset.num_items - 1, 32)) % tiny_dataset.num_items
    P, Q, E = (getattr(model, n).numpy() for n in ("P", "Q", "E"))
    want = ref.adversary(P, Q, E, tiny_dataset.features, u, i, j, 0.3)
    got = one_step_l2(bpr_loss_fn(model, u, i, j), tiny_dataset.features, 0.3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_one_step_has_norm_eps_per_item_and_zero_where_no_gradient(model, tiny_dataset):
    triplets = training_triplets(tiny_dataset, seed=0)
    touched = np.unique(np.concatenate(triplets[1:]))
    for eps in (0.01, 0.5, 2.0):
        delta = feature_perturbation(model, tiny_dataset, "grad", eps, triplets=triplets)
        np.testing.assert_allclose(norms(delta[touched]), eps, rtol=1e-5)
        untouched = np.setdiff1d(np.arange(tiny_dataset.num_items), touched)
        assert np.all(delta[untouched] == 0)


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.5])
def test_pgd_stays_in_the_ball(model, tiny_dataset, eps):
    loss = attack_loss_fn(model, tiny_dataset, "bpr", seed=1)
    for step_size in (None, 3 * eps):  # the library default (2.5 eps / steps) and an overshooting step
        delta = pgd_l2(loss, tiny_dataset.features, eps, steps=7, step_size=step_size, seed=4).numpy()
        assert norms(delta).max() <= eps * (1 + 1e-5)
    delta = feature_perturbation(model, tiny_dataset, "pgd", eps, loss_fn=loss, seed=4)
    assert norms(delta).max() <= eps * (1 + 1e-5)
    assert norms(delta).min() > 0.5 * eps  # a full-radius walk ends near the sphere


@pytest.mark.parametrize("loss_name", ["bpr", "ranking"])
def test_pgd_is_at_least_as_strong_as_one_step(model, tiny_dataset, loss_name):
    loss = attack_loss_fn(model, tiny_dataset, loss_name, seed=0)
    feats = tiny_dataset.features
    for eps in (0.01, 0.1, 0.5, 2.0):
        one = float(loss(feats + feature_perturbation(model, tiny_dataset, "grad", eps, loss_fn=loss)))
        multi = float(loss(feats + feature_perturbation(model, tiny_dataset, "pgd", eps, loss_fn=loss, seed=3)))
        noise = float(loss(feats + feature_perturbation(model, tiny_dataset, "random", eps, seed=3)))
        assert multi >= one * (1 - 1e-6), (eps, multi, one)
        assert one > noise, (eps, one, noise)


def test_pgd_loss_never_decreases_on_a_convex_loss(model, tiny_dataset):
    """The BPR loss is convex in the features, so every projected step keeps or raises it."""
    trace = []
    pgd_l2(attack_loss_fn(model, tiny_dataset, "bpr"), tiny_dataset.features, 0.4, steps=8, step_size=0.4, trace=trace)
    assert len(trace) == 9 and np.all(np.diff(trace) >= -1e-4 * abs(trace[0]))


def test_random_noise_has_norm_eps_on_every_item(model, tiny_dataset):
    delta = feature_perturbation(model, tiny_dataset, "random", 0.7, seed=5)
    np.testing.assert_allclose(norms(delta), 0.7, rtol=1e-5)
    eps = np.linspace(0.1, 1.0, tiny_dataset.num_items)  # a budget per item works too
    np.testing.assert_allclose(norms(random_l2(tiny_dataset.features, eps, seed=1)), eps, rtol=1e-5)


@pytest.mark.parametrize("attack", ["grad", "pgd", "random"])
def test_deterministic_with_seed(model, tiny_dataset, attack):
    a = feature_perturbation(model, tiny_dataset, attack, 0.2, seed=11)
    b = feature_perturbation(model, tiny_dataset, attack, 0.2, seed=11)
    np.testing.assert_array_equal(a, b)
    c = feature_perturbation(model, tiny_dataset, attack, 0.2, seed=12)
    assert not np.array_equal(a, c)  # the seed picks the triplets, the start and the noise


def test_eps_zero_is_the_clean_evaluation(model, tiny_dataset):
    for attack in ("grad", "pgd", "random"):
        feats = perturbed_features(model, tiny_dataset, attack, 0.0)
        np.testing.assert_array_equal(feats, tiny_dataset.features)
        assert evaluate(model, tiny_dataset, features=feats) == evaluate(model, tiny_dataset)


def test_generic_functions_work_per_sample_on_image_shaped_batches():
    """What a pixel-level attack needs: norms and projections per image over all of H, W, C."""
    x = tf.random.stateless_uniform((5, 4, 4, 3), seed=(1, 2))
    w = tf.random.stateless_normal((4, 4, 3), seed=(3, 4))

    def loss(images):
        return tf.reduce_sum(tf.sin(images * w))  # not convex: keep_best guarantees >= the start

    delta = pgd_l2(loss, x, 0.5, steps=5, seed=0)
    assert delta.shape == x.shape and norms(delta).max() <= 0.5 * (1 + 1e-5)
    assert float(loss(x + delta)) >= float(loss(x + random_in_l2_ball(x, 0.5, seed=0))) - 1e-5
    big = 3.0 * tf.ones((2, 4, 4, 3))
    np.testing.assert_allclose(norms(project_l2_ball(big, 1.5)), 1.5, rtol=1e-5)
    small = 0.01 * tf.ones((2, 4, 4, 3))
    np.testing.assert_array_equal(project_l2_ball(small, 1.5).numpy(), small.numpy())
    np.testing.assert_allclose(l2_norms(one_step_l2(loss, x, 0.2)).numpy(), 0.2, rtol=1e-5)
    assert norms(random_in_l2_ball(x, 0.5, seed=3)).max() <= 0.5 * (1 + 1e-6)


def test_ranking_loss_matches_numpy(model, tiny_dataset):
    ds = tiny_dataset
    P, Q, E = (getattr(model, n).numpy() for n in ("P", "Q", "E"))
    scores = P @ (Q + ds.features @ E).T
    cand = np.take_along_axis(scores, ds.test_candidates, axis=1)
    want = np.sum(np.logaddexp(0.0, -(cand[:, :1] - cand[:, 1:])))
    np.testing.assert_allclose(float(ranking_loss_fn(model, ds)(ds.features)), want, rtol=1e-4)


def test_invalid_uses_raise_project_errors(model, tiny_dataset):
    with pytest.raises(AmrError, match="eps"):
        feature_perturbation(model, tiny_dataset, "grad", -0.1)
    with pytest.raises(AmrError, match="attack"):
        feature_perturbation(model, tiny_dataset, "fgsm", 0.1)
    with pytest.raises(AmrError, match="loss"):
        feature_perturbation(model, tiny_dataset, "grad", 0.1, loss="hinge")
    mf = MFBPR(tiny_dataset.num_users, tiny_dataset.num_items, embed_dim=4)
    with pytest.raises(AmrError, match="features"):
        feature_perturbation(mf, tiny_dataset, "grad", 0.1)
    with pytest.raises(AmrError, match="step"):
        pgd_l2(lambda x: tf.reduce_sum(x), tiny_dataset.features, 0.1, steps=0)


def test_random_in_l2_ball_streams():
    """``streams`` names the two stateless streams: ``stream=s`` is ``streams=(2s, 2s+1)``; another
    direction or radius stream draws another sample (the shared attack's restarts use their own)."""
    x = tf.zeros((50, 6))
    draw = lambda **kw: random_in_l2_ball(x, 0.5, seed=4, **kw).numpy()  # noqa: E731
    np.testing.assert_array_equal(draw(stream=3), draw(streams=(6, 7)))
    assert not np.array_equal(draw(streams=(6, 7)), draw(streams=(6, 8)))
    assert not np.array_equal(draw(streams=(6, 7)), draw(streams=(5, 7)))
    radii = np.linalg.norm(draw(streams=(2, 1002)), axis=1)
    assert radii.max() <= 0.5 * (1 + 1e-6) and radii.min() < 0.4  # inside the ball, not on its sphere
