"""Dataset builders (``amr-tf build-dataset amazon|interactions``) and their shared protocol.

Every input is generated here, in each format the builders read: strict-JSON and Python-literal
review lines, gzip or plain, the ``.b`` feature records (also truncated, and with a short ASIN),
CSV and TSV logs. A tiny case is checked file by file against values worked out by hand.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amr_tf.cli import main
from amr_tf.data import load_amr_dir
from amr_tf.datasets import protocol as proto
from amr_tf.datasets.amazon import FEATURE_DIM, RECORD_BYTES, build_amazon
from amr_tf.datasets.interactions import build_interactions
from amr_tf.datasets.protocol import Protocol
from amr_tf.errors import AmrError, DataError
from amr_tf.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow

# The tiny case. Users U1, U2, U3; products a1..a5 have features, a9 has none, b0 has features but
# no review. Worked out by hand (new ids: U1..U3 -> 0..2, a1..a5 -> 0..4):
#   U1: a1@10 a2@20 a3@30 a4@40          -> test a4, validation a3, train a1 a2; never saw: a5
#   U2: a1@1, a2 a3 a5 all @5 (a tie)    -> test a5 (largest id), validation a3, train a1 a2; never saw: a4
#   U3: a3@0, a1@0 and again a1@1, a2@2, a5@3 (rating 2), a9@3
#       -> the later a1 kept, a9 dropped (no features); test a5, validation a2, train a1 a3; never saw: a4
# so with one negative per row every row is determined.
ASIN = {k: f"A00000000{k}" for k in range(1, 6)} | {9: "A000000009", 0: "B000000000"}
REVIEWS = [  # reviewerID, product, time, rating
    ("U1", 1, 10, 5.0), ("U1", 2, 20, 4.0), ("U1", 3, 30, 3.0), ("U1", 4, 40, 5.0),
    ("U2", 1, 1, 5.0), ("U2", 2, 5, 5.0), ("U2", 3, 5, 4.0), ("U2", 5, 5, 1.0),
    ("U3", 3, 0, 4.0), ("U3", 1, 0, 1.0), ("U3", 1, 1, 5.0), ("U3", 2, 2, 4.0), ("U3", 5, 3, 2.0), ("U3", 9, 3, 5.0),
]
EXPECTED = {
    "pos.txt": "0 0\n0 1\n1 0\n1 1\n2 0\n2 2\n",
    "neg.txt": "3 4\n4 3\n4 3\n",
    "val.txt": "2 4\n2 3\n1 3\n",
    "users.tsv": "user\treviewerID\n0\tU1\n1\tU2\n2\tU3\n",
    "items.tsv": "item\tasin\n" + "".join(f"{k - 1}\t{ASIN[k]}\n" for k in range(1, 6)),
}
TINY = Protocol(min_user=3, num_negatives=1, seed=0)


def feature_row(k: int) -> np.ndarray:
    return (np.arange(FEATURE_DIM, dtype=np.float32) % 97) * 0.25 + k


def review_line(user, k, when, rating, style: str) -> str:
    rec = {"reviewerID": user, "asin": ASIN[k], "reviewerName": "O'Brien", "helpful": [0, 1],
           "reviewText": "Fits \"well\".", "overall": rating, "unixReviewTime": when}
    return json.dumps(rec) if style == "json" else repr(rec)  # repr: the older Python-literal dumps


def write_reviews(path: Path, style: str = "mixed", gz: bool = True, rows=REVIEWS) -> Path:
    lines = [review_line(*r, style=("json" if n % 2 else "literal") if style == "mixed" else style)
             for n, r in enumerate(rows)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_b(path: Path, keys=(5, 0, 3, 1, 4, 2)) -> Path:
    with open(path, "wb") as fh:
        for k in keys:
            fh.write(ASIN[k].encode() + feature_row(k).astype("<f4").tobytes())
    return path


def read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture
def amazon_files(tmp_path):
    return write_reviews(tmp_path / "reviews_Tiny.json.gz"), write_b(tmp_path / "image_features_Tiny.b")


# ---------------------------------------------------------------------------------- protocol


def test_leave_one_out_ties_go_to_the_larger_item():
    u = np.array([0, 0, 0, 1, 1, 1])
    i = np.array([2, 7, 5, 1, 0, 3])
    ts = np.array([5, 5, 5, 1, 2, 2])
    held, train = proto.leave_one_out(u, i, ts, 2, held_out=2)
    assert held.tolist() == [[7, 5], [3, 0]]
    assert train.tolist() == [[0, 2], [1, 1]]


def test_k_core_iterates_until_stable():
    # user 2 has one positive; dropping it leaves item 9 with one positive -> dropped -> user 1 falls to one
    user = np.array([0, 0, 1, 1, 2, 3, 3])
    item = np.array([5, 6, 5, 9, 9, 5, 6])
    keep, rounds = proto.k_core(user, item, min_user=2, min_item=2)
    assert keep.tolist() == [True, True, False, False, False, True, True] and rounds == 4


def test_dedupe_keeps_latest_then_higher_rating():
    user, item = np.array([0, 0, 0, 1]), np.array([3, 3, 3, 3])
    ts, rating = np.array([1, 2, 2, 0]), np.array([5.0, 1.0, 2.0, 4.0])
    keep, dropped = proto.dedupe_latest(user, item, ts, rating)
    assert sorted(keep.tolist()) == [2, 3] and dropped == 2


def test_renumber_gives_sorted_keys_and_each_keys_new_id():
    """The new ids come from renumber itself (before: an unused key -> id dict; the split searched again)."""
    distinct, new = proto.renumber(np.array([30, 10, 30, 20]))
    assert distinct.tolist() == [10, 20, 30] and new.tolist() == [2, 0, 2, 1]


def test_sorted_codes_numeric_when_all_ids_are_integers():
    names, codes = proto.sorted_codes(["10", "9", "100"], np.array([0, 1, 2, 0]))
    assert names.tolist() == ["9", "10", "100"] and codes.tolist() == [1, 0, 2, 1]
    names, codes = proto.sorted_codes(["b", "10", "a"], np.array([0, 1, 2]))
    assert names.tolist() == ["10", "a", "b"] and codes.tolist() == [2, 0, 1]


def test_negatives_are_never_interacted_and_seeded():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    import scipy.sparse as sp

    rated = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=bool))
    a = proto.sample_negatives(rated, np.array([0, 3]), 2, rng_a)
    b = proto.sample_negatives(rated, np.array([0, 3]), 2, rng_b)
    assert a.tolist() == b.tolist()
    assert set(a[0, 1:]) <= {2, 3, 4, 5} and set(a[1, 1:]) <= {0, 1, 2}
    assert all(len(set(r[1:])) == 2 and list(r[1:]) == sorted(r[1:]) for r in a)


# ------------------------------------------------------------------------------------ amazon


def test_amazon_tiny_case_exact(amazon_files, tmp_path):
    reviews, feats = amazon_files
    out = tmp_path / "out"
    result = build_amazon(reviews, feats, out, TINY, command="cmd")
    for name, text in EXPECTED.items():
        assert (out / name).read_text() == text, name
    f = np.load(out / "f_amazon.npy", allow_pickle=False)
    assert f.dtype == np.float16 and f.shape == (5, FEATURE_DIM)
    np.testing.assert_array_equal(f, np.stack([feature_row(k) for k in range(1, 6)]).astype(np.float16))
    c = result.counts
    assert (c["interactions"], c["duplicates_collapsed"], c["num_users"], c["num_items"]) == (13, 1, 3, 5)
    assert dict((why, n) for n, why in result.drops)["reviews of products without a feature record"] == 1
    card = (out / "README.md").read_text()
    for name in ("pos.txt", "neg.txt", "val.txt", "f_amazon.npy"):
        assert result.files[name]["sha256"] in card
    assert sha256_file(reviews) in card and "| training density | 0.400000 |" in card
    ds = load_amr_dir(out, cnn="amazon")
    assert ds.validation == "val.txt" and ds.validation_candidates.tolist() == [[2, 4], [2, 3], [1, 3]]
    np.testing.assert_allclose(np.asarray(ds.features).max(), 1.0)  # global-max scaling happens at load


@pytest.mark.parametrize("style,gz", [("json", False), ("literal", True), ("literal", False), ("json", True)])
def test_amazon_review_formats_give_the_same_split(amazon_files, tmp_path, style, gz):
    _, feats = amazon_files
    reviews = write_reviews(tmp_path / f"r_{style}_{gz}.json", style=style, gz=gz)
    out = tmp_path / "o"
    build_amazon(reviews, feats, out, TINY)
    for name in ("pos.txt", "neg.txt", "val.txt"):
        assert (out / name).read_text() == EXPECTED[name]


def test_amazon_rebuild_is_byte_identical_through_the_cli(amazon_files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["build-dataset", "amazon", "--reviews", amazon_files[0].name, "--features", amazon_files[1].name, "--quiet"]
    args = base + ["--min-user", "3", "--negatives", "1"]
    assert main(args + ["--out", "a/data"]) == 0
    assert main(args + ["--out", "b/data"]) == 0
    assert read_dir(tmp_path / "a" / "data") == read_dir(tmp_path / "b" / "data")
    out = capsys.readouterr().out
    assert "dropped 1 reviews of products without a feature record" in out
    assert "dropped 1 repeated reviews of a product by the same user" in out
    assert main(base + ["--min-user", "2", "--negatives", "1", "--no-validation", "--out", "c"]) == 0
    assert not (tmp_path / "c" / "val.txt").exists()
    assert (tmp_path / "c" / "neg.txt").read_text() == EXPECTED["neg.txt"]


def test_amazon_truncated_feature_record(amazon_files, tmp_path):
    reviews, feats = amazon_files
    data = feats.read_bytes()
    feats.write_bytes(data[:-100])
    with pytest.raises(DataError, match=rf"record 5 \(byte {5 * RECORD_BYTES}\): truncated: {RECORD_BYTES - 100} bytes"):
        build_amazon(reviews, feats, tmp_path / "o", TINY)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change", ["replace", "truncate"])
def test_amazon_features_are_read_from_the_file_indexed(amazon_files, tmp_path, monkeypatch, change):
    """Both passes read the one descriptor opened through the safe layer: a .b file replaced at its
    path between them is not read, one truncated is named (failed before: the second pass reopened
    the path with open(), reading the replacement's values, or a short row)."""
    from amr_tf.datasets import amazon

    reviews, feats = amazon_files
    build_amazon(reviews, feats, tmp_path / "a", TINY)
    real = amazon.read_reviews

    def then_change(*args, **kwargs):
        if change == "replace":
            other = write_b(tmp_path / "other.b")
            other.write_bytes(other.read_bytes().replace(feature_row(1).astype("<f4").tobytes(),
                                                         (feature_row(1) + 1).astype("<f4").tobytes()))
            os.replace(other, feats)
        else:
            os.truncate(feats, 3 * RECORD_BYTES)
        return real(*args, **kwargs)

    monkeypatch.setattr(amazon, "read_reviews", then_change)
    if change == "replace":
        build_amazon(reviews, feats, tmp_path / "b", TINY)
        assert read_dir(tmp_path / "a")["f_amazon.npy"] == read_dir(tmp_path / "b")["f_amazon.npy"]
    else:
        with pytest.raises(DataError, match=r"image_features_Tiny.b, record [345]: truncated: 0 of 16384 bytes"):
            build_amazon(reviews, feats, tmp_path / "b", TINY)
        assert not (tmp_path / "b").exists()


def test_amazon_wrong_length_asin(amazon_files, tmp_path):
    reviews, feats = amazon_files
    with open(feats, "ab") as fh:  # a 7-character ASIN padded to the 10-byte field
        fh.write(b"B012345\x00\x00\x00" + feature_row(0).astype("<f4").tobytes())
    with pytest.raises(DataError, match=r"record 6 .*ASIN 'B012345' has 7 characters, expected 10"):
        build_amazon(reviews, feats, tmp_path / "o", TINY)
    # records written with 9-byte ASINs: the first "ASIN" ends in a float's zero byte
    with open(feats, "wb") as fh:
        for k in (1, 2):
            fh.write(ASIN[k][:9].encode() + feature_row(k).astype("<f4").tobytes() + b"\x00")
    with pytest.raises(DataError, match=r"record 0 .*ASIN 'A00000000' has 9 characters, expected 10"):
        build_amazon(reviews, feats, tmp_path / "o", TINY)
    # garbage where an ASIN should be (a file of another layout)
    feats.write_bytes(np.arange(RECORD_BYTES, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"record 0 .*is not a 10-character ASIN; expected records of a 10-byte"):
        build_amazon(reviews, feats, tmp_path / "o", TINY)


@pytest.mark.parametrize("bad,match", [
    ("{'reviewerID': 'U9', 'asin': 'A000000001', ", r"line 3: not a JSON object or Python dict literal"),
    ("__import__('os').system('echo pwned')", r"line 3: not a JSON object or Python dict literal"),
    ('{"reviewerID": "U9", "asin": "A000000001", "unixReviewTime": 3}', r"line 3: review has no overall"),
    ('[1, 2]', r"line 3: expected one review object per line, got list"),
    ('{"reviewerID": "U9", "asin": "A000000001", "unixReviewTime": "soon", "overall": 5}', r"line 3: unixReviewTime 'soon'"),
])
def test_amazon_malformed_review_line(amazon_files, tmp_path, bad, match):
    reviews, feats = amazon_files
    lines = gzip.decompress(reviews.read_bytes()).decode().splitlines()
    lines.insert(2, bad)
    reviews.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError, match=match):
        build_amazon(reviews, feats, tmp_path / "o", TINY)


def test_amazon_cli_errors_are_one_line(amazon_files, tmp_path, capsys):
    reviews, feats = amazon_files
    feats.write_bytes(feats.read_bytes()[:-1])
    rc = main(["build-dataset", "amazon", "--reviews", str(reviews), "--features", str(feats), "--out",
               str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "truncated" in err
    rc = main(["build-dataset", "amazon", "--reviews", str(reviews), "--features", str(tmp_path / "none.b"),
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "none.b: feature file not found" in capsys.readouterr().err


def test_amazon_too_many_negatives_names_the_limit(amazon_files, tmp_path):
    with pytest.raises(DataError, match=r"cannot sample 2 negatives per user: user 0 \(reviewerID U1\) .*--negatives <= 1"):
        build_amazon(*amazon_files, tmp_path / "o", Protocol(min_user=3, num_negatives=2))


# ------------------------------------------------------------------------------ interactions


def write_log(path: Path, sep: str, header=("user", "item", "timestamp", "rating"), with_a9=False) -> Path:
    rows = [r for r in REVIEWS if with_a9 or r[1] != 9]
    cols = len(header)
    lines = [sep.join(header)] + [sep.join(map(str, (u, f"a{k}", t, r)[:cols])) for u, k, t, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_features(tmp_path: Path) -> tuple[Path, Path]:
    ids = [f"a{k}" for k in (5, 3, 1, 4, 2, 7)]  # not in item order, one item nobody used
    np.save(tmp_path / "F.npy", np.stack([feature_row(int(s[1:]))[:16] for s in ids]))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "F.npy", tmp_path / "ids.txt"


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv")])
def test_interactions_with_features_exact(tmp_path, sep, suffix):
    log = write_log(tmp_path / f"log.{suffix}", sep)
    feats, ids = write_features(tmp_path)
    out = tmp_path / "out"
    build_interactions(log, out, TINY, features=feats, item_ids=ids)
    for name in ("pos.txt", "neg.txt", "val.txt"):
        assert (out / name).read_text() == EXPECTED[name]
    assert (out / "items.tsv").read_text() == "item\titem_id\n" + "".join(f"{k - 1}\ta{k}\n" for k in range(1, 6))
    f = np.load(out / "f_custom.npy", allow_pickle=False)
    np.testing.assert_array_equal(f, np.stack([feature_row(k)[:16] for k in range(1, 6)]).astype(np.float16))


def test_interactions_named_columns_without_rating(tmp_path):
    log = write_log(tmp_path / "log.tsv", "\t", header=("who", "what", "when"))
    feats, ids = write_features(tmp_path)
    build_interactions(log, tmp_path / "o", TINY, columns=("who", "what", "when"), features=feats, item_ids=ids)
    assert (tmp_path / "o" / "pos.txt").read_text() == EXPECTED["pos.txt"]
    with pytest.raises(DataError, match=r"--min-rating needs a rating column"):
        build_interactions(log, tmp_path / "p", Protocol(min_rating=4, min_user=3, num_negatives=1),
                           columns=("who", "what", "when"), features=feats, item_ids=ids)


@pytest.mark.parametrize("change,match", [
    ("a9", r"log.csv, line 15: item 'a9' is not listed in .*ids.txt \(1 interaction"),
    ("header", r"log.csv, line 1: no column 'timestamp' in the header"),
    ("time", r"log.csv, line 3: timestamp 'later' is not a number"),
    ("short", r"log.csv, line 4: 2 fields, expected at least 4"),
])
def test_interactions_bad_input(tmp_path, change, match):
    log = write_log(tmp_path / "log.csv", ",", with_a9=change == "a9")
    lines = log.read_text().splitlines()
    if change == "header":
        lines[0] = "user,item,time,rating"
    elif change == "time":
        lines[2] = "U1,a2,later,4"
    elif change == "short":
        lines[3] = "U1,a3"
    log.write_text("\n".join(lines) + "\n")
    feats, ids = write_features(tmp_path)
    with pytest.raises(DataError, match=match):
        build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)


def test_interactions_feature_file_checks(tmp_path):
    log = write_log(tmp_path / "log.csv", ",")
    feats, ids = write_features(tmp_path)
    np.save(feats, np.array([{"x": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"F.npy: contains pickled Python objects \(dtype object\)"):
        build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)
    np.save(feats, np.ones((5, 3), np.float32))
    with pytest.raises(DataError, match=r"5 rows but ids.txt lists 6 item ids"):
        build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)
    ids.write_text("a1\na2\na1\n")
    with pytest.raises(DataError, match=r"ids.txt, line 3: item 'a1' repeats line 1"):
        build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)
    write_features(tmp_path)  # good ids again
    np.save(feats, np.full((6, 3), 1e6, np.float32))
    with pytest.raises(AmrError, match=r"overflow float16"):
        build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_interactions_feature_file_is_opened_once_through_the_safe_reader(tmp_path, monkeypatch):
    """The .npy is opened once (header, then the kept rows); --item-ids and a truncated or
    directory input give one DataError naming the file."""
    from amr_tf import safe_io

    log = write_log(tmp_path / "log.csv", ",")
    feats, ids = write_features(tmp_path)
    opened = []
    real = safe_io.open_regular
    monkeypatch.setattr(safe_io, "open_regular", lambda path, *a, **k: opened.append(Path(path)) or real(path, *a, **k))
    build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)
    assert opened.count(feats) == 1
    data = feats.read_bytes()
    feats.write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"F.npy: truncated: the header declares a float32 array of shape \(6, 16\)"):
        build_interactions(log, tmp_path / "p", TINY, features=feats, item_ids=ids)
    feats.write_bytes(data)
    ids.unlink()
    ids.mkdir()
    with pytest.raises(DataError, match=r"ids.txt: is a directory"):
        build_interactions(log, tmp_path / "p", TINY, features=feats, item_ids=ids)
    assert not (tmp_path / "p").exists()


def test_interactions_feature_file_truncated_after_opening_is_named(tmp_path, monkeypatch):
    """Rows are read by safe_io.read_exact from the descriptor opened once: a file cut short after
    its header was checked is one DataError naming it and the row (failed before: the short row
    reached the feature writer, an AmrError about row shapes)."""
    from amr_tf.datasets import interactions

    log = write_log(tmp_path / "log.csv", ",")
    feats, ids = write_features(tmp_path)
    np.save(feats, np.ones((6, 4096), np.float32))  # rows beyond the reader's first buffer
    real = interactions.read_interactions
    monkeypatch.setattr(interactions, "read_interactions",
                        lambda *a, **k: os.truncate(feats, 128 + 4 * 4096 + 10) or real(*a, **k))
    with pytest.raises(DataError, match=r"F.npy, row [1-4]: truncated: \d+ of 16384 bytes at byte"):
        build_interactions(log, tmp_path / "o", TINY, features=feats, item_ids=ids)
    assert not (tmp_path / "o").exists()


def test_interactions_image_without_file_is_an_error(tmp_path):
    log = write_log(tmp_path / "log.csv", ",")
    images = tmp_path / "img"
    images.mkdir()
    for k in (1, 2, 3, 5):
        (images / f"a{k}.jpg").write_bytes(b"not read before the check")
    with pytest.raises(DataError, match=r"log.csv, line 5: item 'a4' has no image in"):
        build_interactions(log, tmp_path / "o", TINY, images=images)


def test_build_dataset_does_not_import_tensorflow(amazon_files, tmp_path):
    code = ("import sys; from amr_tf.cli import main; "
            f"rc = main(['build-dataset', 'amazon', '--reviews', {str(amazon_files[0])!r}, '--features', "
            f"{str(amazon_files[1])!r}, '--out', {str(tmp_path / 'o')!r}, '--min-user', '3', '--negatives', '1', "
            "'--quiet']); assert rc == 0; assert 'tensorflow' not in sys.modules, 'TensorFlow imported'")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, capture_output=True)


# ----------------------------------------------------------------------------- end to end


@slow
def test_train_runs_on_builder_output(tmp_path):
    """``python -m amr_tf train --dataset DIR --epoch 1`` on an interactions build (fresh process)."""
    rng = np.random.default_rng(5)
    lines = ["user,item,timestamp"] + [f"u{rng.integers(40)},i{rng.integers(60)},{rng.integers(10**6)}"
                                       for _ in range(900)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "F.npy", rng.random((60, 32)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("".join(f"i{k}\n" for k in range(60)))
    build_interactions(tmp_path / "log.csv", tmp_path / "ds", Protocol(min_user=3, num_negatives=20),
                       features=tmp_path / "F.npy", item_ids=tmp_path / "ids.txt")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-m", "amr_tf", "train", "--dataset", str(tmp_path / "ds"), "--epoch", "1",
                          "--weight_dir", str(tmp_path / "run"), "--quiet"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "validation val.txt" in run.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["validation"] == "val.txt" and metrics["epochs"] == 1


@slow
def test_images_are_extracted_once_then_cached(tmp_path, monkeypatch):
    """``--images``: EfficientNet-Lite0 features, and a rerun reads the cache without building the CNN."""
    from tests.conftest import shared_path

    images = shared_path("data", "amazon-sample", "images")
    rng = np.random.default_rng(2)
    lines = ["u\ti\tt"] + [f"{rng.integers(15)}\t{rng.integers(11)}\t{rng.integers(99)}" for _ in range(120)]
    (tmp_path / "log.tsv").write_text("\n".join(lines) + "\n")
    kw = dict(columns=("u", "i", "t"), images=images, cache_dir=tmp_path / "cache", progress=False)
    build_interactions(tmp_path / "log.tsv", tmp_path / "a", Protocol(min_user=3, num_negatives=3), **kw)
    import amr_tf.vision.efficientnet_lite as eff

    def no_cnn(*a, **k):
        raise AssertionError("the CNN was built although every chunk was cached")

    monkeypatch.setattr(eff, "build_feature_extractor", no_cnn)
    build_interactions(tmp_path / "log.tsv", tmp_path / "b", Protocol(min_user=3, num_negatives=3), **kw)
    assert read_dir(tmp_path / "a") == read_dir(tmp_path / "b")
    f = np.load(tmp_path / "a" / "f_effnet.npy")
    assert f.shape[1] == 1280 and np.isfinite(f).all() and (f >= 0).all()  # ReLU6 pooled activations


def test_fortran_ordered_features_give_the_same_rows(tmp_path):
    log = write_log(tmp_path / "log.csv", ",")
    feats, ids = write_features(tmp_path)
    build_interactions(log, tmp_path / "c", TINY, features=feats, item_ids=ids)
    np.save(feats, np.asfortranarray(np.load(feats)))
    build_interactions(log, tmp_path / "f", TINY, features=feats, item_ids=ids)
    assert (tmp_path / "c" / "f_custom.npy").read_bytes() == (tmp_path / "f" / "f_custom.npy").read_bytes()
