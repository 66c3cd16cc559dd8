"""The shipped checkpoints (amr_tf/pretrained/): trained on the embedded dataset as it is now, by a
committed tree, selected on validation, recorded without machine paths, and with the numbers
amr_tf/pretrained/README.md quotes.
"""

from __future__ import annotations

import json
import re

import pytest

from amr_tf import pretrained
from amr_tf.data import resolve_dataset

NAMES = ("vbpr-movielens-posters", "mfbpr-movielens-posters", "amr-movielens-posters")


@pytest.fixture(scope="module")
def ds():
    return resolve_dataset("movielens-posters")


def _manifest(name):
    return json.loads(pretrained.path(name).with_suffix(".json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_fits_the_embedded_dataset_and_names_no_machine(name, ds):
    m = _manifest(name)
    assert m["dataset"]["fingerprint"] == ds.fingerprint  # trained on the dataset shipped now
    assert m["provenance"]["git_dirty"] is False and m["provenance"]["git_commit"]
    assert m["selection"] == "val_NDCG@10"
    run = json.loads(pretrained.path(name).with_suffix(".run.json").read_text())
    # VBPR and MF-BPR ship their run's best validation epoch; AMR the last epoch of its fixed budget
    # (validation preferred the starting VBPR to every fine-tuned epoch; the README says so).
    assert m["epoch"] == (run["epochs"] if name.startswith("amr") else run["best_epoch"])
    text = json.dumps(m) + pretrained.path(name).with_suffix(".run.json").read_text()
    assert not re.search(r'"/(tmp|work|home|root|Users)/', text), "a machine-absolute path is recorded"


@pytest.mark.parametrize("name", NAMES)
def test_readme_quotes_each_checkpoint_s_validation_and_test_numbers(name):
    m = _manifest(name)
    row = next(line for line in (pretrained.DIR / "README.md").read_text().splitlines()
               if line.startswith(f"| `{name}`"))
    for key in ("val_NDCG@10", "NDCG@10", "val_HR@10", "HR@10"):
        assert f"{m['metrics'][key]:.4f}" in row, (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_shipped_metrics_reproduce(name, ds):
    from amr_tf.checkpoints import load_checkpoint
    from amr_tf.evaluation import evaluate

    model, m = load_checkpoint(pretrained.path(name), ds)
    assert evaluate(model, ds)["NDCG@10"] == pytest.approx(m["metrics"]["NDCG@10"], abs=1e-6)
    assert evaluate(model, ds, split="validation")["NDCG@10"] == pytest.approx(m["metrics"]["val_NDCG@10"], abs=1e-6)
