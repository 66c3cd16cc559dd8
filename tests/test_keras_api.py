"""The models as Keras citizens: .keras save/load, continued training, recommend/export, evaluate,
validation metrics inside fit with Keras' own callbacks, summary, signatures, top-level names."""

import csv
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import amr_tf
from amr_tf.errors import AmrError
from amr_tf.evaluation import evaluate, metrics_from_ranks
from amr_tf.metrics import NDCG, HitRate, candidate_dataset
from amr_tf.training import build_model, fit

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    """A subprocess environment that finds this checkout's amr_tf."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    return env


def _test_pairs(ds):
    return np.arange(ds.num_users), np.asarray(ds.test_candidates)


def _trained(name, ds, seed=0):
    model = build_model(name, ds, embed_dim=8, learning_rates=(0.05, 0.05, 0.05), seed=seed)
    fit(model, ds, epochs=1, batch_size=64, verbose=0)
    return model


# ---------------------------------------------------------------------------- .keras files


@pytest.mark.slow
def test_keras_file_round_trips_in_a_fresh_process(tmp_path, tiny_dataset):
    """load_model without custom_objects, in a process that only imported amr_tf: same class, config, scores."""
    users, cands = _test_pairs(tiny_dataset)
    expected = {}
    for name in ("MFBPR", "VBPR", "AMR"):
        model = _trained(name, tiny_dataset)
        model.save(tmp_path / f"{name}.keras")
        expected[name] = (type(model).__name__, model.get_config(), model((users, cands)).numpy())
    np.save(tmp_path / "users.npy", users)
    np.save(tmp_path / "cands.npy", cands)
    code = f"""
import json, sys
import numpy as np
import amr_tf, keras
users, cands = np.load({str(tmp_path / 'users.npy')!r}), np.load({str(tmp_path / 'cands.npy')!r})
out = {{}}
for name in ("MFBPR", "VBPR", "AMR"):
    m = keras.models.load_model({str(tmp_path)!r} + "/" + name + ".keras")
    np.save({str(tmp_path)!r} + "/" + name + "-scores.npy", m((users, cands)).numpy())
    out[name] = [type(m).__name__, m.get_config(), len(m.optimizers_by_param),
                 int(m.seen_items.nnz) if m.seen_items is not None else None]
print(json.dumps(out))
"""
    # Run outside the checkout: the .keras files must hold everything (features, seen items).
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (cls, config, scores) in expected.items():
        got_cls, got_config, n_opt, nnz = loaded[name]
        assert got_cls == cls and got_config == json.loads(json.dumps(config))
        assert n_opt == (2 if name == "MFBPR" else 3) and nnz == tiny_dataset.train_matrix.nnz
        np.testing.assert_allclose(np.load(tmp_path / f"{name}-scores.npy"), scores, rtol=1e-6, atol=1e-9)


def test_keras_file_holds_the_features_and_continues_training(tmp_path, tiny_dataset):
    """The features come from the file (not the constructor), and the three Adagrad states too:
    one more step on the loaded model equals one more step on the original."""
    model = _trained("AMR", tiny_dataset, seed=1)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.features.numpy(), model.features.numpy())
    assert [int(o.iterations.numpy()) for o in loaded.optimizers_by_param] == \
        [int(o.iterations.numpy()) for o in model.optimizers_by_param] != [0, 0, 0]
    rng = np.random.default_rng(0)
    batch = tuple(rng.integers(0, n, 32).astype(np.int32)
                  for n in (tiny_dataset.num_users, tiny_dataset.num_items, tiny_dataset.num_items))
    model.train_on_batch(batch)
    loaded.train_on_batch(batch)
    for name in ("P", "Q", "E"):
        np.testing.assert_allclose(getattr(loaded, name).numpy(), getattr(model, name).numpy(), rtol=1e-6, atol=1e-9)


def test_keras_load_rejects_a_file_with_wrong_features(tmp_path, tiny_dataset):
    import zipfile

    model = build_model("VBPR", tiny_dataset, embed_dim=4, compile=False)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as src, zipfile.ZipFile(tmp_path / "bad.keras", "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "assets/features.npy":
                np.save(tmp_path / "f.npy", np.ones((3, 2), np.float32))
                data = (tmp_path / "f.npy").read_bytes()
            dst.writestr(item, data)
    with pytest.raises(Exception, match="features.npy in the .keras file has shape"):
        keras.models.load_model(tmp_path / "bad.keras")


def test_weights_checkpoints_stay_lean(tmp_path, tiny_dataset):
    """.weights.h5 (checkpoints) hold no features and no seen items: save_assets runs for .keras only."""
    import h5py

    model = build_model("VBPR", tiny_dataset, embed_dim=4)
    model.save_weights(tmp_path / "w.weights.h5")
    shapes = []
    with h5py.File(tmp_path / "w.weights.h5", "r") as f:
        f.visititems(lambda name, obj: shapes.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    assert tiny_dataset.features.shape not in shapes and (tiny_dataset.train_matrix.nnz,) not in shapes


def test_h5_model_format_gives_a_clear_error(tmp_path, tiny_dataset):
    model = build_model("MFBPR", tiny_dataset, embed_dim=4)
    with pytest.raises(AmrError, match=r"legacy HDF5 \(.h5\) model format.*model.save\('model.keras'\)"):
        model.save(tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


# ---------------------------------------------------------------------------- serving


def _brute_force_top_k(model, users, k, seen=None):
    scores = model.user_vectors().numpy()[users] @ model.item_vectors().numpy().T
    if seen is not None:
        scores = np.where(seen[users].toarray() > 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_recommend_excludes_seen_items_and_matches_brute_force(tiny_dataset):
    model = _trained("VBPR", tiny_dataset)
    users = np.array([0, 3, 3, 17, 39])
    ids, scores = model.recommend(users, k=7)
    assert ids.shape == scores.shape == (5, 7)
    seen = tiny_dataset.train_matrix
    assert not any(seen[u, i] for u, row in zip(users, ids) for i in row)
    want_ids, want_scores = _brute_force_top_k(model, users, 7, seen)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(ids, want_ids)  # scores are distinct: the order is unique
    # Without exclusion: the plain top-k of all items; blocks of users give the same answer.
    all_ids, _ = model.recommend(users, k=7, exclude_seen=False, batch_size=2)
    np.testing.assert_array_equal(all_ids, _brute_force_top_k(model, users, 7)[0])


def test_recommend_pads_with_minus_infinity_and_validates(tiny_dataset):
    model = build_model("MFBPR", tiny_dataset, embed_dim=4)
    user = int(np.argmax(np.diff(tiny_dataset.train_matrix.indptr)))
    n_seen = tiny_dataset.train_matrix[user].nnz
    _, scores = model.recommend([user], k=tiny_dataset.num_items)
    assert np.isneginf(scores[0, -n_seen:]).all() and np.isfinite(scores[0, :-n_seen]).all()
    with pytest.raises(AmrError, match="k must be between 1"):
        model.recommend([0], k=0)
    with pytest.raises(AmrError, match="users must be integer ids"):
        model.recommend([tiny_dataset.num_users])
    bare = amr_tf.MFBPR(tiny_dataset.num_users, tiny_dataset.num_items, embed_dim=4)
    with pytest.raises(AmrError, match="does not know the users' seen items"):
        bare.recommend([0])
    bare.set_seen_items(tiny_dataset)
    assert bare.recommend([0], k=3)[0].shape == (1, 3)


@pytest.mark.slow
def test_export_serves_without_amr_tf(tmp_path, tiny_dataset):
    """The SavedModel loads and answers in a process that never imports amr_tf (TF Serving layout)."""
    model = _trained("AMR", tiny_dataset)
    users = np.array([0, 5, 9], np.int64)
    items = np.array([1, 2, 3], np.int64)
    path = model.export(tmp_path / "served", version=1, verbose=False)
    assert path == tmp_path / "served" / "1" and (path / "saved_model.pb").exists()
    code = f"""
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load({str(path)!r})
rec = loaded.signatures["recommend"](users=tf.constant({users.tolist()}, tf.int64), k=tf.constant(4))
serve = loaded.signatures["serve"](users=tf.constant({users.tolist()}, tf.int64), items=tf.constant({items.tolist()}, tf.int64))
method = loaded.recommend(tf.constant({users.tolist()}, tf.int64), tf.constant(4))
print(json.dumps({{"signatures": sorted(loaded.signatures), "ids": rec["item_ids"].numpy().tolist(),
                  "scores": rec["scores"].numpy().tolist(), "serve": serve["scores"].numpy().tolist(),
                  "method_ids": method["item_ids"].numpy().tolist(),
                  "amr_tf_imported": any(m.startswith("amr_tf") for m in sys.modules)}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["recommend", "serve", "serving_default"] and not out["amr_tf_imported"]
    ids, scores = model.recommend(users, k=4)
    np.testing.assert_array_equal(out["ids"], ids)
    np.testing.assert_array_equal(out["method_ids"], ids)
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-5)
    np.testing.assert_allclose(out["serve"], model((users, items)).numpy(), rtol=1e-5)


# ---------------------------------------------------------------------------- evaluation in Keras


def test_metrics_follow_the_project_rank_definition(rng):
    ranks = rng.integers(0, 40, 500)
    want = metrics_from_ranks(ranks, ks=(1, 5, 10))
    for k in (1, 5, 10):
        hr, ndcg = HitRate(k), NDCG(k)
        hr.update_state(ranks[:200])
        hr.update_state(ranks[200:])
        ndcg.update_state(ranks)
        assert hr.name == f"HR@{k}" and ndcg.name == f"NDCG@{k}"
        assert float(hr.result()) == pytest.approx(want[f"HR@{k}"], abs=1e-12)
        assert float(ndcg.result()) == pytest.approx(want[f"NDCG@{k}"], abs=1e-12)


def test_model_evaluate_equals_the_vectorised_evaluation(tiny_dataset):
    model = _trained("AMR", tiny_dataset)
    users, cands = _test_pairs(tiny_dataset)
    got = model.evaluate(candidate_dataset(users, cands, batch_size=7), verbose=0, return_dict=True)
    want = evaluate(model, tiny_dataset)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # Plain arrays work too (the pair is Keras' x).
    got = model.evaluate(x=(users, cands), batch_size=16, verbose=0, return_dict=True)
    assert got["NDCG@10"] == pytest.approx(want["NDCG@10"], abs=1e-9)


def test_candidate_dataset_rejects_bad_shapes():
    with pytest.raises(AmrError, match="candidates \\(N, C\\)"):
        candidate_dataset(np.arange(3), np.zeros(3, np.int64))


@pytest.mark.slow
def test_fit_validation_feeds_keras_callbacks_in_any_order(tmp_path, tiny_dataset):
    """EarlyStopping placed first acts on val_NDCG@10; CSVLogger, ModelCheckpoint, TensorBoard see it."""
    users, cands = _test_pairs(tiny_dataset)
    model = build_model("AMR", tiny_dataset, embed_dim=8, learning_rates=(0.05, 0.05, 0.05), seed=0)
    # A gain no model can make (min_delta 1): EarlyStopping stops as soon as it may (Keras 3 never
    # stops after the first epoch: at the end of the second); without val_NDCG@10 in its logs it never would.
    stopper = keras.callbacks.EarlyStopping(monitor="val_NDCG@10", mode="max", min_delta=1.0, patience=0)
    callbacks = [stopper,
                 keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
                 keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_NDCG@10", mode="max",
                                                 save_best_only=True),
                 keras.callbacks.TensorBoard(str(tmp_path / "tb"))]
    history = fit(model, tiny_dataset, epochs=5, batch_size=64, callbacks=callbacks, verbose=0,
                  validation_data=(users, cands))
    assert len(history.history["loss"]) == 2 and stopper.stopped_epoch == 1
    want = evaluate(model, tiny_dataset)
    assert history.history["val_NDCG@10"][-1] == pytest.approx(want["NDCG@10"], abs=1e-9)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert {"val_HR@10", "val_NDCG@10", "val_NDCG@20", "loss"} <= set(rows[0])
    assert float(rows[-1]["val_HR@10"]) == pytest.approx(want["HR@10"], abs=1e-9)
    best = keras.models.load_model(tmp_path / "best.keras")
    assert evaluate(best, tiny_dataset)["NDCG@10"] == pytest.approx(want["NDCG@10"], abs=1e-7)
    assert list((tmp_path / "tb" / "validation").glob("events.out.tfevents.*"))

    # validation_freq: the val_ metrics appear on every second epoch only.
    model = build_model("MFBPR", tiny_dataset, embed_dim=8, seed=0)
    history = fit(model, tiny_dataset, epochs=4, batch_size=64, verbose=0, validation_freq=2,
                  validation_data=candidate_dataset(users, cands))
    assert len(history.history["loss"]) == 4 and len(history.history["val_HR@10"]) == 2


# ---------------------------------------------------------------------------- discoverability


def test_top_level_names_and_explicit_signatures():
    for name in ("AMR", "VBPR", "MFBPR", "Popularity", "evaluate", "fit", "build_model", "resolve_dataset",
                 "HitRate", "NDCG", "candidate_dataset", "load_checkpoint", "EvaluationCallback"):
        assert getattr(amr_tf, name) is not None and name in dir(amr_tf)
    for cls in (amr_tf.AMR, amr_tf.VBPR, amr_tf.MFBPR):
        params = inspect.signature(cls.__init__).parameters
        assert {"embed_dim", "regs", "learning_rates", "seed", "seen_items"} <= set(params), cls
        assert "Args:" in cls.__init__.__doc__
    assert {"eps", "adv_weight", "adv_type"} <= set(inspect.signature(amr_tf.AMR.__init__).parameters)
    with pytest.raises(AttributeError):
        amr_tf.no_such_name


def test_summary_counts_the_matrices_and_the_features(tiny_dataset):
    model = build_model("VBPR", tiny_dataset, embed_dim=4, compile=False)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    u, i, f = tiny_dataset.num_users, tiny_dataset.num_items, tiny_dataset.feature_dim
    trainable, fixed = (u + i + f) * 4, i * f
    assert f"Trainable params: {trainable:,}" in text and f"Non-trainable params: {fixed:,}" in text
    assert "features" in text and "E " in text


def test_pretrained_checkpoints_by_name(tmp_path, monkeypatch, capsys):
    from amr_tf import pretrained
    from amr_tf.cli import main

    assert {"vbpr-movielens-posters", "amr-movielens-posters", "mfbpr-movielens-posters"} <= set(pretrained.names())
    base = pretrained.path("vbpr-movielens-posters")
    assert base.with_name(base.name + ".weights.h5").exists() and base.with_name(base.name + ".json").exists()
    with pytest.raises(AmrError, match="no shipped checkpoint named 'nope'"):
        pretrained.path("nope")
    monkeypatch.chdir(tmp_path)  # a bare name resolves from any directory
    assert pretrained.resolve("vbpr-movielens-posters") == str(base)
    (tmp_path / "vbpr-movielens-posters.weights.h5").write_bytes(b"")  # a local checkpoint takes precedence
    assert pretrained.resolve("vbpr-movielens-posters") == "vbpr-movielens-posters"
    (tmp_path / "vbpr-movielens-posters.weights.h5").unlink()
    assert main(["evaluate", "mfbpr-movielens-posters"]) == 0  # the dataset's val.txt: both splits
    out = capsys.readouterr().out
    assert "| MFBPR (validation) |" in out and "| MFBPR (test) |" in out
    assert main(["evaluate", "mfbpr-movielens-posters", "--validation", "none"]) == 0  # the original protocol
    assert "| MFBPR |" in capsys.readouterr().out
