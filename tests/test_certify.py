"""The certificate against brute force, against every attack, on MF (no effect), and its radii."""

import numpy as np
import pytest
import tensorflow as tf

from amr_tf.attacks import feature_perturbation
from amr_tf.attacks.certify import Certifier, certify, feature_sensitivity
from amr_tf.errors import AmrError
from amr_tf.evaluation import evaluate, rank_test_items
from amr_tf.models import MFBPR, VBPR
from amr_tf.models.duif import DUIF
from amr_tf.models.eals import EALS
from amr_tf.training import fit

KS = (1, 5, 10)


def randomised(model, rng, scale=0.5):
    """The model with random, not tiny, weights so that scores and feature effects are far from zero."""
    for var in model.trainable_weights:
        var.assign(rng.normal(scale=scale, size=var.shape).astype(np.float32))
    return model


def vbpr(ds, rng):
    return randomised(VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=6, seed=0), rng)


def duif(ds, rng):
    return randomised(DUIF(ds.num_users, ds.num_items, ds.features, embed_dim=6, seed=0), rng)


@pytest.fixture(scope="module")
def trained():
    """A VBPR trained briefly on the tiny data (the attacks' and the shared attack's target)."""
    from tests.conftest import make_tiny

    tf.keras.utils.set_random_seed(0)
    ds = make_tiny()
    model = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=8, regs=(1e-3, 1e-3, 0.0),
                 learning_rates=(0.05, 0.05, 0.05), seed=0)
    model.compile()
    fit(model, ds, epochs=20, batch_size=64, seed=0, verbose=0)
    return model, ds


def user_ranks(model, ds, features):
    return rank_test_items(model, ds, features=features)


def worst_case_features(model, ds, u, eps):
    """The closed-form worst perturbation against user ``u``: the held-out item down, every other item up."""
    e = np.asarray(model.E.numpy(), np.float64) @ np.asarray(model.user_vectors().numpy()[u], np.float64)
    e /= np.linalg.norm(e)
    delta = np.tile(eps * e, (ds.num_items, 1))
    delta[ds.test_candidates[u, 0]] = -eps * e
    return ds.features.astype(np.float64) + delta


@pytest.mark.parametrize("make", [vbpr, duif])
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_closed_form_perturbation_attains_the_certified_rank(tiny_dataset, rng, make, eps):
    ds = tiny_dataset
    model = make(ds, rng)
    cert = certify(model, ds, eps, ks=KS)
    moved = 0
    for u in range(ds.num_users):
        attacked = user_ranks(model, ds, worst_case_features(model, ds, u, eps).astype(np.float32))
        assert attacked[u] == cert.ranks[u], u
        moved += cert.ranks[u] > cert.clean_ranks[u]
    assert moved >= ds.num_users // 4  # the budget matters on this problem


def test_random_search_never_beats_the_certificate(tiny_dataset, rng):
    ds = tiny_dataset
    model = vbpr(ds, rng)
    eps = 0.2
    cert = certify(model, ds, eps, ks=KS)
    P = model.user_vectors().numpy().astype(np.float64)
    E = model.E.numpy().astype(np.float64)
    Q = model.Q.numpy().astype(np.float64)
    C = ds.features.astype(np.float64)
    for u in range(0, ds.num_users, 4):
        cands = ds.test_candidates[u]
        worst = np.asarray(E @ P[u])
        worst /= np.linalg.norm(worst)
        for trial in range(200):
            # Random directions, mixed towards the closed-form worst case by a random amount.
            d = rng.normal(size=(ds.num_items, C.shape[1]))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            mix = rng.random()
            d = mix * worst + (1 - mix) * d
            d[cands[0]] = mix * -worst + (1 - mix) * d[cands[0]]
            d *= eps * rng.random((ds.num_items, 1)) ** 0.1 / np.linalg.norm(d, axis=1, keepdims=True)
            s = P[u] @ (Q + (C + d) @ E).T
            rank = int(np.sum(s[cands[1:]] >= s[cands[0]]))
            assert rank <= cert.ranks[u], (u, trial)


def test_at_zero_equals_the_evaluation(tiny_dataset, rng):
    ds = tiny_dataset
    model = vbpr(ds, rng)
    cert = certify(model, ds, 0.0, ks=KS)
    np.testing.assert_array_equal(cert.ranks, rank_test_items(model, ds))
    assert cert.metrics == evaluate(model, ds, ks=KS)


@pytest.mark.parametrize("kind", ["mfbpr", "eals"])
def test_exact_for_models_without_features(tiny_dataset, rng, kind):
    ds = tiny_dataset
    if kind == "mfbpr":
        model = randomised(MFBPR(ds.num_users, ds.num_items, embed_dim=6, seed=0), rng)
    else:
        model = EALS(ds.num_users, ds.num_items, embed_dim=6, seed=0, init_stddev=0.5)
    assert not feature_sensitivity(model).any()
    clean = evaluate(model, ds, ks=KS)
    for eps in (0.0, 1.0, 100.0):
        cert = certify(model, ds, eps, ks=KS)
        assert cert.metrics == clean
    for k in KS:
        top = cert.clean_ranks < k
        assert np.all(np.isinf(cert.radius[k][top])) and np.all(cert.radius[k][~top] == 0)


def test_never_above_any_attack(trained):
    model, ds = trained
    certifier = Certifier(model, ds, ks=KS)
    for eps in (0.05, 0.2, 1.0):
        cert = certifier.at(eps)
        for attack in ("grad", "pgd", "random"):
            for loss in ("bpr", "ranking"):
                feats = ds.features + feature_perturbation(model, ds, attack, eps, loss=loss, seed=1)
                attacked = evaluate(model, ds, ks=KS, features=feats)
                for key, value in cert.metrics.items():
                    assert value <= attacked[key] + 1e-12, (eps, attack, loss, key, value, attacked[key])
    # The certificate is not vacuous here: at eps=1 it is below the clean metrics.
    assert certifier.at(1.0).metrics["HR@10"] < certifier.at(0.0).metrics["HR@10"]


def test_radius_separates_in_from_out_of_the_top_k(tiny_dataset, rng):
    ds = tiny_dataset
    model = vbpr(ds, rng)
    certifier = Certifier(model, ds, ks=KS)
    checked = 0
    for k in KS:
        radius = certifier.radius[k]
        assert np.all(radius[certifier.clean_ranks >= k] == 0)
        for u in np.flatnonzero(np.isfinite(radius) & (radius > 0)):
            below, above = certifier.at(radius[u] * (1 - 1e-9)), certifier.at(radius[u] * (1 + 1e-9))
            assert below.ranks[u] < k <= above.ranks[u], (k, u)
            checked += 1
    assert checked >= 20


def test_monotone_in_eps(tiny_dataset, rng):
    ds = tiny_dataset
    certifier = Certifier(vbpr(ds, rng), ds, ks=KS)
    ranks = [certifier.at(e).ranks for e in (0.0, 0.01, 0.1, 0.5, 2.0)]
    assert all(np.all(a <= b) for a, b in zip(ranks, ranks[1:]))
    assert ranks[-1].sum() > ranks[0].sum()


def test_validation_split_covers_its_own_users(tiny_dataset, rng):
    """A validation split of some users (rows for ``validation_users``) is certified row by row."""
    ds = tiny_dataset
    model = vbpr(ds, rng)
    full = certify(model, ds, 0.1, ks=KS)
    users = np.arange(1, ds.num_users, 3)
    ds.validation_users, ds.validation_candidates = users, ds.test_candidates[users]
    val = certify(model, ds, 0.1, ks=KS, split="validation")
    np.testing.assert_array_equal(val.users, users)
    np.testing.assert_array_equal(val.ranks, full.ranks[users])
    for k in KS:
        np.testing.assert_allclose(val.radius[k], full.radius[k][users], rtol=1e-5)  # float32 scores


def test_bad_arguments(tiny_dataset, rng):
    ds = tiny_dataset
    model = vbpr(ds, rng)
    with pytest.raises(AmrError, match="eps"):
        certify(model, ds, -0.1)
    with pytest.raises(AmrError, match="split"):
        certify(model, ds, 0.1, split="train")
    with pytest.raises(AmrError, match="no validation split"):
        certify(model, ds, 0.1, split="validation")


@pytest.mark.parametrize("gather", [False, True])
def test_candidate_scores_are_the_brute_force_scores(tiny_dataset, rng, gather):
    """The scores the certificate and the shared attack read (``evaluation.candidate_scores``, the
    sampled protocol's chunks) equal NumPy's ``p_u . v_c`` on both scoring paths (all items scored,
    or the candidates' vectors gathered: a catalogue > 20x the candidate lists), and rank as
    ``rank_test_items`` does."""
    from amr_tf.evaluation import candidate_scores, sampled_scores, split_rows

    ds = tiny_dataset
    model = vbpr(ds, rng)
    users, cands = split_rows(ds)
    user_vecs, item_vecs = model.user_vectors(), model.item_vectors()
    reference = np.einsum("uk,unk->un", user_vecs.numpy().astype(np.float64),
                          item_vecs.numpy().astype(np.float64)[cands])
    if gather:  # the same rows against a catalogue padded to more than 20x the candidate lists
        item_vecs = tf.concat([item_vecs, tf.ones((20 * cands.shape[1] * 2, item_vecs.shape[1]))], axis=0)
        scores = np.concatenate([s.numpy() for s in sampled_scores(user_vecs, item_vecs, users, cands, 64)])
    else:
        scores = candidate_scores(model, ds)
        np.testing.assert_array_equal(np.sum(scores[:, 1:] >= scores[:, :1], axis=1), rank_test_items(model, ds))
    assert scores.shape == cands.shape and scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-5)
