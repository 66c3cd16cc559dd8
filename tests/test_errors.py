"""Every bad input gets the project's own error with a message naming the file, line or row and
what was expected (issue 6); property-based tests check that random malformed files never
raise anything else.

Each case lists the full expected message with ``{d}`` standing for the dataset directory, so
the tests double as the table of messages in ``docs/errors.md``.
"""

import io
import json
import pickle
import string
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amr_tf.checkpoints import (
    MANIFEST_ATTR,
    load_checkpoint,
    load_original_npy,
    load_pretrained,
    read_manifest,
    save_checkpoint,
)
from amr_tf.cli import main
from amr_tf.data import load_amr_dir, load_features
from amr_tf.errors import AmrError, CheckpointError, DataError
from amr_tf.training import build_model
from tests.conftest import make_tiny

GOOD_POS = "0 1\n1 2\n"
GOOD_NEG = "3 0 2\n4 0 1\n"
FEATS = np.arange(1, 11, dtype=np.float32).reshape(5, 2)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def npy_bytes(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def write_dir(root: Path, pos=GOOD_POS, neg=GOOD_NEG, feats=FEATS, cnn="resnet") -> Path:
    """A dataset directory; text/bytes are written verbatim, arrays with np.save, ``None`` leaves a file out."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("pos.txt", pos), ("neg.txt", neg), (f"f_{cnn}.npy", feats)):
        path = root / name
        if content is None:
            continue
        if isinstance(content, np.ndarray):
            content = npy_bytes(content, allow_pickle=content.dtype.hasobject)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root


GOOD_NPY = npy_bytes(FEATS)
PICKLE_OBJECT = np.empty(2, dtype=object)
PICKLE_OBJECT[0], PICKLE_OBJECT[1] = FEATS, "x"

# (id, write_dir arguments, the complete expected message; {d} is the directory)
DATA_ERRORS = [
    ("pos-missing", dict(pos=None), "{d}/pos.txt: required file is missing"),
    ("neg-missing", dict(neg=None), "{d}/neg.txt: required file is missing"),
    ("features-missing", dict(feats=None), "{d}/f_resnet.npy: required file is missing"),
    ("pos-empty", dict(pos=""),
     "{d}/pos.txt: file is empty; expected lines 'user item' of two 0-based integer ids"),
    ("neg-blank-lines-only", dict(neg="\n  \n"),
     "{d}/neg.txt: file is empty; expected one row per user: the test item, then its negative candidates "
     "(integer ids)"),
    ("pos-one-number", dict(pos="0 1\n1\n"), "{d}/pos.txt, line 2: found 1 value, expected 2 integers"),
    ("pos-three-numbers", dict(pos="0 1\n1 2 3\n"), "{d}/pos.txt, line 2: found 3 values, expected 2 integers"),
    ("pos-non-integer", dict(pos="0 1\n1 x\n"),
     "{d}/pos.txt, line 2: 'x' is not an integer id; expected lines 'user item' of two 0-based integer ids"),
    ("pos-float", dict(pos="0 1.5\n"),
     "{d}/pos.txt, line 1: '1.5' is not an integer id; expected lines 'user item' of two 0-based integer ids"),
    ("pos-negative-id", dict(pos="0 1\n-1 2\n"),
     "{d}/pos.txt, line 2: negative id -1; ids must be 0-based non-negative ints"),
    ("pos-huge-id", dict(pos="0 99999999999999999999\n"),
     "{d}/pos.txt, line 1: id 99999999999999999999 is too large; ids are 0-based row indices"),
    ("pos-line-counting-skips-nothing", dict(pos="0 1\n\n\n1 two\n"),
     "{d}/pos.txt, line 4: 'two' is not an integer id"),
    ("pos-not-text", dict(pos=b"0 1\n1 \xff\xfe\n"),
     "{d}/pos.txt, line 2: byte 0xff is not text; expected lines 'user item' of two 0-based integer ids "
     "(UTF-8/ASCII)"),
    ("pos-item-beyond-features", dict(pos="0 1\n1 9\n"),
     "{d}/pos.txt, line 2: item 9 has no feature row; f_resnet.npy has 5 rows (items 0..4)"),
    ("neg-candidate-out-of-range", dict(neg="3 0 2\n4 7 1\n"),
     "{d}/neg.txt, line 2: item 7 has no feature row; f_resnet.npy has 5 rows (items 0..4)"),
    ("neg-rows-of-unequal-length", dict(neg="3 0 2\n4 0\n"),
     "{d}/neg.txt, line 2: found 2 values, expected 3 integers like line 1"),
    ("neg-single-column", dict(neg="3\n4\n"),
     "{d}/neg.txt, line 1: found 1 value per row; each row needs the test item and at least one negative "
     "candidate"),
    ("pos-sparse-user-ids", dict(pos="0 1\n1000000000 2\n"),
     "{d}/pos.txt, line 2: user id 1000000000 implies 1000000001 users but only 3 appear in pos.txt and "
     "neg.txt; user ids must be consecutive 0-based indices"),
    ("features-nan", dict(feats=np.array([[1.0, 2.0]] * 4 + [[1.0, np.nan]], np.float32)),
     "{d}/f_resnet.npy: row 4, column 1 is nan; features must be finite"),
    ("features-inf", dict(feats=np.array([[1.0, -np.inf]] + [[1.0, 2.0]] * 4)),
     "{d}/f_resnet.npy: row 0, column 1 is -inf; features must be finite"),
    ("features-beyond-float32", dict(feats=np.array([[1.0, 1e300]] * 5)),
     "{d}/f_resnet.npy: row 0, column 1 is 1e+300, beyond float32's range; rescale the features"),
    ("features-1d", dict(feats=np.ones(5, np.float32)),
     "{d}/f_resnet.npy: features must be 2-D (items x dims), got shape (5,)"),
    ("features-3d", dict(feats=np.ones((5, 2, 2), np.float32)),
     "{d}/f_resnet.npy: features must be 2-D (items x dims), got shape (5, 2, 2)"),
    ("features-no-columns", dict(feats=np.ones((5, 0), np.float32)),
     "{d}/f_resnet.npy: features have shape (5, 0); expected at least one item and one dimension"),
    ("features-all-zero", dict(feats=np.zeros((5, 2), np.float32)),
     "{d}/f_resnet.npy: all features are zero; cannot normalise by the global max |value|"),
    ("features-strings", dict(feats=np.array([["a", "b"]] * 5)),
     "{d}/f_resnet.npy: features must be a numeric (float or int) array, got dtype <U1"),
    ("features-bool", dict(feats=np.ones((5, 2), bool)),
     "{d}/f_resnet.npy: features must be a numeric (float or int) array, got dtype bool"),
    ("features-complex", dict(feats=np.ones((5, 2), np.complex64)),
     "{d}/f_resnet.npy: features must be a numeric (float or int) array, got dtype complex64"),
    ("features-pickled-objects", dict(feats=PICKLE_OBJECT),
     "{d}/f_resnet.npy: contains pickled Python objects (dtype object); expected a plain numeric array "
     "(pickled files are only accepted for the original release's weights, see load_original_npy)"),
    ("features-raw-pickle", dict(feats=pickle.dumps(FEATS)),
     "{d}/f_resnet.npy: a pickled Python object (pickled files are only accepted for the original release's "
     "weights, see load_original_npy); expected a .npy array of item features (np.save)"),
    ("features-truncated-data", dict(feats=GOOD_NPY[:-4]),
     "{d}/f_resnet.npy: truncated: the header declares a float32 array of shape (5, 2) (40 bytes of data) "
     "but only 36 bytes follow (file not fully written?)"),
    ("features-truncated-header", dict(feats=GOOD_NPY[:40]), "{d}/f_resnet.npy: corrupt or truncated .npy header"),
    ("features-empty-file", dict(feats=b""),
     "{d}/f_resnet.npy: file is empty; expected a .npy array of item features"),
    ("features-not-npy", dict(feats=b"1.0,2.0\n3.0,4.0\n"),
     "{d}/f_resnet.npy: not a .npy file (no NumPy header); expected a .npy array of item features (np.save)"),
    ("features-npz", dict(feats=b"PK\x03\x04" + b"\0" * 40),
     "{d}/f_resnet.npy: a .npz/zip archive; expected a .npy array of item features (np.save)"),
]


@pytest.mark.parametrize("kwargs,expected", [pytest.param(k, m, id=i) for i, k, m in DATA_ERRORS])
def test_bad_dataset_files_name_file_line_and_expectation(tmp_path, kwargs, expected):
    root = write_dir(tmp_path / "ds", **kwargs)
    with pytest.raises(DataError) as exc:
        load_amr_dir(root)
    assert str(exc.value).startswith(expected.format(d=root)), str(exc.value)


def test_missing_or_wrong_dataset_directory(tmp_path):
    with pytest.raises(DataError, match="nope: dataset directory not found"):
        load_amr_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file: is a file, not a dataset directory"):
        load_amr_dir(tmp_path / "file")
    root = write_dir(tmp_path / "ds")
    (root / "f_resnet.npy").unlink()
    (root / "f_resnet.npy").mkdir()
    with pytest.raises(DataError, match=r"f_resnet.npy: is a directory; expected a .npy feature file"):
        load_amr_dir(root)  # named for what it is, not "missing" (issue 14)
    with pytest.raises(DataError, match=r"f_resnet.npy: is a directory; expected a .npy feature file"):
        load_features(root / "f_resnet.npy")
    with pytest.raises(DataError, match=r"x.npy: feature file not found"):
        load_features(root / "x.npy")


WARNINGS = [
    ("pos-user-without-neg-row", dict(pos="0 1\n1 2\n2 3\n"),
     "{d}/pos.txt, line 3: user 2 has no row in neg.txt (2 rows); 1 user in all will be trained but not evaluated"),
    ("neg-user-without-training-pair", dict(pos="0 1\n", neg="3 0 2\n4 0 1\n"),
     "{d}/neg.txt, line 2: user 1 has no training pair in pos.txt; 1 user in all will be evaluated with "
     "untrained embeddings"),
    ("candidate-is-a-training-item", dict(neg="3 1 2\n4 0 1\n"),
     "{d}/neg.txt, line 1: negative candidate 1 is a training item of user 0 (1 such candidate in all); "
     "metrics will be pessimistic"),
    ("candidate-repeats-the-test-item", dict(neg="3 0 3\n4 0 1\n"),
     "{d}/neg.txt, line 1: negative candidate 3 repeats user 0's test item (1 such candidate in all); ties "
     "count against the test item"),
]


@pytest.mark.parametrize("kwargs,expected", [pytest.param(k, m, id=i) for i, k, m in WARNINGS])
def test_legal_but_suspicious_data_warns_and_loads(tmp_path, kwargs, expected):
    """Users of pos.txt beyond neg.txt's rows are legal (num_users = max of both files): they are
    trained and not evaluated; the other cases bias the metrics. All load, with a warning."""
    root = write_dir(tmp_path / "ds", **kwargs)
    with pytest.warns(UserWarning) as record:
        ds = load_amr_dir(root)
    assert expected.format(d=root) in [str(w.message) for w in record]
    assert ds.num_users == max(int(ds.train_pairs[:, 0].max()) + 1, len(ds.test_candidates))


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    root = write_dir(tmp_path / "ds", pos="\ufeff0 1\r\n1 2\r\n", neg="3 0 2\r\n4 0 1\r\n")
    ds = load_amr_dir(root)
    assert ds.train_pairs.tolist() == [[0, 1], [1, 2]]


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small compiled AMR checkpoint on a tiny synthetic dataset (trained for no epochs)."""
    ds = make_tiny()
    model = build_model("AMR", ds, embed_dim=8, seed=0)
    root = tmp_path_factory.mktemp("ck")
    save_checkpoint(model, root / "ck", ds, epoch=0)
    return ds, root / "ck"


def copy_checkpoint(src: Path, dst_dir: Path) -> Path:
    for ext in (".weights.h5", ".json"):
        (dst_dir / f"ck{ext}").write_bytes(Path(f"{src}{ext}").read_bytes())
    return dst_dir / "ck"


def test_checkpoint_of_another_embedding_size_names_the_matrix(saved):
    ds, ck = saved
    other = build_model("VBPR", ds, embed_dim=16)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(other, ck)
    assert str(exc.value) == (f"{ck}.weights.h5: P has shape (40, 8) in the checkpoint but (40, 16) in the model "
                              "(another dataset or embedding size?)")


def test_checkpoint_of_another_model_says_so(saved):
    ds, ck = saved
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(build_model("MFBPR", ds, embed_dim=8), ck)
    assert str(exc.value) == (f"{ck}.weights.h5: holds 3 weight matrices [(40, 8), (60, 8), (12, 8)], MFBPR has 2 "
                              "(P, Q); it was saved for another model")


def test_checkpoint_of_another_dataset_names_the_count(saved):
    from amr_tf.data import make_synthetic

    _, ck = saved
    other = make_synthetic(num_users=50, num_items=60, feature_dim=12, num_pairs=200, num_negatives=20, seed=3)
    with pytest.warns(UserWarning, match="checkpoint was trained on dataset"):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(ck, other)
    assert str(exc.value).endswith("checkpoint has num_users=40 but dataset 'synthetic-50x60x12-seed3' has 50")
    wide = make_synthetic(num_users=40, num_items=60, feature_dim=16, num_pairs=200, num_negatives=20, seed=3)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="checkpoint has feature_dim=12 but dataset"):
        load_checkpoint(ck, wide)


def test_truncated_weights_file(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    data = Path(f"{ck}.weights.h5").read_bytes()
    Path(f"{ck}.weights.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=rf"^{ck}.weights.h5: truncated or corrupt weights file \("):
        load_checkpoint(ck, ds)


def test_weights_file_that_is_not_hdf5(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    Path(f"{ck}.weights.h5").write_bytes(b"this is not HDF5")
    with pytest.raises(CheckpointError, match=rf"^{ck}.weights.h5: truncated or corrupt weights file"):
        load_checkpoint(ck, ds)


def test_weights_file_missing(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    Path(f"{ck}.weights.h5").unlink()
    with pytest.raises(CheckpointError, match=rf"^{ck}.weights.h5: weights file not found$"):
        load_checkpoint(ck, ds)


def test_corrupt_manifest_without_a_usable_copy(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    with h5py.File(f"{ck}.weights.h5", "a") as f:  # as a checkpoint written before manifests were embedded
        del f.attrs[MANIFEST_ATTR]
    Path(f"{ck}.json").write_text('{"model": "AMR", "conf')
    with pytest.raises(CheckpointError, match=rf"^{ck}.json: corrupt manifest \(Unterminated string"):
        read_manifest(ck)
    Path(f"{ck}.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"not an amr-tf checkpoint manifest \(expected a JSON object"):
        read_manifest(ck)
    Path(f"{ck}.json").write_text('{"model": ["AMR"], "config": {}}')
    with pytest.raises(CheckpointError, match="corrupt manifest: 'model' must be a string"):
        read_manifest(ck)
    Path(f"{ck}.json").write_text('{"model": "GAN", "config": {}}')
    with pytest.raises(CheckpointError, match="unknown model class 'GAN' \\(expected one of MFBPR, VBPR, AMR, DUIF, AdversarialDUIF, EALS\\)"):
        load_checkpoint(ck, ds)
    Path(f"{ck}.json").unlink()
    with pytest.raises(CheckpointError, match=rf"^{ck}.json: checkpoint manifest not found$"):
        read_manifest(ck)


def test_manifest_with_invalid_configuration(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    with h5py.File(f"{ck}.weights.h5", "a") as f:
        del f.attrs[MANIFEST_ATTR]
    manifest = json.loads(Path(f"{ck}.json").read_text())
    manifest["config"]["embed_dim"] = -3
    Path(f"{ck}.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="the manifest's configuration is invalid \\(embed_dim must be a positive"):
        load_checkpoint(ck, ds)
    manifest["config"]["embed_dim"] = 8
    manifest["config"]["colour"] = "red"
    Path(f"{ck}.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="the manifest's configuration does not fit AMR"):
        load_checkpoint(ck, ds)


def test_corrupt_manifest_falls_back_to_the_copy_in_the_weights(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    Path(f"{ck}.json").write_text("{garbage")
    with pytest.warns(UserWarning, match=r"ck.json: corrupt manifest .*; using the copy stored in ck.weights.h5"):
        model, manifest = load_checkpoint(ck, ds)
    assert manifest["model"] == "AMR" and manifest["epoch"] == 0


def test_checkpoint_with_nan_weights_is_refused(saved, tmp_path):
    ds, src = saved
    ck = copy_checkpoint(src, tmp_path)
    with h5py.File(f"{ck}.weights.h5", "a") as f:
        q = f["vars"]["1"][()]
        q[3, 2] = np.nan
        f["vars"]["1"][...] = q
    with pytest.raises(CheckpointError, match=rf"^{ck}.weights.h5: Q contains NaN or infinite values$"):
        load_checkpoint(ck, ds)
    with pytest.raises(CheckpointError, match=r"Q contains NaN or infinite values"):
        load_pretrained(build_model("AMR", ds, embed_dim=8), ck)


def test_run_directory_instead_of_checkpoint_gets_a_hint(saved, tmp_path):
    ds, src = saved
    for ext in (".weights.h5", ".json"):
        (tmp_path / f"last{ext}").write_bytes(Path(f"{src}{ext}").read_bytes())
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}: is a directory, not a checkpoint; did you mean {tmp_path}/last\?$"):
        read_manifest(tmp_path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_original_npy_refuses_pickles_other_than_numpy_arrays(saved, tmp_path):
    ds, _ = saved
    model = build_model("VBPR", ds, embed_dim=8, compile=False)
    arr = np.empty(3, dtype=object)
    arr[0], arr[1], arr[2] = _Evil(), np.zeros((60, 8)), np.zeros((12, 8))
    (tmp_path / "evil.npy").write_bytes(npy_bytes(arr, allow_pickle=True))
    with pytest.raises(CheckpointError, match=r"evil.npy: refers to posix.system, which is not allowed in this "
                                              r"file \(a crafted file\?\); nothing was run"):
        load_original_npy(tmp_path / "evil.npy", model)
    (tmp_path / "short.npy").write_bytes(npy_bytes(np.zeros((40, 8), np.float32))[:50])
    with pytest.raises(CheckpointError, match=r"short.npy: not a readable original-release weights file"):
        load_original_npy(tmp_path / "short.npy", model)


# ---------------------------------------------------------------------------- command-line flags

BAD_FLAGS = [
    (["--epsilon", "-0.1"], "argument --epsilon/--eps: must be >= 0.0, got -0.1"),
    (["--eps", "nan"], "argument --epsilon/--eps: must be >= 0.0, got nan"),
    (["--lmd", "-1"], "argument --lmd: must be >= 0.0, got -1"),
    (["--emb1_K", "0"], "argument --emb1_K/--embed_dim: must be > 0, got 0"),
    (["--emb1_K", "8.5"], "argument --emb1_K/--embed_dim: expected an integer, got '8.5'"),
    (["--batch_size", "0"], "argument --batch_size: must be > 0, got 0"),
    (["--batch_size", "-512"], "argument --batch_size: must be > 0, got -512"),
    (["--lr", "[0.01,0,1e-3]"], "argument --lr: every value must be finite and > 0.0, got 0.0 in '[0.01,0,1e-3]'"),
    (["--lr", "[0.01,-1e-4,1e-3]"], "argument --lr: every value must be finite and > 0.0, got -0.0001"),
    (["--lr", "[0.01,1e-4]"], "argument --lr: expected 3 numbers, got 2 in '[0.01,1e-4]'"),
    (["--lr", "[0.01,1e-4,1e-3,1]"], "argument --lr: expected 3 numbers, got 4"),
    (["--lr", "__import__('os')"], "argument --lr: expected a list of 3 numbers like [0.01,1e-4,1e-3]"),
    (["--regs", "[0.1,0.001]"], "argument --regs: expected 3 numbers, got 2 in '[0.1,0.001]'"),
    (["--regs", "[0.1,-1,0]"], "argument --regs: every value must be finite and >= 0.0, got -1.0"),
    (["--epoch", "-1"], "argument --epoch: must be >= 0, got -1"),
    (["--verbose", "0"], "argument --verbose: must be > 0, got 0"),
    (["--save_every", "-1"], "argument --save_every: must be >= 0, got -1"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--seed", str(2**32)], f"argument --seed: must be <= {2**32 - 1}, got {2**32}"),
    (["--adv", "maybe"], "argument --adv: expected true or false, got 'maybe'"),
    (["--model", "GAN"], "argument --model: invalid choice: 'GAN'"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_out_of_range_flags_exit_2_with_the_flag_named(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"] + flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err


def test_resume_without_weight_dir(capsys):
    assert main(["train", "--dataset", "synthetic", "--resume"]) == 2
    assert capsys.readouterr().err == "error: --resume needs --weight_dir: the directory of the run to continue\n"


def test_cli_reports_checkpoint_errors_without_traceback(saved, tmp_path, capsys):
    _, src = saved
    ck = copy_checkpoint(src, tmp_path)
    Path(f"{ck}.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.warns(UserWarning, match="checkpoint was trained on dataset 'synthetic-40x60x12-seed3'"):
        assert main(["evaluate", str(ck), "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {ck}: checkpoint has num_users=40 but dataset 'synthetic' has 500\n"


# ---------------------------------------------------------------------------- property-based

TEXT = st.text(alphabet=string.digits + " \t\n\r-+.xe_,\x00\u00a0\u0663\ufeff", max_size=60)


def _load_or_amr_error(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = load_amr_dir(root)
        except AmrError:
            return None
    # Whatever loads is consistent: ids index the features and the matrices.
    assert ds.features.shape[0] == ds.num_items
    assert ds.train_pairs.min() >= 0 and ds.train_pairs[:, 1].max() < ds.num_items
    assert ds.test_candidates.max() < ds.num_items and len(ds.test_candidates) <= ds.num_users
    return ds


@SETTINGS
@given(pos=TEXT | st.binary(max_size=40).map(lambda b: b.decode("latin1")), neg=TEXT)
def test_random_id_files_raise_only_amr_error(pos, neg):
    with tempfile.TemporaryDirectory() as d:
        _load_or_amr_error(write_dir(Path(d), pos=pos.encode("utf-8", "surrogatepass"), neg=neg.encode()))


@SETTINGS
@given(lines=st.lists(st.lists(st.integers(-3, 12) | st.sampled_from([2**63, 10**12]), min_size=0, max_size=4),
                      max_size=6),
       neg_lines=st.lists(st.lists(st.integers(-1, 9), min_size=1, max_size=4), min_size=0, max_size=5))
def test_random_integer_tables_raise_only_amr_error(lines, neg_lines):
    pos = "\n".join(" ".join(map(str, line)) for line in lines)
    neg = "\n".join(" ".join(map(str, line)) for line in neg_lines)
    with tempfile.TemporaryDirectory() as d:
        _load_or_amr_error(write_dir(Path(d), pos=pos, neg=neg, feats=np.ones((10, 2), np.float32)))


DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int64", "bool", "complex64", "U2", "S3", "O",
          "datetime64[s]", [("a", "f4"), ("b", "i2")]]


@st.composite
def feature_files(draw):
    kind = draw(st.sampled_from(["array", "truncated", "bytes", "corrupted"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    if dtype.hasobject:
        arr = np.empty(shape, dtype)
        arr.fill(draw(st.sampled_from([None, 1.5, "x"])))
    elif dtype.kind in "fc":
        values = st.sampled_from([0.0, 1.0, -2.5, np.nan, np.inf, -np.inf, 1e300, 1e-40])
        arr = np.array(draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                       dtype=np.float64).reshape(shape)
        with np.errstate(all="ignore"):
            arr = arr.astype(dtype)
    else:
        arr = np.zeros(shape, dtype)
    data = npy_bytes(arr, allow_pickle=dtype.hasobject)
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "corrupted":
        pos = draw(st.integers(0, len(data) - 1))
        return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
    return data


@SETTINGS
@given(feats=feature_files())
def test_random_feature_files_raise_only_amr_error(feats):
    with tempfile.TemporaryDirectory() as d:
        root = write_dir(Path(d), pos="0 0\n1 1\n", neg="2 0\n3 1\n", feats=feats)
        _load_or_amr_error(root)
        try:
            out = load_features(root / "f_resnet.npy")
        except AmrError:
            return
        assert out.dtype == np.float32 and out.ndim == 2 and np.isfinite(out).all() and np.abs(out).max() == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=3),
       manifest=st.sampled_from(["keep", "garbage", "empty", "list", "missing"]))
def test_damaged_checkpoints_raise_only_checkpoint_error(saved, cut, flips, manifest):
    ds, src = saved
    with tempfile.TemporaryDirectory() as d:
        ck = copy_checkpoint(src, Path(d))
        data = bytearray(Path(f"{ck}.weights.h5").read_bytes())
        for where, byte in flips:  # overwritten bytes, anywhere: HDF5 metadata or the arrays
            data[min(int(where * len(data)), len(data) - 1)] = byte
        Path(f"{ck}.weights.h5").write_bytes(bytes(data[: int(cut * len(data))] if cut < 1.0 else data))
        m = Path(f"{ck}.json")
        if manifest == "garbage":
            m.write_text("{\"model\": 1")
        elif manifest == "empty":
            m.write_text("")
        elif manifest == "list":
            m.write_text("[]")
        elif manifest == "missing":
            m.unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                load_checkpoint(ck, ds)
            except CheckpointError:
                pass
