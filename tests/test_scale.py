"""Issue 17: features held once (memory-mapped, float16-resident, normalised per batch, bit-exact)
and full-ranking evaluation streamed in user x item blocks (equal to brute force)."""

import hashlib
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from amr_tf.data import AmrDataset, ItemFeatures, load_amr_dir, load_item_features, write_amr_dir
from amr_tf.errors import AmrError, DataError
from amr_tf.evaluation import rank_test_items
from amr_tf.models import AMR, VBPR
from amr_tf.safe_io import read_npy
from tests.test_evaluation import FixedScores as Vectors  # the evaluation's whole interface

ROOT = Path(__file__).resolve().parents[1]


def old_normalisation(path):
    """What the project did before issue 17: the whole file as float32, divided by its global max."""
    raw = np.load(path, allow_pickle=False)
    feats = raw.astype(np.float32)
    feats /= float(np.abs(feats).max())
    return feats


@pytest.fixture
def float16_dir(tmp_path, tiny_dataset):
    # Features with many distinct float16 values, a max that is not a power of two (so the division
    # rounds), negatives included.
    rng = np.random.default_rng(7)
    feats = (rng.normal(size=tiny_dataset.features.shape) * 37.3).astype(np.float16)
    ds = AmrDataset(tiny_dataset.num_users, tiny_dataset.num_items, feats.astype(np.float32),
                    tiny_dataset.train_pairs, tiny_dataset.test_candidates)
    write_amr_dir(ds, tmp_path / "ds", feature_dtype=np.float16)
    return tmp_path / "ds"


def test_loaded_features_are_memory_mapped_and_read_as_the_old_float32_to_the_bit(float16_dir):
    ds = load_amr_dir(float16_dir)
    feats = ds.features
    assert isinstance(feats, ItemFeatures) and isinstance(feats.raw, np.memmap)
    assert feats.raw.dtype == np.float16 and not feats.raw.flags.writeable
    old = old_normalisation(float16_dir / "f_resnet.npy")
    assert feats.scale == np.abs(np.load(float16_dir / "f_resnet.npy", allow_pickle=False).astype(np.float32)).max()
    np.testing.assert_array_equal(np.asarray(feats).view(np.uint32), old.view(np.uint32))
    idx = np.array([5, 0, 59, 5])
    np.testing.assert_array_equal(feats[idx].view(np.uint32), old[idx].view(np.uint32))
    assert feats.shape == old.shape and ds.feature_dim == old.shape[1] and feats.nbytes == old.nbytes
    w = np.random.default_rng(0).normal(size=(old.shape[1], 2)).astype(np.float32)
    np.testing.assert_array_equal(feats @ w, old @ w)
    # The fingerprint (recorded by checkpoints) is the one of the float32 matrix, as before.
    same = AmrDataset(ds.num_users, ds.num_items, old, ds.train_pairs, ds.test_candidates)
    assert ds.fingerprint == same.fingerprint


def test_model_holds_float16_rows_and_normalises_per_batch_bit_exactly(float16_dir):
    ds = load_amr_dir(float16_dir)
    old = old_normalisation(float16_dir / "f_resnet.npy")
    model = AMR(ds.num_users, ds.num_items, ds.features, embed_dim=4, seed=0)
    assert model.features.dtype == tf.float16 and not model.features.trainable
    assert model.feature_scale == float(ds.features.scale)
    idx = tf.constant([3, 3, 17, 0, 59])
    got = model.feature_rows(idx).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), old[idx.numpy()].view(np.uint32))
    np.testing.assert_array_equal(model.normalised_features().numpy().view(np.uint32), old.view(np.uint32))
    # Item vectors by row blocks (q_i + c_i E together) equal the whole-matrix sum to the bit.
    whole = (model.Q + tf.matmul(tf.constant(old), model.E)).numpy()
    np.testing.assert_array_equal(model.item_vectors().numpy(), whole)


def test_training_from_float16_residency_equals_training_from_float32(float16_dir):
    """Same seeds, same batches: the weights after a few AMR steps are identical to the bit."""
    ds = load_amr_dir(float16_dir)
    old = old_normalisation(float16_dir / "f_resnet.npy")
    models = []
    for feats in (ds.features, old):
        m = AMR(ds.num_users, ds.num_items, feats, embed_dim=4, seed=3, adv_weight=1.0, eps=0.5)
        m.compile()
        models.append(m)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = tuple(tf.constant(rng.integers(0, n, 16).astype(np.int32))
                      for n in (ds.num_users, ds.num_items, ds.num_items))
        for m in models:
            m.train_on_batch(batch)
    a, b = (m.weight_arrays() for m in models)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(rank_test_items(models[0], ds, protocol="full"),
                                  rank_test_items(models[1], ds, protocol="full"))


def test_vbpr_from_an_array_keeps_float32_and_no_scale(tiny_dataset):
    model = VBPR(tiny_dataset.num_users, tiny_dataset.num_items, tiny_dataset.features, embed_dim=4, seed=0)
    assert model.features.dtype == tf.float32 and model.feature_scale == 1.0
    with pytest.raises(AmrError, match="features must have shape"):
        VBPR(3, 5, ItemFeatures(np.ones((4, 2), np.float16)))


def test_safe_memmap_reader_refuses_what_it_cannot_map(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.arange(12, dtype=np.float16).reshape(3, 4)))
    with pytest.raises(DataError, match="Fortran"):
        read_npy(tmp_path / "f.npy", error=DataError, mmap=True)
    assert read_npy(tmp_path / "f.npy", error=DataError).shape == (3, 4)  # loaded whole: fine
    np.save(tmp_path / "t.npy", np.ones((100, 8), np.float16))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_item_features(tmp_path / "t.npy")
    np.save(tmp_path / "o.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        read_npy(tmp_path / "o.npy", error=DataError, mmap=True)
    bad = np.ones((5, 3), np.float16)
    bad[4, 2] = np.inf
    np.save(tmp_path / "i.npy", bad)
    with pytest.raises(DataError, match="row 4, column 2 is inf"):
        load_item_features(tmp_path / "i.npy")


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_scanning_a_mapped_file_does_not_keep_it_resident(tmp_path):
    """The scale scan, the variable's fill and a full read release the file's pages as they go:
    peak RSS grows by the float16 variable (one copy), not by the mapped file on top of it."""
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float16, shape=(12_000, 4096))
    big[:] = 1.5  # 96 MiB, written here so that the child's peak RSS starts low
    big.flush()
    del big
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from amr_tf.data import load_item_features
        import tensorflow as tf
        from amr_tf.models.vbpr import resident_features
        tf.Variable(tf.zeros([4, 4], tf.float16)).scatter_update(tf.IndexedSlices(tf.ones([1, 4], tf.float16), [0]))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        f = load_item_features("{tmp_path}/big.npy")
        after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        var, scale = resident_features(f)
        after_fill = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after_load - base) // 1024, (after_fill - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    load_mib, fill_mib = map(int, out.stdout.split()[-2:])
    assert load_mib < 48, (load_mib, fill_mib)  # a 96 MiB file scanned with < 48 MiB of growth
    assert fill_mib < 96 + 48, (load_mib, fill_mib)  # the variable (96 MiB) plus chunks, not 2 x 96


# ---------------------------------------------------------------------------- blocked full ranking


def brute_force_full_ranks(model, ds, users, positives):
    scores = model.u.astype(np.float64) @ model.i.astype(np.float64).T
    train = ds.train_matrix.toarray() > 0
    out = []
    for u, p in zip(users, positives):
        others = ~train[u]
        others[p] = False
        out.append(int(np.sum(scores[u, others] >= scores[u, p])))
    return out


@pytest.mark.parametrize("user_block,item_block", [(None, None), (1, 1), (7, 13), (40, 60), (3, 59), (64, 1000)])
def test_blocked_full_ranking_equals_brute_force(tiny_dataset, rng, user_block, item_block):
    ds = tiny_dataset
    model = Vectors(rng.normal(size=(ds.num_users, 5)), rng.normal(size=(ds.num_items, 5)))
    want = brute_force_full_ranks(model, ds, range(ds.num_users), ds.test_candidates[:, 0])
    got = rank_test_items(model, ds, protocol="full", user_block=user_block, item_block=item_block)
    assert got.tolist() == want
    rows = np.array([39, 2, 2, 17])
    sub = rank_test_items(model, ds, protocol="full", rows=rows, user_block=user_block, item_block=item_block)
    assert sub.tolist() == [want[r] for r in rows]


def test_blocked_full_ranking_with_a_positive_among_the_training_items(rng):
    # User 0's positive (item 2) is also a training item: excluded once, not twice.
    ds = AmrDataset(num_users=2, num_items=9, features=np.zeros((9, 1), np.float32),
                    train_pairs=np.array([[0, 2], [0, 5], [1, 1]]), test_candidates=np.array([[2, 3], [4, 0]]))
    model = Vectors(rng.normal(size=(2, 3)), rng.normal(size=(9, 3)))
    want = brute_force_full_ranks(model, ds, [0, 1], [2, 4])
    for ib in (1, 2, 4, 9):
        assert rank_test_items(model, ds, protocol="full", item_block=ib, user_block=1).tolist() == want


def test_sampled_ranking_of_a_row_subset(tiny_dataset, rng):
    ds = tiny_dataset
    model = Vectors(rng.normal(size=(ds.num_users, 4)), rng.normal(size=(ds.num_items, 4)))
    all_rows = rank_test_items(model, ds)
    rows = np.array([0, 33, 5])
    assert rank_test_items(model, ds, rows=rows).tolist() == all_rows[rows].tolist()


def test_fingerprint_hashes_as_the_float32_matrix():
    feats = ItemFeatures(np.array([[1, -2], [3, 8]], np.float16))
    h = hashlib.sha256()
    feats.update_hash(h)
    want = hashlib.sha256()
    arr = np.array([[1, -2], [3, 8]], np.float32) / np.float32(8)
    want.update(str(arr.dtype).encode() + str(arr.shape).encode())
    want.update(arr.tobytes())
    assert h.hexdigest() == want.hexdigest()


# ---------------------------------------------------------------------------- the device report


@pytest.mark.slow
def test_device_report_says_when_there_is_no_gpu_and_smoke_runs_on_the_cpu(tmp_path):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the CPU-only behaviour is not what runs here")
    cmd = [sys.executable, "-m", "benchmarks", "--device-report", "--out", str(tmp_path / "r")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: no GPU found" in proc.stderr and "--allow-cpu" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing written
    proc = subprocess.run(cmd + ["--allow-cpu", "--quick", "--no-standard"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.startswith("# Device report: CPU only") and "No GPU was found" in report
    import json

    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["smoke_check_on_cpu"] and data["device"].startswith("CPU only")
    assert [r["items"] for r in data["scale"]] == [2000, 6000]
    assert all(r["peak_rss_mib"] > 0 and r["VBPR_step_ms"] > 0 and "error" not in r for r in data["scale"])
    assert (tmp_path / "r" / "scale.png").stat().st_size > 0


def test_validation_none_train_matrix_includes_the_folded_validation_pairs(tmp_path, tiny_dataset):
    """Found while checking issue 17's metrics: the checks in load_amr_dir cached ``train_matrix``
    from pos.txt before val.txt was folded back, so full ranking under --validation none did not
    exclude the validation positives (HR@5 0.0616 -> 0.0584 on the embedded dataset)."""
    ds = tiny_dataset
    val = np.concatenate([ds.test_candidates[:, 1:2], ds.test_candidates[:, 2:6]], axis=1)  # never trained
    write_amr_dir(AmrDataset(ds.num_users, ds.num_items, ds.features, ds.train_pairs, ds.test_candidates,
                             validation_candidates=val, validation_users=np.arange(len(val)),
                             validation="val.txt"), tmp_path / "d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the toy split's negatives may be training items: only a warning
        loaded = load_amr_dir(tmp_path / "d", validation="none")
    from amr_tf.data.dataset import pair_keys

    keys = np.unique(pair_keys(loaded.train_pairs[:, 0], loaded.train_pairs[:, 1], ds.num_items))
    assert loaded.train_matrix.nnz == len(keys) == len(np.unique(pair_keys(ds.train_pairs[:, 0], ds.train_pairs[:, 1],
                                                                           ds.num_items))) + len(val)


@pytest.mark.parametrize("name", ["VBPR", "DUIF"])
def test_evaluation_fills_one_array_from_the_models_item_blocks(tiny_dataset, monkeypatch, name):
    """``model_vectors`` builds the item vectors block by block into one NumPy array (held once, not
    blocks plus their concatenation), equal to the bit to the model's ``item_vectors()``, and the
    rankings read the same numbers from it: 7-row blocks here, so the tiny catalogue has many."""
    from amr_tf.data.features import row_chunks
    from amr_tf.evaluation import model_vectors
    from amr_tf.training import build_model

    model = build_model(name, tiny_dataset, seed=0, embed_dim=4)
    model.E.assign(model.E * 50.0)  # visual parts of the same order as the ID parts
    monkeypatch.setattr(type(model), "_feature_chunks",
                        lambda self, chunk_bytes=0: row_chunks(self.num_items, 4 * self.feature_dim, 4 * self.feature_dim * 7))
    assert len(list(model.item_vector_blocks())) > 3
    users, items = model_vectors(model)
    assert isinstance(items, np.ndarray) and items.dtype == np.float32
    np.testing.assert_array_equal(items, model.item_vectors().numpy())
    q = 0.0 if name == "DUIF" else model.Q.numpy().astype(np.float64)
    np.testing.assert_allclose(items, q + np.asarray(tiny_dataset.features, np.float64) @ model.E.numpy(), rtol=1e-5, atol=1e-6)
    for protocol in ("sampled", "full"):
        np.testing.assert_array_equal(rank_test_items(model, tiny_dataset, protocol=protocol),
                                      rank_test_items(model, tiny_dataset, protocol=protocol, vectors=(users, items)))


def test_feature_table_is_not_a_distributed_variable_under_a_strategy(tiny_dataset):
    """Built inside a ``tf.distribute`` scope, the features stay one variable of this process: a
    distributed variable would have its initial value broadcast by the chief of a multi-worker
    strategy (over gRPC's 2 GB limit at a million items) and copied to every device."""
    from amr_tf.models.vbpr import resident_features

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        trained = tf.Variable(tf.zeros((2, 2)))
        features, scale = resident_features(tiny_dataset.features)
    assert type(trained).__name__ == "MirroredVariable"  # the strategy is in force here
    assert not isinstance(features, tf.distribute.DistributedValues)
    np.testing.assert_array_equal(features.numpy(), np.asarray(tiny_dataset.features, np.float32))


def test_a_subclass_with_its_own_item_vectors_is_ranked_on_them(tiny_dataset):
    """A VBPR subclass that redefines ``item_vectors`` alone loses the inherited blocks, so the
    evaluation reads its vectors, not VBPR's."""
    from amr_tf.evaluation import model_vectors

    class Shifted(VBPR):
        def item_vectors(self, features=None):
            return super().item_vectors(features) + 1.0

    model = Shifted(tiny_dataset.num_users, tiny_dataset.num_items, tiny_dataset.features, embed_dim=4, seed=0)
    assert model.item_vector_blocks is None
    np.testing.assert_array_equal(model_vectors(model)[1], model.item_vectors().numpy())
