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
    for row in ("| VBPR |", "| AMR |", "| AMR adversary=tape |", "| AMR, original graph (plain TF) |",
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


@pytest.mark.parametrize("projection_gradient", [False, True])
def test_plain_tf_baseline_trains_exactly_like_vbpr(projection_gradient, tiny_dataset):
    """The plain-TF yardstick (either way of taking the projection's gradient) is the same model:
    same weights after the same batches."""
    from amr_tf.data import TripletSampler
    from amr_tf.training import build_model
    from benchmarks.plain_tf import PlainVBPR

    ds = tiny_dataset
    model = build_model("VBPR", ds, embed_dim=8, regs=(0.1, 1e-3, 0.01), learning_rates=(0.05, 0.05, 0.05), seed=0)
    plain = PlainVBPR(model.P.numpy(), model.Q.numpy(), model.E.numpy(), ds.features, regs=model.regs,
                      learning_rates=model.learning_rates, projection_gradient=projection_gradient)
    sampler = TripletSampler(ds, seed=0)
    for epoch in range(2):
        for u, i, j in sampler.batches(epoch, 64):
            model.train_on_batch((u, i, j))
        plain.train_epoch(*sampler.sample_epoch(epoch), 64)
    for name in "PQE":
        np.testing.assert_allclose(getattr(plain, name).numpy(), getattr(model, name).numpy(), rtol=1e-5, atol=1e-7)


def test_original_amr_graph_baseline_trains_exactly_like_amr(tiny_dataset):
    """The straightforward original graph (per-row lookups, dense items x F adversary) is the same model."""
    from amr_tf.data import TripletSampler
    from amr_tf.training import build_model
    from benchmarks.plain_tf import OriginalAMR

    ds = tiny_dataset
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


def test_per_user_baseline_ranks_like_the_vectorised_evaluation(tiny_dataset):
    from amr_tf.evaluation import rank_test_items
    from amr_tf.models import VBPR
    from benchmarks.plain_tf import PerUserEvaluator

    ds = tiny_dataset
    model = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=4, seed=0, init_stddev=0.5)
    loop = PerUserEvaluator(model, ds)
    assert loop.ranks(range(ds.num_users)).tolist() == rank_test_items(model, ds).tolist()
