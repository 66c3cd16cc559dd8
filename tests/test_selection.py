"""Issue 13, selection on validation only: the CLI's ``best`` checkpoint, ``best_epoch`` and early
stopping (``--patience``) read the validation split and never the test candidates.

All fast (the module fixture, two short CLI runs, is ~4 s), so the poisoning check runs by default.
The runs use the tiny synthetic dataset written as a directory with a ``val.txt`` (carved by
``carve_holdout`` and written, so the validation rows are fixed files that poisoning ``neg.txt``
cannot change), with the default cold-start rule: with a validation split it reads the training
pairs only (``auto`` -> ``train``). The poisoned copy's ``neg.txt`` has every test positive swapped
with one of its negatives and every other negative redrawn; training batches, every checkpoint,
the validation curve, the selected epoch and the early stop must not move. The original's rule
(``--cold_start_rule original``) reads the test positives, and there the same poison does change
the training batches (checked too, so the comparison can fail).
"""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from amr_tf.cli import main
from amr_tf.data import carve_holdout, load_amr_dir, write_amr_dir
from amr_tf.evaluation import evaluate, rank_test_items
from amr_tf.training import build_model
from tests.conftest import make_tiny
from tests.test_training import read_scalars

RUN = ["--model", "VBPR", "--emb1_K", "8", "--batch_size", "64", "--lr", "[0.2,0.2,0.2]", "--regs", "[0,0,0]",
       "--verbose", "1", "--quiet"]
EPOCHS, PATIENCE = 30, 3  # on this data the validation NDCG@10 peaks at epoch 11; the run stops at 14


def _poisoned(ds):
    """``ds`` with garbage test rows: each positive swapped with one of its negatives (so the old
    positive is now a negative), and the other negatives redrawn from items that are not the row's."""
    rng = np.random.default_rng(7)
    cands = ds.test_candidates.copy()
    j = rng.integers(1, cands.shape[1], size=len(cands))
    rows = np.arange(len(cands))
    cands[rows, 0], cands[rows, j] = ds.test_candidates[rows, j], ds.test_candidates[rows, 0]
    for r in rows:
        others = np.setdiff1d(np.arange(ds.num_items), ds.test_candidates[r])
        redraw = np.ones(cands.shape[1], bool)
        redraw[[0, j[r]]] = False
        cands[r, redraw] = np.sort(rng.choice(others, size=int(redraw.sum()), replace=False))
    return dataclasses.replace(ds, test_candidates=cands)


def _write(root, poison_test: bool = False):
    ds = carve_holdout(make_tiny())
    if poison_test:
        ds = _poisoned(ds)
    write_amr_dir(ds, root)
    return root


def _train(tmp, name, data, *extra):
    out = tmp / name
    assert main(["train", "--dataset", str(data), "--weight_dir", str(out), *RUN, *extra]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def _weights(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selection")
    clean, poisoned = _write(tmp / "clean"), _write(tmp / "poisoned", poison_test=True)
    args = ("--epoch", str(EPOCHS), "--patience", str(PATIENCE))
    return {"clean": _train(tmp, "run-clean", clean, *args), "poisoned": _train(tmp, "run-poisoned", poisoned, *args),
            "data": clean, "tmp": tmp}


def test_poisoned_test_split_changes_no_selection(runs):
    (a_dir, a), (b_dir, b) = runs["clean"], runs["poisoned"]
    # The poison reached the test metrics...
    assert [e["NDCG@10"] for e in a["evaluations"]] != [e["NDCG@10"] for e in b["evaluations"]]
    # ... and nothing that selects: same validation curve, best epoch, stopping epoch, best weights.
    val = lambda s: [{k: v for k, v in e.items() if k.startswith("val_") or k == "epoch"} for e in s["evaluations"]]  # noqa: E731
    assert val(a) == val(b)
    assert a["selection"] == b["selection"] == "val_NDCG@10"
    assert a["best_epoch"] == b["best_epoch"] and a["epochs"] == b["epochs"]
    assert a["stopped_early"] == b["stopped_early"] is not None
    for name in ("best", "last"):  # training itself unchanged: same weights and optimiser state
        wa, wb = _weights(a_dir / f"{name}.weights.h5"), _weights(b_dir / f"{name}.weights.h5")
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa), name
    for run_dir in (a_dir, b_dir):
        assert json.loads((run_dir / "best.json").read_text())["epoch"] == a["best_epoch"]
        assert json.loads((run_dir / "last.json").read_text())["args"]["cold_start_rule"] == "train"


def test_poisoned_test_split_changes_no_training_batch(runs, tmp_path):
    """The sampler's triplets with the default rule are those of the clean data, epoch by epoch;
    with the original's rule (it reads the test positives) the poison changes them."""
    from amr_tf.data import TripletSampler

    clean = load_amr_dir(runs["data"])
    poisoned = load_amr_dir(_write(tmp_path / "poisoned", poison_test=True))
    assert not np.array_equal(clean.test_candidates, poisoned.test_candidates)
    changed = False
    for epoch in range(3):
        a = TripletSampler(clean, seed=0).sample_epoch(epoch)
        b = TripletSampler(poisoned, seed=0).sample_epoch(epoch)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        a = TripletSampler(clean, seed=0, exclude_cold_start="original").sample_epoch(epoch)
        b = TripletSampler(poisoned, seed=0, exclude_cold_start="original").sample_epoch(epoch)
        changed |= not all(np.array_equal(x, y) for x, y in zip(a, b))
    assert changed


def test_patience_stops_early_and_says_why(runs, capsys):
    run_dir, summary = runs["clean"]
    stopped = summary["stopped_early"]
    assert summary["epochs"] == stopped["epoch"] < EPOCHS
    assert stopped["best_epoch"] == summary["best_epoch"] == stopped["epoch"] - PATIENCE
    assert stopped["monitor"] == "val_NDCG@10" and f"--patience {PATIENCE}" in stopped["reason"]
    last = json.loads((run_dir / "last.json").read_text())
    assert last["epoch"] == stopped["epoch"] and last["stopped_early"] == stopped
    assert last["selection"] == json.loads((run_dir / "best.json").read_text())["selection"] == "val_NDCG@10"
    evals = {e["epoch"]: e for e in summary["evaluations"]}
    assert summary["best_val_NDCG@10"] == max(e["val_NDCG@10"] for e in evals.values())
    assert summary["selected"] == {"epoch": summary["best_epoch"], **{k: v for k, v in evals[summary["best_epoch"]].items()
                                                                       if k != "epoch"}}
    assert summary["final"] == {k: v for k, v in evals[summary["epochs"]].items() if k != "epoch"}
    # TensorBoard: validation and test curves under distinct tags.
    scalars = read_scalars(run_dir / "logs")
    for tag in ("val/NDCG@10", "test/NDCG@10", "val/HR@10", "test/HR@10"):
        assert [step for step, _ in scalars[tag]] == list(range(stopped["epoch"] + 1)), tag
    assert scalars["val/NDCG@10"][-1][1] == np.float32(summary["final"]["val_NDCG@10"])
    assert scalars["test/NDCG@10"][-1][1] == np.float32(summary["final"]["NDCG@10"])
    # 'evaluate' of the selected checkpoint shows both splits.
    capsys.readouterr()
    assert main(["evaluate", str(run_dir / "best"), "--dataset", str(runs["data"])]) == 0
    out = capsys.readouterr().out
    assert "| VBPR (validation) |" in out and "| VBPR (test) |" in out
    assert f"{summary['selected']['val_HR@10']:.4f}" in out.split("(validation)")[1].splitlines()[0]
    # Resuming a run that stopped early trains nothing more.
    assert main(["train", "--resume", "--weight_dir", str(run_dir), "--quiet"]) == 0
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["epochs"] == summary["epochs"] and again["best_epoch"] == summary["best_epoch"]


def test_resume_keeps_the_best_validation_score(runs):
    """Interrupted one epoch before the early stop (after epoch 13: best at 11, two evaluations
    without improvement), then resumed: the same best epoch, early stop and best weights as the
    uninterrupted run. A resume that chose the best afresh would take epoch 14 (its first
    evaluation) and not stop there."""
    tmp, data = runs["tmp"], runs["data"]
    full_dir, full = runs["clean"]
    cut = full["stopped_early"]["epoch"] - 1
    part_dir, part = _train(tmp, "part", data, "--epoch", str(cut), "--patience", str(PATIENCE))
    assert part["stopped_early"] is None and part["best_epoch"] == full["best_epoch"] < cut
    assert main(["train", "--resume", "--weight_dir", str(part_dir), "--epoch", str(EPOCHS), "--quiet"]) == 0
    res = json.loads((part_dir / "metrics.json").read_text())
    assert res["best_epoch"] == full["best_epoch"] and res["best_val_NDCG@10"] == full["best_val_NDCG@10"]
    assert res["stopped_early"] == full["stopped_early"] and res["epochs"] == full["epochs"]
    assert res["selected"] == full["selected"] and res["final"] == full["final"]
    assert res["evaluations"] == full["evaluations"]
    wa, wb = _weights(full_dir / "best.weights.h5"), _weights(part_dir / "best.weights.h5")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_without_a_validation_split_selection_is_labelled_and_patience_refused(tmp_path, capsys):
    data = write_amr_dir(make_tiny(), tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--weight_dir", str(out), *RUN, "--epoch", "2"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["selection"].startswith("test_NDCG@10") and "no validation split" in summary["selection"]
    assert "best_NDCG@10" in summary and not any(k.startswith("val_") for k in summary["final"])
    assert json.loads((out / "best.json").read_text())["selection"] == summary["selection"]
    assert summary["best_NDCG@10"] == max(e["NDCG@10"] for e in summary["evaluations"])
    capsys.readouterr()
    assert main(["train", "--dataset", str(data), "--weight_dir", str(tmp_path / "r2"), *RUN, "--patience", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --patience 3") and "--validation holdout" in err[0]


def _brute_force_ranks(model, users, cands, train=None):
    scores = model.user_vectors().numpy()[users] @ model.item_vectors().numpy().T
    ranks = []
    for row, u in enumerate(users):
        pos = cands[row, 0]
        if train is None:
            others = cands[row, 1:]
        else:  # every item but the positive and the user's training items
            others = np.setdiff1d(np.arange(scores.shape[1]), np.append(train[u], pos))
        ranks.append(int(np.sum(scores[row, others] >= scores[row, pos])))
    return np.array(ranks)


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_evaluate_validation_split_equals_brute_force(tmp_path, protocol):
    base = make_tiny()
    ds = carve_holdout(base)
    # Skip some users so that row k of the validation split is not user k.
    keep = np.arange(len(ds.validation_users)) % 3 != 1
    ds = dataclasses.replace(ds, validation_candidates=ds.validation_candidates[keep],
                             validation_users=ds.validation_users[keep])
    model = build_model("VBPR", ds, embed_dim=8, seed=1)
    users, cands = ds.validation_users, ds.validation_candidates
    train = {u: ds.train_matrix[u].indices for u in range(ds.num_users)} if protocol == "full" else None
    want = _brute_force_ranks(model, users, cands, train)
    got = rank_test_items(model, ds, protocol=protocol, split="validation", max_chunk_entries=7 * ds.num_items)
    np.testing.assert_array_equal(got, want)
    metrics = evaluate(model, ds, protocol=protocol, split="validation")
    assert metrics["HR@10"] == pytest.approx(np.mean(want < 10))
    # The test split is untouched by the option, and a dataset without validation refuses it.
    np.testing.assert_array_equal(rank_test_items(model, ds, protocol=protocol),
                                  _brute_force_ranks(model, np.arange(ds.num_users), ds.test_candidates,
                                                     train))
    with pytest.raises(Exception, match="no validation split"):
        evaluate(model, base, split="validation")


def test_holdout_carving_reads_no_test_negative():
    """``carve_holdout`` reads the test positive only (to keep it out of the validation negatives,
    see amr_tf/data/validation.py): redrawn test negatives leave the carved split unchanged."""
    base = make_tiny()
    rng = np.random.default_rng(3)
    cands = base.test_candidates.copy()
    cands[:, 1:] = rng.integers(0, base.num_items, size=(len(cands), cands.shape[1] - 1))
    a, b = carve_holdout(base), carve_holdout(dataclasses.replace(base, test_candidates=cands))
    for name in ("train_pairs", "validation_candidates", "validation_users"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # The test positive is never a validation negative of its user.
    tests = base.test_candidates[a.validation_users, 0]
    assert not (a.validation_candidates[:, 1:] == tests[:, None]).any()


def test_directory_round_trip_keeps_the_validation_rows(tmp_path):
    ds = load_amr_dir(_write(tmp_path / "d"))
    assert ds.validation == "val.txt" and len(ds.validation_users) == ds.num_users
