"""reproduce.long_budget: reads two CLI runs' metrics.json, checks they are comparable, and
summarises each curve without selecting an epoch."""

import json

import pytest

from reproduce import long_budget


def _run(path, model, ndcg, seed=0, fingerprint="f", pretrained="/x/vbpr-movielens-posters"):
    path.mkdir(parents=True)
    evals = [{"epoch": 50 * k, "NDCG@10": v, "HR@10": 2 * v} for k, v in enumerate(ndcg)]
    # Stored out of order: the reader must sort by epoch.
    record = {"model": model, "complete": True, "epochs": 50 * (len(ndcg) - 1), "train_seconds": 12.0,
              "seed": seed, "dataset": {"fingerprint": fingerprint}, "config": {"pretrained": pretrained},
              "command": "python -m amr_tf train", "evaluations": evals[::-1]}
    (path / "metrics.json").write_text(json.dumps(record))
    return path


def test_summary_and_outputs(tmp_path):
    amr = _run(tmp_path / "amr", "AMR", [0.10, 0.13, 0.12])
    vbpr = _run(tmp_path / "vbpr", "VBPR", [0.10, 0.09, 0.08])
    out = tmp_path / "out"
    assert long_budget.main(["--amr", str(amr), "--vbpr", str(vbpr), "--out", str(out)]) == 0
    data = json.loads((out / "long_budget.json").read_text())
    s = data["summary"]["AMR"]["NDCG@10"]
    assert (s["first"], s["last"], s["min"], s["max"]) == (0.10, 0.12, 0.10, 0.13)
    assert data["summary"]["VBPR"]["HR@10"]["last"] == pytest.approx(0.16)
    assert data["summary"]["AMR"]["last_epoch"] == 100
    assert (out / "long_budget.png").stat().st_size > 0
    assert "0.1000 → 0.1200 (0.1000–0.1300)" in (out / "long_budget.md").read_text()


@pytest.mark.parametrize("change", [{"seed": 1}, {"fingerprint": "g"}, {"pretrained": "/x/other"}])
def test_incomparable_runs_are_refused(tmp_path, capsys, change):
    amr = _run(tmp_path / "amr", "AMR", [0.1, 0.1])
    vbpr = _run(tmp_path / "vbpr", "VBPR", [0.1, 0.1], **change)
    assert long_budget.main(["--amr", str(amr), "--vbpr", str(vbpr), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_wrong_model_or_missing_file(tmp_path, capsys):
    amr = _run(tmp_path / "amr", "VBPR", [0.1])
    assert long_budget.main(["--amr", str(amr), "--vbpr", str(amr), "--out", str(tmp_path / "o")]) == 2
    assert "expected AMR" in capsys.readouterr().err
    assert long_budget.main(["--amr", str(tmp_path / "nope"), "--vbpr", str(amr), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
