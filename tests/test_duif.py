"""DUIF: scores from the projected image feature only, one BPR step against the NumPy reference, training."""

import numpy as np
import pytest

from amr_tf.evaluation import evaluate
from amr_tf.models.duif import DUIF
from amr_tf.training import fit
from tests import numpy_reference as ref
from tests.test_models import random_problem

REGS = (0.1, 1e-3, 0.01)
LRS = (0.01, 1e-3)


def make(C, P, E):
    model = DUIF(P.shape[0], C.shape[0], C, embed_dim=P.shape[1], regs=REGS, learning_rates=LRS)
    model.compile()
    model.P.assign(P)
    model.E.assign(E)
    return model


def test_scores_are_user_times_projected_feature(rng):
    C, P, _, E, u, i, j = random_problem(rng)
    model = make(C, P, E)
    want = P @ (C @ E).T
    np.testing.assert_allclose(model.user_vectors().numpy() @ model.item_vectors().numpy().T, want, rtol=1e-5)
    np.testing.assert_allclose(model((u, i)).numpy(), want[u, i], rtol=1e-5)
    cands = np.stack([i, j], axis=1)
    np.testing.assert_allclose(model((u, cands)).numpy(), want[u[:, None], cands], rtol=1e-5)
    C2 = rng.random(C.shape).astype(np.float32)
    np.testing.assert_allclose(model.item_vectors(C2).numpy(), C2 @ E, rtol=1e-5)


def test_one_step_matches_numpy_reference(rng):
    C, P, Q, E, u, i, j = random_problem(rng)
    model = make(C, P, E)
    # DUIF is VBPR with Q fixed at zero: the reference step from Q = 0, keeping only P and E.
    zero_q = np.zeros_like(Q)
    (P1, _, E1), _, (total, bpr, _) = ref.train_step(P, zero_q, E, C, u, i, j, REGS, (LRS[0], 1.0, LRS[1]))
    terms = {k: float(v) for k, v in model.pairwise_losses(u, i, j).items()}
    np.testing.assert_allclose(terms["loss"], total, rtol=1e-5)
    np.testing.assert_allclose(terms["bpr_loss"], bpr, rtol=1e-5)
    model.train_on_batch((u, i, j))
    np.testing.assert_allclose(model.P.numpy(), P1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.E.numpy(), E1, rtol=1e-5, atol=1e-6)
    assert np.abs(model.P.numpy() - P).max() > 1e-5 and np.abs(model.E.numpy() - E).max() > 1e-5
    assert not model.Q.numpy().any()  # never trained, never read


def test_only_p_and_e_are_trained_and_saved_shapes(rng):
    C, P, _, E, *_ = random_problem(rng)
    model = make(C, P, E)
    assert [w.name for w in model.trainable_weights] == ["P", "E"]
    assert len(model.optimizers_by_param) == 2
    assert model.get_config()["learning_rates"] == list(LRS)


def test_trains_on_tiny_data(tiny_dataset):
    ds = tiny_dataset
    model = DUIF(ds.num_users, ds.num_items, ds.features, embed_dim=8, regs=(1e-3, 1e-3, 0.0),
                 learning_rates=(0.05, 0.05), seed=0)
    model.compile()
    before = evaluate(model, ds)
    history = fit(model, ds, epochs=30, batch_size=64, seed=0, verbose=0)
    losses = history.history["bpr_loss"]
    assert losses[-1] < 0.8 * losses[0]
    after = evaluate(model, ds)
    # 1 positive among 21 candidates: a random ranking has HR@5 = 5/21 = 0.24.
    assert after["HR@5"] > max(before["HR@5"], 0.3), (before, after)


@pytest.mark.parametrize("lrs", [(0.01, 1e-4, 1e-3), (0.1,)])
def test_learning_rates_need_one_per_trained_matrix(tiny_dataset, lrs):
    from amr_tf.errors import AmrError

    ds = tiny_dataset
    with pytest.raises(AmrError, match="learning_rates needs 2 values"):
        DUIF(ds.num_users, ds.num_items, ds.features, learning_rates=lrs)


def test_composes_with_the_adversary(rng):
    """DUIF's scoring under AMR's training (the class the lead wires as adversarial DUIF) is the
    NumPy reference's AMR step with ``Q = 0``: the adversary applies to DUIF unchanged."""
    from amr_tf.models import AMR

    class AdversarialDUIF(DUIF, AMR):
        pass

    C, P, Q, E, u, i, j = random_problem(rng)
    model = AdversarialDUIF(P.shape[0], C.shape[0], C, embed_dim=P.shape[1], regs=REGS, learning_rates=LRS,
                            eps=0.5, adv_weight=0.7)
    model.compile()
    model.P.assign(P)
    model.E.assign(E)
    zero_q = np.zeros_like(Q)
    (P1, _, E1), _, (total, bpr, adv) = ref.train_step(P, zero_q, E, C, u, i, j, REGS, (LRS[0], 1.0, LRS[1]),
                                                         eps=0.5, lmd=0.7)
    terms = {k: float(v) for k, v in model.pairwise_losses(u, i, j).items()}
    np.testing.assert_allclose([terms["loss"], terms["bpr_loss"], terms["adv_loss"]], [total, bpr, adv], rtol=1e-5)
    assert adv > bpr
    model.train_on_batch((u, i, j))
    np.testing.assert_allclose(model.P.numpy(), P1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.E.numpy(), E1, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_holds_p_and_e_only(tiny_dataset, tmp_path):
    from amr_tf.checkpoints import load_weights, save_checkpoint

    ds = tiny_dataset
    model = DUIF(ds.num_users, ds.num_items, ds.features, embed_dim=8, learning_rates=(0.05, 0.05), seed=0)
    model.compile()
    fit(model, ds, epochs=2, batch_size=64, seed=0, verbose=0)
    save_checkpoint(model, tmp_path / "duif", ds)
    fresh = DUIF(ds.num_users, ds.num_items, ds.features, embed_dim=8, learning_rates=(0.05, 0.05), seed=1)
    fresh.compile()
    load_weights(fresh, tmp_path / "duif")  # checks the stored shapes against parameter_names (P, E)
    for name in ("P", "E"):
        np.testing.assert_array_equal(getattr(fresh, name).numpy(), getattr(model, name).numpy())
    assert not fresh.Q.numpy().any()
    assert evaluate(fresh, ds) == evaluate(model, ds)
