"""Checkpoint round-trips, the original release's weights, and clear errors on mismatches."""

import json

import numpy as np
import pytest

from amr_tf import evaluate
from amr_tf.checkpoints import (
    export_original_npy,
    load_checkpoint,
    load_original_npy,
    load_pretrained,
    read_manifest,
    save_checkpoint,
)
from amr_tf.errors import CheckpointError
from amr_tf.models import AMR, VBPR
from amr_tf.training import build_model, fit
from tests.conftest import shared_path


def trained(ds, name="AMR", epochs=2):
    model = build_model(name, ds, embed_dim=8, learning_rates=(0.05, 0.05, 0.05), seed=0)
    fit(model, ds, epochs=epochs, batch_size=64, verbose=0)
    return model


def test_save_load_gives_identical_scores(tmp_path, tiny_dataset):
    ds = tiny_dataset
    model = trained(ds)
    save_checkpoint(model, tmp_path / "ck", ds, epoch=2, metrics={"HR@10": 0.5})
    back, manifest = load_checkpoint(tmp_path / "ck.weights.h5", ds)
    assert type(back) is AMR and manifest["epoch"] == 2 and manifest["dataset"]["fingerprint"] == ds.fingerprint
    assert back.eps == model.eps and back.regs == model.regs
    users, items = np.arange(ds.num_users), ds.test_candidates
    np.testing.assert_array_equal(back((users, items)).numpy(), model((users, items)).numpy())
    assert evaluate(back, ds) == evaluate(model, ds)
    # The Adagrad accumulators come back too (what resuming needs).
    for a, b in zip(model.optimizers_by_param, back.optimizers_by_param):
        for va, vb in zip(a.variables, b.variables):
            np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))


def test_checkpoint_of_other_shape_is_rejected_with_the_matrix_named(tmp_path, tiny_dataset):
    ds = tiny_dataset
    save_checkpoint(trained(ds, epochs=1), tmp_path / "ck", ds)
    other = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=16)
    with pytest.raises(CheckpointError, match=r"P has shape \(40, 8\) in the checkpoint but \(40, 16\)"):
        load_pretrained(other, tmp_path / "ck")
    mf = build_model("MFBPR", ds, embed_dim=8)
    with pytest.raises(CheckpointError, match="holds 3 weight matrices"):
        load_pretrained(mf, tmp_path / "ck")


def test_corrupt_files_raise_checkpoint_error(tmp_path, tiny_dataset):
    ds = tiny_dataset
    path = save_checkpoint(trained(ds, epochs=1), tmp_path / "ck", ds)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "ck", ds)
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt manifest"):
        read_manifest(tmp_path / "ck")


def test_pretrained_vbpr_initialises_amr(tmp_path, tiny_dataset):
    ds = tiny_dataset
    vbpr = trained(ds, "VBPR")
    save_checkpoint(vbpr, tmp_path / "vbpr", ds)
    amr = build_model("AMR", ds, embed_dim=8)
    load_pretrained(amr, tmp_path / "vbpr")
    for name in "PQE":
        np.testing.assert_array_equal(getattr(amr, name).numpy(), getattr(vbpr, name).numpy())
    assert evaluate(amr, ds) == evaluate(vbpr, ds)


def test_original_npy_round_trip_and_errors(tmp_path, tiny_dataset):
    ds = tiny_dataset
    model = trained(ds, "VBPR", epochs=1)
    export_original_npy(model, tmp_path / "w.npy")
    fresh = build_model("VBPR", ds, embed_dim=8)
    load_original_npy(tmp_path / "w.npy", fresh)
    assert evaluate(fresh, ds) == evaluate(model, ds)
    wrong = build_model("VBPR", ds, embed_dim=4)
    with pytest.raises(CheckpointError, match=r"P has shape \(40, 8\), the model expects \(40, 4\)"):
        load_original_npy(tmp_path / "w.npy", wrong)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_original_npy(tmp_path / "junk.npy", fresh)


def test_real_original_weights_fixture():
    path = shared_path("fixtures", "amr-original", "best-vbpr.npy")
    arrays = np.load(path, allow_pickle=True, encoding="latin1")
    P, Q, E = arrays
    model = VBPR(3226, 4998, np.zeros((4998, 2048), np.float32), embed_dim=64)
    load_original_npy(path, model)
    np.testing.assert_array_equal(model.P.numpy(), P)
    np.testing.assert_array_equal(model.E.numpy(), E)
    # Its users are the users of the fixture's pos.txt.
    pos = np.loadtxt(shared_path("fixtures", "amr-original", "pos.txt"), dtype=np.int64)
    assert pos[:, 0].max() + 1 == 3226 and pos[:, 1].max() < 4998
    wrong = VBPR(3226, 4998, np.zeros((4998, 1024), np.float32), embed_dim=64)
    with pytest.raises(CheckpointError, match=r"E has shape \(2048, 64\), the model expects \(1024, 64\)"):
        load_original_npy(path, wrong)


def test_manifest_is_json_with_provenance(tmp_path, tiny_dataset):
    save_checkpoint(trained(tiny_dataset, epochs=1), tmp_path / "ck", tiny_dataset, command="x")
    manifest = json.loads((tmp_path / "ck.json").read_text())
    assert manifest["model"] == "AMR" and manifest["command"] == "x"
    assert {"tensorflow", "keras", "git_commit"} <= set(manifest["provenance"])
