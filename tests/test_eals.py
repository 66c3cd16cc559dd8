"""MF-eALS against a slow, dense reference of the same coordinate updates, and its objective's descent."""

import numpy as np
import pytest

from amr_tf.data import AmrDataset
from amr_tf.errors import AmrError
from amr_tf.evaluation import evaluate
from amr_tf.models.eals import EALS, missing_weights


def tiny_dataset(rng, users=9, items=13, pairs=40):
    """Random training pairs (with a repeated pair and an item no one trained on) and test candidates."""
    u = rng.integers(0, users, pairs)
    i = rng.integers(0, items - 1, pairs)  # item items-1 never occurs in training
    u[:users] = np.arange(users)  # every user has a pair
    u[-1], i[-1] = u[0], i[0]  # a duplicated pair: counted once
    cands = np.stack([rng.permutation(items)[:5] for _ in range(users)])
    return AmrDataset(num_users=users, num_items=items, features=np.ones((items, 1), np.float32),
                      train_pairs=np.stack([u, i], axis=1), test_candidates=cands, name="tiny-eals")


def reference_epoch(P, Q, R, c, w, lam):
    """One eALS epoch from the definition: the exact minimiser of the dense weighted loss in each
    coordinate, user by user then item by item, with every prediction recomputed from scratch.

    ``W_ui = w`` on observed entries and ``c_i`` elsewhere; the loss ``sum W (R - P Q^T)^2 + lam
    (|P|^2 + |Q|^2)`` is quadratic in one coordinate ``x = p_uf``:
    ``x* = sum_i W_ui (R_ui - s_ui + p_uf q_if) q_if / (sum_i W_ui q_if^2 + lam)``.
    """
    P, Q = P.copy(), Q.copy()
    W = np.where(R > 0, w, c[None, :])
    for u in range(P.shape[0]):
        for f in range(P.shape[1]):
            rest = Q @ P[u] - P[u, f] * Q[:, f]
            den = np.sum(W[u] * Q[:, f] ** 2) + lam
            P[u, f] = np.sum(W[u] * (R[u] - rest) * Q[:, f]) / den if den > 0 else 0.0
    for i in range(Q.shape[0]):
        for f in range(Q.shape[1]):
            rest = P @ Q[i] - Q[i, f] * P[:, f]
            den = np.sum(W[:, i] * P[:, f] ** 2) + lam
            Q[i, f] = np.sum(W[:, i] * (R[:, i] - rest) * P[:, f]) / den if den > 0 else 0.0
    return P, Q


def dense_objective(P, Q, R, c, w, lam):
    W = np.where(R > 0, w, c[None, :])
    return float(np.sum(W * (R - P @ Q.T) ** 2) + lam * (np.sum(P ** 2) + np.sum(Q ** 2)))


@pytest.mark.parametrize("c0,alpha,w,lam", [(1.0, 0.5, 1.0, 0.01), (8.0, 0.0, 3.0, 0.1), (0.5, 1.0, 1.0, 0.0)])
def test_each_epoch_equals_the_dense_reference(rng, c0, alpha, w, lam):
    ds = tiny_dataset(rng)
    R = ds.train_matrix.toarray().astype(np.float64)
    c = missing_weights(R.sum(axis=0), c0, alpha)
    model = EALS(ds.num_users, ds.num_items, embed_dim=4, c0=c0, alpha=alpha, w=w, reg=lam, init_stddev=0.3, seed=5)
    P, Q = model.P.copy(), model.Q.copy()
    for _ in range(3):
        before = (model.P.copy(), model.Q.copy())
        model.fit(ds, epochs=1)
        P, Q = reference_epoch(P, Q, R, c, w, lam)
        np.testing.assert_allclose(model.P, P, rtol=0, atol=1e-10)
        np.testing.assert_allclose(model.Q, Q, rtol=0, atol=1e-10)
        assert max(np.abs(model.P - before[0]).max(), np.abs(model.Q - before[1]).max()) > 1e-3  # it moved
        np.testing.assert_allclose(model.objective(ds), dense_objective(P, Q, R, c, w, lam), rtol=1e-12)


def test_missing_weights_follow_popularity():
    c = missing_weights([4, 1, 0, 9], c0=2.0, alpha=0.5)
    np.testing.assert_allclose(c, 2.0 * np.array([2, 1, 0, 3]) / 6.0)
    np.testing.assert_allclose(missing_weights([4, 1, 0], 3.0, 0.0), [1.0, 1.0, 1.0])
    with pytest.raises(AmrError):
        missing_weights([0, 0], 1.0, 0.5)


def test_objective_never_increases(rng):
    ds = tiny_dataset(rng, users=20, items=30, pairs=120)
    model = EALS(ds.num_users, ds.num_items, embed_dim=6, c0=4.0, alpha=0.4, reg=0.05, init_stddev=0.5, seed=1)
    history = [model.objective(ds)] + model.fit(ds, epochs=15)
    steps = np.diff(history)
    assert np.all(steps <= 1e-10 * np.abs(history[:-1])), steps
    assert history[-1] < 0.5 * history[0]


def test_seed_fixes_the_result(rng):
    ds = tiny_dataset(rng)
    a, b = (EALS(ds.num_users, ds.num_items, embed_dim=3, seed=7) for _ in range(2))
    a.fit(ds, 2), b.fit(ds, 2)
    np.testing.assert_array_equal(a.P, b.P)
    other = EALS(ds.num_users, ds.num_items, embed_dim=3, seed=8)
    assert not np.allclose(other.P, EALS(ds.num_users, ds.num_items, embed_dim=3, seed=7).P)


def planted_dataset(seed=0, users=60, items=80, groups=4, per_user=8, negatives=30):
    """Users and items in ``groups`` clusters; users interact (and are tested) only within their cluster."""
    rng = np.random.default_rng(seed)
    ug, ig = np.arange(users) % groups, np.arange(items) % groups
    pairs, cands = [], []
    for u in range(users):
        own = rng.permutation(np.flatnonzero(ig == ug[u]))
        pairs += [(u, i) for i in own[:per_user]]
        others = rng.choice(np.flatnonzero(ig != ug[u]), negatives, replace=False)
        cands.append(np.concatenate([[own[per_user]], others]))
    return AmrDataset(num_users=users, num_items=items, features=np.ones((items, 1), np.float32),
                      train_pairs=np.array(pairs), test_candidates=np.array(cands), name="planted")


def test_beats_random_ranking_on_planted_structure():
    ds = planted_dataset()
    model = EALS(ds.num_users, ds.num_items, embed_dim=8, c0=2.0, alpha=0.5, reg=0.01, init_stddev=0.1, seed=0)
    untrained = evaluate(model, ds, ks=(5,))
    model.fit(ds, epochs=10)
    trained = evaluate(model, ds, ks=(5,))
    # Random ranking of 1 positive among 31 candidates: HR@5 = 5/31 = 0.16.
    assert trained["HR@5"] > 0.9 and trained["HR@5"] > untrained["HR@5"] + 0.5, (untrained, trained)


def test_bad_arguments_raise_project_errors(rng):
    with pytest.raises(AmrError, match="embed_dim"):
        EALS(3, 4, embed_dim=0)
    with pytest.raises(AmrError, match="alpha"):
        EALS(3, 4, alpha=-1)
    ds = tiny_dataset(rng)
    with pytest.raises(AmrError, match="built for"):
        EALS(ds.num_users + 1, ds.num_items).fit(ds, 1)


# ---------------------------------------------------------------------------- the CLI and checkpoints


def _train(tmp_path, name, *extra):
    from amr_tf import cli

    argv = ["train", "--model", "EALS", "--dataset", "synthetic", "--validation", "holdout", "--emb1_K", "8",
            "--w0", "2", "--alpha", "0.4", "--regs", "[0.05,0,0]", "--verbose", "2", "--quiet",
            "--weight_dir", str(tmp_path / name), *extra]
    assert cli.main(argv) == 0
    import json

    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_cli_trains_selects_on_validation_and_resumes_exactly(tmp_path):
    """``--model EALS`` through the CLI: the flags reach the model, the best checkpoint is the epoch
    chosen on val_NDCG@10 and holds its weights, and a run resumed half-way ends bit for bit where
    an uninterrupted one does (eALS epochs are deterministic given P and Q)."""
    from amr_tf.checkpoints import load_checkpoint
    from amr_tf.data import resolve_dataset

    full = _train(tmp_path, "full", "--epoch", "6")
    assert full["model"] == "EALS" and full["selection"] == "val_NDCG@10"
    val = {e["epoch"]: e["val_NDCG@10"] for e in full["evaluations"]}
    assert full["best_epoch"] == max(val, key=val.get) and sorted(val) == [0, 2, 4, 6]
    ds = resolve_dataset("synthetic", validation="holdout")
    best, manifest = load_checkpoint(tmp_path / "full" / "best", ds)
    assert (best.c0, best.alpha, best.reg, best.embed_dim) == (2.0, 0.4, 0.05, 8)
    assert manifest["epoch"] == full["best_epoch"]
    test = evaluate(best, ds)
    assert test["NDCG@10"] == pytest.approx(full["selected"]["NDCG@10"], abs=1e-12)
    # the objective went down in every epoch (the TensorBoard/Keras logs carry it as the loss)
    half = _train(tmp_path, "half", "--epoch", "3")
    assert half["epochs"] == 3
    from amr_tf import cli

    assert cli.main(["train", "--resume", "--epoch", "6", "--quiet", "--weight_dir", str(tmp_path / "half")]) == 0
    a, _ = load_checkpoint(tmp_path / "full" / "last", ds)
    b, _ = load_checkpoint(tmp_path / "half" / "last", ds)
    np.testing.assert_array_equal(a.P, b.P)
    np.testing.assert_array_equal(a.Q, b.Q)


def test_fit_hook_runs_the_keras_callbacks_and_stops_on_request(rng):
    import keras

    from amr_tf.training import build_model, fit

    ds = tiny_dataset(rng, users=20, items=30, pairs=120)
    model = build_model("MF-eALS", ds, embed_dim=4, c0=3.0, alpha=0.2, seed=1)
    assert isinstance(model, EALS) and (model.c0, model.alpha) == (3.0, 0.2)
    seen = []

    def on_epoch_end(epoch, logs):
        seen.append((epoch, logs["loss"]))
        model.stop_training = epoch == 2

    history = fit(model, ds, epochs=10, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)])
    assert [e for e, _ in seen] == [0, 1, 2] and model.epochs_trained == 3
    assert history.history["loss"] == [loss for _, loss in seen]
    assert seen[-1][1] == pytest.approx(model.objective(ds))
    assert np.all(np.diff([loss for _, loss in seen]) <= 0)
