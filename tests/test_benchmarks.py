"""The benchmark suite runs (``--quick``) and prints its tables; the baselines it times are correct.

No timing is asserted here: the machine is shared and noisy. The ratios are the benchmark's
output (``python -m benchmarks``), not a test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_prints_the_tables(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out_json)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = proc.stdout
    for heading in ("## Training epochs", "## Targets", "## Evaluation", "## Where an epoch's time goes",
                    "## XLA", "## Memory"):
        assert heading in report, heading
    for row in ("| VBPR |", "| AMR |", "| AMR adv_impl=dense |", "| AMR, original graph (plain TF) |",
                "| plain-TF VBPR |"):
        assert row in report, row
    assert "triplets/s" in report and "of matmul peak" in report and "peak RSS" in report
    results = json.loads(out_json.read_text())
    train = results["training"][0]
    assert {"AMR / VBPR", "original AMR graph / AMR", "VBPR / plain-TF VBPR"} <= set(train["ratios"])
    assert set(train["paired_ratios"]) == set(train["ratios"])
    assert all(v["epoch_s"] > 0 and v["triplets_per_s"] > 0 for v in train["variants"].values())
    assert results["evaluation"][0]["ranks_agree"] > 0.9  # the per-user loop ranks like the vectorised pass
    assert results["memory"][0]["rss_peak_mib"] > 0


def _tiny():
    from amr_tf.data import make_synthetic

    return make_synthetic(num_users=30, num_items=50, feature_dim=12, num_pairs=200, num_negatives=20, seed=3)


def test_plain_tf_baseline_trains_exactly_like_vbpr():
    """The plain-TF yardstick is the same model: same weights after the same batches."""
    from amr_tf.data import TripletSampler
    from amr_tf.training import build_model
    from benchmarks.plain_tf import PlainVBPR

    ds = _tiny()
    model = build_model("VBPR", ds, embed_dim=8, regs=(0.1, 1e-3, 0.01), learning_rates=(0.05, 0.05, 0.05), seed=0)
    plain = PlainVBPR(model.P.numpy(), model.Q.numpy(), model.E.numpy(), ds.features, regs=model.regs,
                      learning_rates=model.learning_rates)
    sampler = TripletSampler(ds, seed=0)
    for epoch in range(2):
        for u, i, j in sampler.batches(epoch, 64):
            model.train_on_batch((u, i, j))
        plain.train_epoch(*sampler.sample_epoch(epoch), 64)
    for name in "PQE":
        np.testing.assert_allclose(getattr(plain, name).numpy(), getattr(model, name).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("projection_gradient", [False, True])
def test_plain_tf_projection_gradient_variant_is_the_same_model(projection_gradient):
    from amr_tf.data import TripletSampler
    from amr_tf.training import build_model
    from benchmarks.plain_tf import PlainVBPR

    ds = _tiny()
    model = build_model("VBPR", ds, embed_dim=8, seed=0)
    plain = PlainVBPR(model.P.numpy(), model.Q.numpy(), model.E.numpy(), ds.features, regs=model.regs,
                      learning_rates=model.learning_rates, projection_gradient=projection_gradient)
    u, i, j = TripletSampler(ds, seed=0).sample_epoch(0)
    model.train_on_batch((u, i, j))
    plain.step(u, i, j)
    for name in "PQE":
        np.testing.assert_allclose(getattr(plain, name).numpy(), getattr(model, name).numpy(), rtol=1e-5, atol=1e-7)


def test_original_amr_graph_baseline_trains_exactly_like_amr():
    """The straightforward original graph (per-row lookups, dense items x F adversary) is the same model."""
    from amr_tf.data import TripletSampler
    from amr_tf.training import build_model
    from benchmarks.plain_tf import OriginalAMR

    ds = _tiny()
    model = build_model("AMR", ds, embed_dim=8, regs=(0.1, 1e-3, 0.01), learning_rates=(0.05, 0.05, 0.05),
                        eps=0.5, seed=0)
    original = OriginalAMR(model.P.numpy(), model.Q.numpy(), model.E.numpy(), ds.features, eps=0.5,
                           regs=model.regs, learning_rates=model.learning_rates)
    sampler = TripletSampler(ds, seed=0)
    for u, i, j in sampler.batches(0, 64):
        want = float(model.pairwise_losses(u, i, j)["loss"])
        assert abs(float(original.step(u, i, j)) - want) <= 1e-5 * abs(want)
        model.train_on_batch((u, i, j))
    for name in "PQE":
        np.testing.assert_allclose(getattr(original, name).numpy(), getattr(model, name).numpy(), rtol=2e-5, atol=1e-7)


def test_per_user_baseline_ranks_like_the_vectorised_evaluation():
    from amr_tf.evaluation import rank_test_items
    from amr_tf.models import VBPR
    from benchmarks.plain_tf import PerUserEvaluator

    ds = _tiny()
    model = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=4, seed=0, init_stddev=0.5)
    loop = PerUserEvaluator(model, ds)
    assert loop.ranks(range(ds.num_users)).tolist() == rank_test_items(model, ds).tolist()


def test_sampled_evaluation_by_gathering_candidates_equals_scoring_all_items():
    """Large catalogues gather the candidates' vectors instead of scoring every item: same ranks."""
    from amr_tf.data import AmrDataset
    from amr_tf.evaluation import _GATHER_RATIO, rank_test_items

    rng = np.random.default_rng(0)
    users, items, n = 37, 2000, 11
    assert items > _GATHER_RATIO * n  # the gather path is taken
    cands = np.stack([rng.choice(items, n, replace=False) for _ in range(users)])
    ds = AmrDataset(num_users=users, num_items=items, features=np.zeros((items, 1), np.float32),
                    train_pairs=np.array([[0, 0]]), test_candidates=cands)

    class Fixed:
        u = rng.normal(size=(users, 6)).astype(np.float32)
        i = rng.normal(size=(items, 6)).astype(np.float32)

        def user_vectors(self):
            return self.u

        def item_vectors(self, features=None):
            return self.i

    model = Fixed()
    want = [int(np.sum(s[1:] >= s[0])) for s in (model.i[c] @ model.u[k] for k, c in enumerate(cands))]
    assert rank_test_items(model, ds).tolist() == want
    assert rank_test_items(model, ds, max_chunk_entries=3 * n * 6).tolist() == want  # several chunks


@pytest.mark.parametrize("batch_size", [1, 7, 64, 203, 500])
def test_triplet_stream_is_the_samplers_batches(batch_size):
    """The tf.data stream (one NumPy call per epoch, sliced in-graph) yields exactly the sampler's batches."""
    from amr_tf.data import TripletSampler, make_synthetic, triplet_dataset

    ds = make_synthetic(num_users=40, num_items=60, feature_dim=12, num_pairs=203, num_negatives=20, seed=3)
    sampler = TripletSampler(ds, seed=5)
    stream = iter(triplet_dataset(sampler, batch_size, initial_epoch=3))
    for epoch in range(3, 6):
        for want in sampler.batches(epoch, batch_size):
            (got,) = next(stream)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.numpy(), w)


def test_steps_per_execution_divides_the_epoch():
    from amr_tf.training import steps_per_execution_for

    assert steps_per_execution_for(13) == 13
    assert steps_per_execution_for(104) == 104
    assert steps_per_execution_for(1000, limit=256) == 250
    assert steps_per_execution_for(257, limit=256) == 1  # a prime: one step per call
    for steps in range(1, 600):
        assert steps % steps_per_execution_for(steps) == 0


def test_fit_restores_the_model_and_reuses_its_traced_function(tiny_dataset):
    from amr_tf import training
    from amr_tf.training import build_model, fit

    model = build_model("VBPR", tiny_dataset, embed_dim=4, seed=0)
    fit(model, tiny_dataset, epochs=1, batch_size=64, verbose=0)
    assert model.steps_per_execution == 1 and model.train_function is None  # as compiled
    cached = dict(training._train_functions[model])
    assert len(cached) == 1
    fit(model, tiny_dataset, epochs=2, initial_epoch=1, batch_size=64, verbose=0)
    assert dict(training._train_functions[model]) == cached  # the same traced function, not retraced
    model.compile()  # new optimisers: the old traced function must not be reused
    fit(model, tiny_dataset, epochs=3, initial_epoch=2, batch_size=64, verbose=0)
    assert list(training._train_functions[model].values()) != list(cached.values())


def test_features_are_stored_once_and_read_by_rows(tiny_dataset):
    from amr_tf.models import AMR

    model = AMR(tiny_dataset.num_users, tiny_dataset.num_items, tiny_dataset.features, embed_dim=4, seed=0)
    assert isinstance(model.features, tf.Variable) and not model.features.trainable
    assert all(w is not model.features for w in model.weights)  # not a Keras weight: never saved
    np.testing.assert_array_equal(model.features.numpy(), tiny_dataset.features)
    full = model.item_vectors().numpy()
    chunked = (model.Q + model.visual_vectors(chunk_bytes=4 * tiny_dataset.feature_dim * 7)).numpy()
    np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(full, model.Q.numpy() + tiny_dataset.features @ model.E.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (3, 4)])
def test_call_computes_only_the_requested_items(tiny_dataset, shape):
    from amr_tf.models import VBPR

    ds = tiny_dataset
    model = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=4, seed=0, init_stddev=0.3)
    rng = np.random.default_rng(0)
    items = rng.integers(0, ds.num_items, shape)
    users = rng.integers(0, ds.num_users, shape[:1])
    got = model((users, items)).numpy()
    v = model.item_vectors().numpy()[items]
    p = model.P.numpy()[users]
    want = np.einsum("bk,bnk->bn", p, v) if len(shape) == 2 else np.sum(p * v, axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
