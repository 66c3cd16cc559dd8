"""The shared-perturbation attack: its budget, its place between the certificate and the one-step attack."""

import dataclasses

import numpy as np
import pytest

from amr_tf.attacks import feature_perturbation
from amr_tf.attacks.certify import Certifier
from amr_tf.attacks.shared import shared_attack
from amr_tf.errors import AmrError
from amr_tf.evaluation import evaluate
from amr_tf.models import MFBPR
from tests.test_certify import trained  # noqa: F401 - the fixture: a VBPR trained on the tiny data

KS = (1, 5, 10)
EPS = (0.05, 0.2, 1.0)


@pytest.fixture(scope="module")
def attacks(trained):  # noqa: F811
    model, ds = trained
    return {eps: shared_attack(model, ds, eps, ks=KS, steps=30, restarts=2, target_k=5, objectives=("topk", "rank"))
            for eps in EPS}


def test_every_row_respects_the_budget(trained, attacks):  # noqa: F811
    model, ds = trained
    for eps, result in attacks.items():
        assert [r[2] for r in result.restarts] == ["topk", "rank"]
        norms = np.linalg.norm(result.delta.astype(np.float64), axis=1)
        assert norms.max() <= eps
        assert norms.max() > 0.5 * eps  # it used the budget
        assert result.delta.shape == ds.features.shape and result.delta.dtype == np.float32


def test_metrics_are_the_evaluation_of_the_perturbed_features(trained, attacks):  # noqa: F811
    model, ds = trained
    for result in attacks.values():
        assert result.metrics == evaluate(model, ds, ks=KS, features=ds.features + result.delta)


def test_never_better_than_the_certificate(trained, attacks):  # noqa: F811
    model, ds = trained
    certifier = Certifier(model, ds, ks=KS)
    for eps, result in attacks.items():
        cert = certifier.at(eps)
        assert np.all(cert.ranks >= result.ranks)  # per user, not only on average
        for key, value in cert.metrics.items():
            assert value <= result.metrics[key], (eps, key)


def test_at_least_as_strong_as_the_one_step_attack(trained, attacks):  # noqa: F811
    model, ds = trained
    clean = evaluate(model, ds, ks=KS)
    for eps, result in attacks.items():
        for loss in ("bpr", "ranking"):
            one_step = evaluate(model, ds, ks=KS, features=ds.features + feature_perturbation(model, ds, "grad", eps,
                                                                                              loss=loss))
            assert result.metrics["HR@5"] <= one_step["HR@5"], (eps, loss, result.metrics, one_step)
        assert result.metrics["HR@5"] < clean["HR@5"]


def test_a_given_start_is_kept_when_nothing_beats_it(trained):  # noqa: F811
    model, ds = trained
    start = feature_perturbation(model, ds, "grad", 0.2, loss="ranking")
    result = shared_attack(model, ds, 0.2, ks=KS, steps=1, restarts=0, target_k=5, init=start)
    reference = evaluate(model, ds, ks=KS, features=ds.features + start)
    assert result.metrics["HR@5"] <= reference["HR@5"]
    assert [r[0] for r in result.restarts] == ["init"]


def test_seeded_and_deterministic(trained):  # noqa: F811
    model, ds = trained
    # Four restarts: three zero starts (one per default temperature), then a random start in the ball.
    a, b, c = (shared_attack(model, ds, 0.2, ks=KS, steps=5, restarts=4, target_k=5, seed=s) for s in (4, 4, 5))
    assert [r[0] for r in a.restarts] == ["zero", "zero", "zero", "random"]
    np.testing.assert_array_equal(a.delta, b.delta)
    assert a.restarts[3] == b.restarts[3]
    assert a.restarts[3] != c.restarts[3] or not np.array_equal(a.delta, c.delta)  # the seed keys the random start


def test_bad_arguments(tiny_dataset):
    ds = tiny_dataset
    with pytest.raises(AmrError, match="no item features"):
        shared_attack(MFBPR(ds.num_users, ds.num_items, embed_dim=4), ds, 0.1)


def test_validation_split(trained):  # noqa: F811
    model, ds = trained
    users = np.arange(0, ds.num_users, 2)
    val_ds = dataclasses.replace(ds)
    val_ds.validation_users, val_ds.validation_candidates = users, ds.test_candidates[users]
    result = shared_attack(model, val_ds, 0.2, ks=KS, steps=10, restarts=1, target_k=5, split="validation")
    assert len(result.ranks) == len(users)
    scores = model.user_vectors().numpy()[users] @ model.item_vectors(ds.features + result.delta).numpy().T
    cand = np.take_along_axis(scores, ds.test_candidates[users], axis=1)
    np.testing.assert_array_equal(result.ranks, np.sum(cand[:, 1:] >= cand[:, :1], axis=1))


def test_bad_settings(trained):  # noqa: F811
    model, ds = trained
    with pytest.raises(AmrError, match="objectives"):
        shared_attack(model, ds, 0.1, objectives=("hinge",))
    with pytest.raises(AmrError, match="temperatures"):
        shared_attack(model, ds, 0.1, temperatures=(0.0,))
    with pytest.raises(AmrError, match="eps"):
        shared_attack(model, ds, -1.0)
