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
    for model in ("VBPR", "AMR"):
        for seed in (0.0, 1.0):
            clean = next(r for r in overall if r["model"] == model and r["seed"] == seed)
            for attack in ("grad", "pgd", "random", "grad-test"):
                at0 = next(r for r in robust if r["model"] == model and r["seed"] == seed and r["attack"] == attack
                           and r["eps"] == 0.0)
                for metric in common.METRICS:  # eps = 0 is the clean evaluation, exactly
                    assert at0[metric] == clean[metric], (model, seed, attack, metric)
            end = next(r for r in curve if r["model"] == model and r["seed"] == seed and r["epoch"] == last_epoch)
            assert all(end[m] == clean[m] for m in common.METRICS)
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
    assert read_csv(rerun / "overall" / "results.csv") == read_csv(out / "overall" / "results.csv")


def test_bad_arguments_fail_cleanly(tmp_path, capsys):
    from reproduce import robustness
    from reproduce.__main__ import main as dispatch

    assert robustness.main(ARGS + ["--out", str(tmp_path), "--pretrained", str(tmp_path / "nope")]) == 2
    assert "no pretrained checkpoint" in capsys.readouterr().err
    assert dispatch(["nonsense"]) == 2
    with pytest.raises(SystemExit):
        dispatch(["overall", "--seeds", "0"])
