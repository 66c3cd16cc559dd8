"""reproduce.sparsity: the per-user cap on training pairs, the item buckets, selection on validation,
and the quick mode end to end on the synthetic dataset."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from amr_tf.data import carve_holdout, make_synthetic
from amr_tf.errors import AmrError
from reproduce import sparsity


def distinct_items(ds):
    m = ds.train_matrix
    return [set(m.indices[m.indptr[u]:m.indptr[u + 1]].tolist()) for u in range(ds.num_users)]


@pytest.fixture(scope="module")
def ds():
    """A small synthetic dataset with a validation split and some repeated pos.txt lines."""
    base = make_synthetic(num_users=60, num_items=120, feature_dim=16, num_pairs=900, num_negatives=30, seed=5)
    base = carve_holdout(base, seed=1)
    repeated = base.train_pairs[::7]  # a repeated (user, item) line, as pos.txt may have
    return dataclasses.replace(base, train_pairs=np.concatenate([base.train_pairs, repeated]))


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_cap_keeps_at_most_n_items_per_user_and_never_a_new_pair(ds, n):
    capped = sparsity.cap_user_pairs(ds, n, seed=3)
    before, after = distinct_items(ds), distinct_items(capped)
    for u in range(ds.num_users):
        assert after[u] <= before[u]
        assert len(after[u]) == min(n, len(before[u])), u  # exactly the cap, or all of a smaller user's items
        if before[u]:
            assert after[u], f"user {u} lost every training pair"
    # every pos.txt line of a kept pair stays (duplicates included), no other line
    key = lambda p: p[:, 0] * ds.num_items + p[:, 1]  # noqa: E731
    kept = set(key(capped.train_pairs).tolist())
    np.testing.assert_array_equal(np.sort(key(capped.train_pairs)), np.sort(key(ds.train_pairs)[np.isin(key(ds.train_pairs), list(kept))]))


def test_cap_leaves_validation_test_and_features_untouched(ds):
    capped = sparsity.cap_user_pairs(ds, 1, seed=0)
    assert capped.validation_candidates is ds.validation_candidates
    np.testing.assert_array_equal(capped.validation_users, ds.validation_users)
    np.testing.assert_array_equal(capped.test_candidates, ds.test_candidates)
    assert capped.features is ds.features and capped.validation == ds.validation
    assert (capped.num_users, capped.num_items) == (ds.num_users, ds.num_items)
    assert capped.fingerprint != ds.fingerprint
    assert sparsity.cap_user_pairs(ds, None, seed=0) is ds  # n = all


def test_cap_is_seeded_deterministic_and_nested(ds):
    a = sparsity.cap_user_pairs(ds, 2, seed=7)
    b = sparsity.cap_user_pairs(ds, 2, seed=7)
    np.testing.assert_array_equal(a.train_pairs, b.train_pairs)
    other = sparsity.cap_user_pairs(ds, 2, seed=8)
    assert not np.array_equal(a.train_pairs, other.train_pairs)
    for small, large in ((1, 2), (2, 5), (5, 10)):
        s, big = distinct_items(sparsity.cap_user_pairs(ds, small, 7)), distinct_items(sparsity.cap_user_pairs(ds, large, 7))
        assert all(x <= y for x, y in zip(s, big)), (small, large)


def test_cap_draws_each_item_uniformly(ds):
    """Over 2,000 seeds, a user's single kept item is each of its items about equally often."""
    user = int(np.argmax([len(s) for s in distinct_items(ds)]))
    items = sorted(distinct_items(ds)[user])
    counts = dict.fromkeys(items, 0)
    rows = ds.train_pairs[:, 0] == user
    sub = dataclasses.replace(ds, train_pairs=ds.train_pairs[rows])
    for seed in range(2000):
        kept = set(sparsity.cap_user_pairs(sub, 1, seed).train_pairs[:, 1].tolist())
        assert len(kept) == 1
        counts[kept.pop()] += 1
    expected = 2000 / len(items)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    from scipy import stats

    assert stats.chi2.sf(chi2, len(items) - 1) > 1e-3, counts


def test_cap_rejects_a_cap_below_one(ds):
    with pytest.raises(AmrError, match=">= 1"):
        sparsity.cap_user_pairs(ds, 0, seed=0)


def test_item_buckets_match_a_plain_count(ds):
    buckets = sparsity.item_bucket_of_users(ds)
    for u, item in enumerate(ds.test_candidates[:, 0]):
        count = sum(1 for _, i in ds.train_pairs.tolist() if i == item)
        lo, hi = sparsity.ITEM_BUCKETS[buckets[u]]
        assert lo <= count and (hi is None or count <= hi), (u, count)
    assert [sparsity.bucket_label(b) for b in range(len(sparsity.ITEM_BUCKETS))] == ["0", "1-4", "5-19", "20-99", "100+"]


def test_schedule_counts_steps_not_epochs():
    s = dataclasses.replace(sparsity.FULL, steps_per_eval=300, batch_size=512, max_eval_every=10)
    assert sparsity.schedule(53000, s, 10) == (3, 30)  # 104 steps per epoch
    assert sparsity.schedule(16000, s, 10) == (9, 90)  # 32 steps per epoch
    assert sparsity.schedule(942, s, 10) == (10, 100)  # 2 steps per epoch: capped at 10 epochs
    assert sparsity.schedule(10**6, s, 4) == (1, 4)  # at least one epoch between evaluations


def test_ns_flag():
    assert sparsity._ns("all,5,1,5") == (1, 5, None)
    for bad in ("0", "x", "1,-2"):
        with pytest.raises(Exception):
            sparsity._ns(bad)


def test_training_keeps_the_weights_of_the_best_validation_evaluation(ds):
    """Trained past its validation peak, the run's model is the one of the best evaluation, not the last."""
    s = dataclasses.replace(sparsity.QUICK, embed_dim=8, learning_rates=(0.5, 0.5, 0.5), steps_per_eval=2,
                            patience=50, max_evals=12)
    record = sparsity.train_selected(ds, "VBPR", seed=0, s=s)
    history = record["history"]
    assert len(history) == 12 and record["best_epoch"] == max(history, key=lambda h: h["val_NDCG@10"])["epoch"]
    assert record["best_epoch"] < record["epochs_run"], "precondition: the last evaluation is not the best"
    from amr_tf.evaluation import ndcg

    best = next(h for h in history if h["epoch"] == record["best_epoch"])
    assert ndcg(record["val_ranks"], 10) == pytest.approx(best["val_NDCG@10"], abs=1e-12)
    assert ndcg(record["val_ranks"], 10) > history[-1]["val_NDCG@10"]


def test_verdicts_need_both_tests():
    rows = [{"a": "AMR", "b": "VBPR", "metric": "NDCG@10", "cap": c, "diff": d, "seeds_t_p": pt, "users_wilcoxon_p": pu}
            for c, d, pt, pu in (("1", 0.01, 0.01, 0.001), ("5", -0.01, 0.01, 0.01), ("all", 0.01, 0.2, 0.001))]
    (line,) = sparsity.verdicts(None, rows)
    assert "better at n = 1;" in line and "worse at n = 5;" in line and "no significant difference at n = all" in line


# ---------------------------------------------------------------------------- end to end (quick mode)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("sparsity")
    assert sparsity.main(["--quick", "--dataset", "synthetic", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_quick_mode_end_to_end(quick):
    folder = quick / "sparsity"
    for f in ("table.md", "results.csv", "runs.csv", "comparison.csv", "items.csv", "figure.png", "manifest.json"):
        assert (folder / f).is_file() and (folder / f).stat().st_size > 0, f
    assert (folder / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["mode"] == "quick" and m["seeds"] == [0, 1] and m["validation"].startswith("holdout")
    assert "smoke-test numbers" in (folder / "table.md").read_text()
    runs = read_csv(folder / "runs.csv")
    caps = sorted({r["cap"] for r in runs})
    assert caps == ["1", "all"] and {r["model"] for r in runs} == set(sparsity.MODEL_NAMES) | {"Popularity"}
    # the selected epoch is one that was evaluated, and never after the last
    for r in runs:
        if r["model"] != "Popularity":  # the untrained reference has no epochs
            assert int(r["best_epoch"]) % int(r["eval_every"]) == 0 and 0 < int(r["best_epoch"]) <= int(r["epochs_run"])
    # results.csv is the mean/std of runs.csv, and the paired t-test is SciPy's on the per-seed values
    from scipy import stats

    for row in read_csv(folder / "results.csv"):
        vals = [float(r["NDCG@10"]) for r in runs if r["model"] == row["model"] and r["cap"] == row["cap"]]
        assert math.isclose(float(row["NDCG@10_mean"]), np.mean(vals), rel_tol=1e-12)
    for row in read_csv(folder / "comparison.csv"):
        if row["metric"] != "NDCG@10":
            continue
        a = [float(r["NDCG@10"]) for r in sorted(runs, key=lambda r: r["seed"]) if r["model"] == row["a"] and r["cap"] == row["cap"]]
        b = [float(r["NDCG@10"]) for r in sorted(runs, key=lambda r: r["seed"]) if r["model"] == row["b"] and r["cap"] == row["cap"]]
        assert math.isclose(float(row["diff"]), np.mean(a) - np.mean(b), rel_tol=1e-9, abs_tol=1e-12)
        want = stats.ttest_rel(a, b).pvalue
        assert (math.isnan(want) and row["seeds_t_p"] in ("", "nan")) or math.isclose(float(row["seeds_t_p"]), want, rel_tol=1e-9)


@pytest.mark.slow
def test_quick_rerun_takes_every_run_from_the_cache(quick, tmp_path):
    out = tmp_path / "again"
    assert sparsity.main(["--quick", "--dataset", "synthetic", "--out", str(out), "--cache", str(quick / "cache")]) == 0
    m = json.loads((out / "sparsity" / "manifest.json").read_text())
    assert m["runs_trained"] == 0 and m["runs_from_cache"] > 0
    assert read_csv(out / "sparsity" / "results.csv") == read_csv(quick / "sparsity" / "results.csv")


@pytest.mark.slow
def test_cached_only_tabulates_what_exists_and_lists_the_rest(quick, tmp_path):
    out = tmp_path / "partial"
    args = ["--quick", "--dataset", "synthetic", "--out", str(out), "--cache", str(quick / "cache"), "--cached-only"]
    assert sparsity.main(args + ["--seeds", "3"]) == 0  # seed 2 was never trained
    m = json.loads((out / "sparsity" / "manifest.json").read_text())
    assert m["runs_trained"] == 0
    assert sorted(m["runs_missing"]) == sorted(f"n={c} {model} seed 2" for c in ("1", "all")
                                               for model in ("MF-BPR", "DUIF", "VBPR", "AMR"))
    table = (out / "sparsity" / "table.md").read_text()
    assert "(2 of 3 seeds)" in table and "**Not run**" in table
    # the tests pair the two seeds both models have, exactly as in the complete run
    full = {(r["cap"], r["a"], r["b"], r["metric"]): r for r in read_csv(quick / "sparsity" / "comparison.csv")}
    for r in read_csv(out / "sparsity" / "comparison.csv"):
        assert r["seeds_n"] == "2" and r["seeds_t_p"] == full[(r["cap"], r["a"], r["b"], r["metric"])]["seeds_t_p"]


def test_bad_flags_fail_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sparsity.main(["--quick", "--ns", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        sparsity.main(["--quick", "--models", "VBPR,BPR", "--out", str(tmp_path)])
    assert sparsity.main(["--quick", "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")


def test_per_user_metrics_once_per_record_and_split(monkeypatch):
    """The tables read a record's per-user metrics from one computation per record and split; a
    user subset (the item arm's buckets) is a slice of it, equal to recomputing on the subset."""
    from reproduce import common
    from reproduce import sparsity as sp

    calls = []
    real = common.per_user_metrics
    monkeypatch.setattr(common, "per_user_metrics", lambda ranks: calls.append(1) or real(ranks))
    rng = np.random.default_rng(0)
    a = {"test_ranks": rng.integers(0, 30, 50).tolist(), "val_ranks": rng.integers(0, 30, 50).tolist(),
         "model": "VBPR", "seed": 0, "train_seconds": 1.0}
    b = dict(a)  # equal content, another record
    per_user = sp.PerUserMetrics()
    for _ in range(3):
        per_user(a), per_user(a, "val"), per_user(b)
    assert len(calls) == 3
    for split in ("test", "val"):
        want = real(a[f"{split}_ranks"])
        assert all(np.array_equal(per_user(a, split)[m], want[m]) for m in want)
    mask = np.arange(50) % 3 == 0
    run = sp._as_run(a, per_user, mask=mask)
    want = real(np.asarray(a["test_ranks"])[mask])
    assert np.array_equal(run.ranks(None), np.asarray(a["test_ranks"])[mask])
    assert all(np.array_equal(run.per_user(None)[m], want[m]) for m in want)
    assert len(calls) == 3
