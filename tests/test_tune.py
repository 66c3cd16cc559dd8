"""Issue 13, ``python -m amr_tf tune``: a KerasTuner search that selects on the validation split only.

The searches run on the tiny synthetic dataset written as a directory with a fixed ``val.txt``
(tests/test_selection.py's ``_write``), once as is and once with its test split poisoned; the
poison must reach the reported test score and nothing else. ``--cold_start_rule false`` for the
reason given in tests/test_selection.py (the original's rule reads the test positives while sampling).
"""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

from amr_tf.cli import main
from tests.test_selection import _write

SEARCH = ["--model", "VBPR", "--max-trials", "3", "--max-epochs", "6", "--patience", "2", "--batch_size", "64",
          "--cold_start_rule", "false", "--seed", "3"]


def _tune(tmp, name, data, *extra):
    out = tmp / name
    assert main(["tune", "--dataset", str(data), "--out", str(out), *SEARCH, *extra]) == 0
    return out, json.loads((out / "best.json").read_text())


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    pytest.importorskip("keras_tuner")
    tmp = tmp_path_factory.mktemp("tune")
    clean, poisoned = _write(tmp / "clean"), _write(tmp / "poisoned", poison_test=True)
    return {"clean": _tune(tmp, "clean-search", clean), "poisoned": _tune(tmp, "poisoned-search", poisoned)}


def _plugin_tags(directory):
    """{tag: plugin name} of the summaries in the event files directly in ``directory``."""
    tags = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                tags[v.tag] = v.metadata.plugin_data.plugin_name
    return tags


@pytest.mark.slow
def test_search_writes_best_json_and_hparams_logs(searches):
    out, best = searches["clean"]
    assert best["selection"] == "val_NDCG@10" and best["model"] == "VBPR"
    trials = best["trials"]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
    chosen = max(trials, key=lambda t: t["val_NDCG@10"])
    assert best["best_trial"] == chosen["trial"] and best["hyperparameters"] == chosen["hyperparameters"]
    # The chosen trial's best-epoch weights were reloaded: re-ranking the validation items gives its score.
    assert best["validation"]["NDCG@10"] == pytest.approx(chosen["val_NDCG@10"], abs=1e-6)
    assert 1 <= best["train_flags"]["epoch"] == chosen["best_epoch"] <= 6
    flags = best["train_flags"]
    assert flags["lr"][0] == best["hyperparameters"]["lr"] and flags["embed_dim"] == best["hyperparameters"]["embed_dim"]
    assert set(best["test_reported_only"]) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"}
    assert best["train_command"].startswith("python -m amr_tf train --model VBPR --lr [")
    # HParams: the experiment (every searched hyper-parameter's domain) and one session per trial.
    assert _plugin_tags(out / "logs").get("_hparams_/experiment") == "hparams"
    for t in trials:
        run = out / "logs" / t["trial"] / "execution0"
        assert _plugin_tags(run).get("_hparams_/session_start_info") == "hparams"
        assert any((run / "validation").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_poisoned_test_split_leaves_the_search_unchanged(searches):
    (_, a), (_, b) = searches["clean"], searches["poisoned"]
    assert a["test_reported_only"] != b["test_reported_only"]  # the poison reached what is reported...
    for key in ("best_trial", "hyperparameters", "train_flags", "validation", "trials"):  # ... and nothing chosen
        assert a[key] == b[key], key


@pytest.mark.slow
def test_the_result_trains_with_hparams_best_json(searches, tmp_path, capsys):
    out, best = searches["clean"]
    data = _write(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--model", "VBPR", "--hparams", str(out / "best.json"),
                 "--weight_dir", str(run), "--quiet", "--batch_size", "64", "--cold_start_rule", "false"]) == 0
    config = json.loads((run / "metrics.json").read_text())["config"]
    assert config["lr"] == best["train_flags"]["lr"] and config["epoch"] == best["train_flags"]["epoch"]
    assert sum(line.startswith("defaults: ") for line in capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "synthetic"], "no validation split"),
    (["--dataset", "synthetic", "--validation", "none"], "--validation none"),
    (["--dataset", "synthetic", "--validation", "holdout", "--model", "AMR"], "give --pretrained"),
    (["--dataset", "synthetic", "--validation", "holdout", "--model", "MFBPR", "--pretrained", "x.weights.h5"],
     "--pretrained is for --model AMR"),
])
def test_bad_requests_are_one_error_line(tmp_path, capsys, argv, message):
    assert main(["tune", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out" / "best.json").exists()


def test_an_occupied_out_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert main(["tune", "--dataset", "synthetic", "--validation", "holdout", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and (tmp_path / "out" / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("flag", [["--max-trials", "0"], ["--budget-seconds", "-1"], ["--max-epochs", "x"]])
def test_bad_flag_values_are_refused_by_the_parser(capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["tune", *flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("python -m amr_tf tune: error: ")


def test_the_chosen_trial_is_loaded_by_the_checkpoint_loader(tmp_path, monkeypatch):
    """The selected trial's weights go through ``checkpoints.load_weights`` (shapes, links, NaN
    checked) into a fresh model, without reading the pretrained checkpoint again (failed before:
    load_model rebuilt the trial model, pretrained weights read, then hand-copied load_weights)."""
    pytest.importorskip("keras_tuner")
    import amr_tf.checkpoints as checkpoints
    from amr_tf.data import load_amr_dir
    from amr_tf.training import build_model
    from amr_tf.tuning.search import run_search

    ds = load_amr_dir(_write(tmp_path / "d"))
    pretrained = checkpoints.save_checkpoint(build_model("VBPR", ds, embed_dim=4, seed=0), tmp_path / "vbpr", ds)
    events = []
    for name in ("load_pretrained", "load_weights"):
        real = getattr(checkpoints, name)
        monkeypatch.setattr(checkpoints, name, lambda m, p, *a, _n=name, _r=real, **k: events.append((_n, str(p)))
                            or _r(m, p, *a, **k))
    best = run_search(ds, "AMR", tmp_path / "out", max_trials=1, max_epochs=1, patience=0, batch_size=64,
                      pretrained=pretrained, exclude_cold_start="off", print_fn=lambda *_: None, verbose=0)
    assert best["trials"][0]["status"] == "COMPLETED"
    loads = [p for n, p in events if n == "load_weights"]
    assert len(loads) == 1 and loads[0].endswith("checkpoint.weights.h5") and "trial_" in loads[0]
    assert events[-1][0] == "load_weights"  # nothing read the pretrained weights for the chosen trial
