"""The reproduction scripts in --quick mode on the synthetic dataset: outputs exist and agree.

One module-scoped run of ``python -m reproduce.all --quick`` (all five experiments, sharing the
trained models) feeds most tests; the others rerun single experiments against its cache.
"""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from reproduce import EXPERIMENTS, common

ARGS = ["--quick", "--dataset", "synthetic"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    from reproduce import all as run_all

    root = tmp_path_factory.mktemp("results")
    assert run_all.main(ARGS + ["--out", str(root)]) == 0
    return root


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k, v in row.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def manifest(out, name):
    return json.loads((out / name / "manifest.json").read_text())


def scalars(logdir):
    found = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        run = str(path.parent.relative_to(logdir))
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
                found.setdefault(run, {}).setdefault(v.tag, []).append((event.step, float(value)))
    return found


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_writes_its_outputs(out, name):
    folder = out / name
    for f in ("table.md", "results.csv", "runs.csv", "figure.png", "manifest.json"):
        assert (folder / f).is_file() and (folder / f).stat().st_size > 0, f
    assert (folder / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = manifest(out, name)
    assert m["experiment"] == name and m["mode"] == "quick" and m["seeds"] == [0, 1]
    assert m["dataset"]["fingerprint"] and m["dataset"]["name"] == "synthetic"
    assert m["provenance"]["tensorflow"] == tf.__version__ and "git_commit" in m["provenance"]
    assert m["command"].startswith("python -m reproduce.all --quick")
    assert m["pretrained"]["source"] == "trained here" and m["runtime_seconds"] > 0
    assert set(m["files"]) >= {"table.md", "results.csv", "runs.csv", "figure.png", "tensorboard/"}
    assert scalars(folder / "tensorboard"), "no TensorBoard scalars"


def test_report_links_every_piece(out):
    report = (out / "REPORT.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert links
    for link in links:
        assert (out / link).exists(), link
    for name in EXPERIMENTS:
        assert f"({name}/table.md)" in report and f"({name}/figure.png)" in report


def test_csv_markdown_and_manifest_agree(out):
    """results.csv == the manifest's numbers == mean/std of runs.csv, and the table shows them."""
    keys = {"overall": ["model"], "robustness": ["model", "attack", "eps"], "eps_lambda": ["eps", "adv_weight"],
            "training_curve": ["model", "epoch"]}
    for name, by in keys.items():
        results = read_csv(out / name / "results.csv")
        runs = read_csv(out / name / "runs.csv")
        table = (out / name / "table.md").read_text()
        from_manifest = manifest(out, name)["results"]["table"]
        assert len(from_manifest) == len(results)
        for row, mrow in zip(results, from_manifest):
            for metric in common.METRICS:
                assert row[f"{metric}_mean"] == mrow[f"{metric}_mean"]
                group = [r[metric] for r in runs if all(r[k] == row[k] for k in by)]
                assert len(group) == row["n"]
                mean, std = common.mean_std(group)
                assert math.isclose(row[f"{metric}_mean"], mean, rel_tol=1e-12, abs_tol=1e-15)
                assert math.isclose(row[f"{metric}_std"], std, rel_tol=1e-9, abs_tol=1e-12)
            if name in ("overall", "robustness") or (name == "eps_lambda" and row["adv_weight"] > 0):
                assert common.fmt_ms(row["NDCG@10_mean"], row["NDCG@10_std"]) in table
    sig = read_csv(out / "significance" / "results.csv")
    table = (out / "significance" / "table.md").read_text()
    assert [r["comparison"] for r in sig[:6]] == ["AMR vs VBPR"] * 6
    assert {r["comparison"] for r in sig} == {"AMR vs VBPR", "AMR vs VBPR (pretrained)", "VBPR vs MF-BPR"}
    for row, mrow in zip(sig, manifest(out, "significance")["results"]["comparisons"]["AMR vs VBPR"]):
        assert row["a_mean"] == mrow["a_mean"] and row["metric"] == mrow["metric"]
        assert common.fmt_ms(row["a_mean"], row["a_std"]) in table


def test_experiments_share_the_same_runs(out):
    """The overall table, the robustness at eps = 0, the curve's last epoch and the grid agree run by run."""
    overall = read_csv(out / "overall" / "runs.csv")
    robust = read_csv(out / "robustness" / "runs.csv")
    curve = read_csv(out / "training_curve" / "runs.csv")
    grid = read_csv(out / "eps_lambda" / "runs.csv")
    settings = manifest(out, "overall")["settings"]
    for name in ("robustness", "training_curve", "significance"):  # every model came from overall's runs
        assert manifest(out, name)["training_seconds"]["trained_by_this_experiment"] == 0.0
    last_epoch = max(r["epoch"] for r in curve)
    assert last_epoch == settings["finetune_epochs"]
    assert {r["model"] for r in overall} == {"Popularity", "MF-eALS", "MF-BPR", "DUIF", "VBPR (pretrained)", "VBPR",
                                             "AMR"}
    for model in ("VBPR", "AMR"):
        for seed in (0.0, 1.0):
            clean = next(r for r in overall if r["model"] == model and r["seed"] == seed)
            for attack in ("grad", "pgd", "random", "grad-test"):
                at0 = next(r for r in robust if r["model"] == model and r["seed"] == seed and r["attack"] == attack
                           and r["eps"] == 0.0)
                for metric in common.METRICS:  # eps = 0 is the clean evaluation, exactly
                    assert at0[metric] == clean[metric], (model, seed, attack, metric)
            # the overall numbers are the curve's at the epoch chosen on validation
            chosen = next(r for r in curve if r["model"] == model and r["seed"] == seed
                          and r["epoch"] == clean["selected_epoch"])
            assert all(math.isclose(chosen[m], clean[m], abs_tol=1e-12) for m in common.METRICS)
            cell = next(r for r in grid if r["seed"] == seed and (
                (model == "VBPR" and r["adv_weight"] == 0.0)
                or (model == "AMR" and r["eps"] == settings["eps"] and r["adv_weight"] == settings["adv_weight"])))
            assert all(cell[m] == clean[m] for m in common.METRICS)


def test_random_noise_hurts_less_than_the_gradient_attack(out):
    agg = read_csv(out / "robustness" / "results.csv")
    eps_max = max(r["eps"] for r in agg)

    def drop(model, attack, metric, eps=None):
        rows = [r for r in agg if r["model"] == model and r["attack"] == attack and r["eps"] > 0
                and (eps is None or r["eps"] == eps)]
        return sum(r[f"{metric}_drop_pct"] for r in rows)

    for model in ("VBPR", "AMR"):
        for metric in ("HR@10", "NDCG@10"):
            for attack in ("grad", "pgd", "grad-test"):
                assert drop(model, attack, metric, eps_max) > drop(model, "random", metric, eps_max) + 1.0
                assert drop(model, attack, metric) > drop(model, "random", metric)
            # the strongest attack of all at the largest budget really hurts
            assert drop(model, "pgd", metric, eps_max) > 20.0


def test_pgd_maximises_its_objective_at_least_as_well_as_one_step(out):
    runs = read_csv(out / "robustness" / "runs.csv")
    for r in runs:
        if r["attack"] == "pgd":
            one = next(x for x in runs if x["attack"] == "grad" and all(x[k] == r[k] for k in ("model", "seed", "eps")))
            assert r["bpr_loss"] >= one["bpr_loss"] * (1 - 1e-6), r
            if r["eps"] == 0:
                assert r["bpr_loss"] == one["bpr_loss"]


def test_tensorboard_scalars_match_the_csv(out):
    curve = read_csv(out / "training_curve" / "runs.csv")
    tb = scalars(out / "training_curve" / "tensorboard")
    points = tb["AMR/seed1"]["NDCG@10"]
    want = [(int(r["epoch"]), r["NDCG@10"]) for r in curve if r["model"] == "AMR" and r["seed"] == 1.0]
    assert [p[0] for p in points] == [w[0] for w in want]
    np.testing.assert_allclose([p[1] for p in points], [w[1] for w in want], rtol=1e-6)
    robust = scalars(out / "robustness" / "tensorboard")
    assert sorted(s for s, _ in robust["VBPR/pgd"]["HR@10"]) == [0, 10, 20, 50, 100, 200, 500, 1000]


def test_a_standalone_rerun_reuses_the_cache_and_reproduces_the_numbers(out, tmp_path):
    """Rerun overall with the cached pretrained VBPR passed explicitly: every run comes from the cache."""
    from reproduce import overall

    pre = next(r for r in manifest(out, "overall")["runs"] if r["label"] == "VBPR (pretrained)")
    ckpt = out / "cache" / pre["key"] / "model"
    rerun = tmp_path / "rerun"
    args = ARGS + ["--out", str(rerun), "--cache", str(out / "cache"), "--pretrained", str(ckpt)]
    assert overall.main(args) == 0
    m = manifest(rerun, "overall")
    assert m["pretrained"]["source"] == "given"
    assert m["training_seconds"]["trained_by_this_experiment"] == 0.0
    assert all(r["cached"] for r in m["runs"])
    columns = ["model", "n", "budget"] + [f"{m}_{x}" for m in common.METRICS for x in ("mean", "std")]
    assert ([{c: r[c] for c in columns} for r in read_csv(rerun / "overall" / "results.csv")]
            == [{c: r[c] for c in columns} for r in read_csv(out / "overall" / "results.csv")])


def test_bad_arguments_fail_cleanly(tmp_path, capsys):
    from reproduce import robustness
    from reproduce.__main__ import main as dispatch

    assert robustness.main(ARGS + ["--out", str(tmp_path), "--pretrained", str(tmp_path / "nope")]) == 2
    assert "no pretrained checkpoint" in capsys.readouterr().err
    assert dispatch(["nonsense"]) == 2
    with pytest.raises(SystemExit):
        dispatch(["overall", "--seeds", "0"])


# ---------------------------------------------------------------------------- the honest protocol


def test_every_epoch_and_setting_is_chosen_on_validation(out):
    """Each run's selected epoch is the argmax of val_NDCG@10 over its evaluations (first on ties),
    never the test's; each grid's chosen setting has the best validation score; the budgets are equal
    where models are compared."""
    settings = manifest(out, "overall")["settings"]
    runs = manifest(out, "overall")["runs"]
    overall = read_csv(out / "overall" / "runs.csv")
    for run in runs:
        if run["key"] is None or run["label"] == "VBPR (pretrained)" and run["params"].get("path"):
            continue
        history = json.loads((out / "cache" / run["key"] / "model.json").read_text())["history"]
        if run["label"] in ("VBPR", "AMR"):  # fine-tuned: chosen among the fine-tuned epochs (epoch 0 is its own row)
            history_from = [h for h in history if h["epoch"] >= 1]
        else:
            history_from = history
        best = max(history_from, key=lambda h: h["val_NDCG@10"])  # max returns the first of equal scores
        assert run["selected_epoch"] == best["epoch"], run["label"]
        assert [h["epoch"] for h in history][-1] == run["epochs"]
    budget = settings["pretrain_epochs"] + settings["finetune_epochs"]
    assert {r["epochs"] for r in runs if r["label"] in ("MF-BPR", "DUIF")} == {budget}
    assert {r["epochs"] for r in runs if r["label"] in ("VBPR", "AMR")} == {settings["finetune_epochs"]}
    grid = read_csv(out / "overall" / "grid.csv")
    for model in ("MF-eALS", "MF-BPR", "DUIF"):
        rows = [g for g in grid if g["model"] == model]
        assert len(rows) == len(settings[{"MF-eALS": "eals_grid", "MF-BPR": "mf_grid", "DUIF": "duif_grid"}[model]])
        chosen = [g for g in rows if g["chosen"] == "True"]
        assert len(chosen) == 1 and chosen[0]["val_NDCG@10"] == max(g["val_NDCG@10"] for g in rows)
        seed0 = next(r for r in overall if r["model"] == model and r["seed"] == 0.0)
        assert seed0["NDCG@10"] == chosen[0]["NDCG@10"]  # the table's seed-0 run is the chosen grid run
    lam = read_csv(out / "eps_lambda" / "results.csv")
    cells = [r for r in lam if r["adv_weight"] > 0]
    best = max(cells, key=lambda r: r["val_NDCG@10_mean"])
    assert manifest(out, "eps_lambda")["results"]["best"] == {"eps": best["eps"], "adv_weight": best["adv_weight"]}
    table = (out / "eps_lambda" / "table.md").read_text()
    assert "validation split" in table and "test split" in table and table.count("**(selected)**") == 4


def _selections(dataset):
    """Every choice a reproduction makes on ``dataset``: grid winners and selected epochs (quick settings)."""
    import dataclasses

    s = dataclasses.replace(common.QUICK, seeds=(0,), eals_epochs=3, pretrain_epochs=4, finetune_epochs=4,
                            eval_every=1, embed_dim=4)
    store = common.RunStore(dataset, s, None, {"source": "trained here", "path": None, "settings": {},
                                               "manifest_excerpt": {}}, log=lambda *_: None)
    out = {}
    for label in ("MF-eALS", "MF-BPR", "DUIF"):
        out[label] = store.select(label)
        run = store.scratch(label, 0)
        out[label + " epoch"] = run.selected_epoch
        out[label + " val"] = run.val_metrics(store)["NDCG@10"]
    for label in ("VBPR", "AMR"):
        run = store.finetuned(label, 0)
        out[label + " epoch"] = run.selected_epoch
        out[label + " val"] = run.val_metrics(store)["NDCG@10"]
        out[label + " test"] = run.metrics(store)["NDCG@10"]
    out["pretrained epoch"] = store.pretrained().selected_epoch
    return out


def test_a_poisoned_test_split_changes_no_choice():
    """Swap every user's test item with one of its negatives: the test numbers change, every choice
    (epochs, grid settings) and every validation score stays the same."""
    from amr_tf.data import carve_holdout, make_synthetic

    clean = carve_holdout(make_synthetic(num_users=60, num_items=90, feature_dim=8, num_pairs=600,
                                         num_negatives=20, seed=5))
    poisoned = carve_holdout(make_synthetic(num_users=60, num_items=90, feature_dim=8, num_pairs=600,
                                            num_negatives=20, seed=5))
    cands = np.array(poisoned.test_candidates)
    trained = np.bincount(poisoned.train_pairs[:, 1], minlength=poisoned.num_items) > 0
    for row in cands:  # the test item swaps places with a negative that has training pairs (stays warm)
        j = 1 + int(np.argmax(trained[row[1:]]))
        row[[0, j]] = row[[j, 0]]
    poisoned.test_candidates = cands
    # The original's cold-start rule reads the test items (documented); no item is cold here, so it is idle.
    assert not clean.cold_start_items.any() and not poisoned.cold_start_items.any()
    a, b = _selections(clean), _selections(poisoned)
    assert a["AMR test"] != b["AMR test"] or a["VBPR test"] != b["VBPR test"]  # the poison took effect
    assert {k: v for k, v in a.items() if not k.endswith("test")} == {k: v for k, v in b.items()
                                                                       if not k.endswith("test")}


# ---------------------------------------------------------------------------- the band and the report


def test_band_certified_below_every_attack(out):
    """The certified metric is never above any attack's result on the same model, seed and eps, the
    strongest attack found is the minimum of them, and the gap is non-negative."""
    band = read_csv(out / "robustness" / "band.csv")
    runs = read_csv(out / "robustness" / "runs.csv")
    settings = manifest(out, "robustness")["settings"]
    assert len(band) == 2 * len(settings["band_eps"]) * settings["band_seeds"]
    for b in band:
        attacks = [r for r in runs if r["model"] == b["model"] and r["seed"] == b["seed"] and r["eps"] == b["eps"]]
        assert len(attacks) == 4
        for m in ("HR@10", "NDCG@10"):
            assert b[f"certified_{m}"] <= b[f"shared_{m}"] + 1e-12
            assert b[f"certified_{m}"] <= min(r[m] for r in attacks) + 1e-12
            assert b[f"attacked_{m}"] <= min([b[f"shared_{m}"], b[f"previous_{m}"]]) + 1e-12
            assert b[f"previous_{m}"] == min(r[m] for r in attacks)
            assert b[f"gap_{m}"] >= -1e-12 and math.isclose(b[f"gap_{m}"], b[f"attacked_{m}"] - b[f"certified_{m}"])
    assert (out / "robustness" / "band.png").read_bytes()[:4] == b"\x89PNG"
    assert "## The band" in (out / "robustness" / "table.md").read_text()
    assert manifest(out, "robustness")["results"]["band"]


def test_report_opens_with_the_claims_and_marks_the_smoke_test(out):
    report = (out / "REPORT.md").read_text()
    head = report[: report.index("## What ran")]
    assert common.QUICK_WARNING.strip() in head and "## The paper's claims, measured" in head
    rows = [line for line in head.splitlines() if line.startswith("| ") and "the paper's claim" not in line]
    assert len(rows) == 8 and all(row.rstrip().endswith("withheld: smoke test (quick mode) |") for row in rows)
    for name in ("overall", "robustness", "eps_lambda", "training_curve", "significance"):
        assert common.QUICK_WARNING.strip() in (out / name / "table.md").read_text()
    assert "| experiment | wall (s) | trained here (s) |" in report
    assert "training used" not in report


def test_claim_rules_give_each_verdict():
    """The verdict rules on hand-made numbers: they can say holds, does not hold and the opposite."""
    from reproduce import claims

    def cmp_rows(diff, p):
        return [{"metric": "NDCG@10", "a_mean": 0.2 + diff, "a_std": 0.01, "b_mean": 0.2, "b_std": 0.01, "diff": diff,
                 "rel_improvement_pct": 100 * diff / 0.2, "seeds_n": 5, "seeds_t_p": p, "users_t_p": p}]

    def table(vbpr_drop, amr_drop, random_drop):
        rows = []
        for model, drop in (("VBPR", vbpr_drop), ("AMR", amr_drop)):
            for attack, d in (("grad", drop), ("pgd", drop), ("random", random_drop), ("grad-test", drop)):
                rows += [{"model": model, "attack": attack, "eps": 0.0, "HR@10_drop_pct": 0.0},
                         {"model": model, "attack": attack, "eps": 1.0, "HR@10_drop_pct": d}]
        return rows

    overall = {"comparison": cmp_rows(0.01, 0.01), "vbpr_vs_mf": cmp_rows(-0.02, 0.001),
               "vs_pretrained": cmp_rows(0.001, 0.5),
               "table": [{"model": "AMR", "NDCG@10_mean": 0.21}, {"model": "VBPR", "NDCG@10_mean": 0.2}]}
    robustness = {"table": table(40.0, 5.0, 1.0), "mean_feature_norm": 3.0, "band": []}
    verdicts = {c["claim"]: c["verdict"] for c in claims.claims({"overall": overall, "robustness": robustness}, "full")}
    assert verdicts["AMR is more accurate than VBPR (same budget)"] == "**holds**"
    assert verdicts["visual features help: VBPR beats MF-BPR"] == "**the opposite holds**"
    assert verdicts["adversarial fine-tuning improves the pretrained VBPR"] == "**does not hold**"
    assert verdicts["AMR is much more robust than VBPR"] == "**holds**"
    assert verdicts["VBPR is fragile to small purposeful feature perturbations"] == "**holds**"
    assert verdicts["a moderate adversary (eps, lambda) improves clean accuracy"] == "not run"
    robustness["table"] = table(40.0, 30.0, 20.0)
    overall["comparison"] = cmp_rows(0.01, 0.2)
    verdicts = {c["claim"]: c["verdict"] for c in claims.claims({"overall": overall, "robustness": robustness}, "full")}
    assert verdicts["AMR is much more robust than VBPR"] == "**does not hold**"
    assert verdicts["random noise of the same size barely matters"] == "**does not hold**"
    assert verdicts["AMR is more accurate than VBPR (same budget)"].startswith("**not significant**")
