"""The original directory format, the synthetic generator and the triplet sampler."""

import dataclasses
import warnings

import numpy as np
import pytest

from amr_tf.data import AmrDataset, TripletSampler, load_amr_dir, make_synthetic, triplet_dataset, write_amr_dir
from amr_tf.errors import DataError


def write_dir(tmp_path, pos="0 1\n1 2\n", neg="3 0 2\n4 0 1\n", feats=None, cnn="resnet"):
    (tmp_path / "pos.txt").write_text(pos)
    (tmp_path / "neg.txt").write_text(neg)
    if feats is None:
        feats = np.arange(1, 11, dtype=np.float32).reshape(5, 2)
    np.save(tmp_path / f"f_{cnn}.npy", feats)
    return tmp_path


def test_load_original_format_and_counts(tmp_path):
    ds = load_amr_dir(write_dir(tmp_path))
    assert ds.num_users == 2 and ds.num_items == 5
    assert ds.train_pairs.tolist() == [[0, 1], [1, 2]]
    assert ds.test_candidates.tolist() == [[3, 0, 2], [4, 0, 1]]
    # Divided by the single global max |value| (10), not per row or column.
    np.testing.assert_allclose(ds.features, np.arange(1, 11).reshape(5, 2) / 10.0)
    assert ds.features.dtype == np.float32


def test_num_users_and_items_take_the_larger_of_both_files(tmp_path):
    with pytest.warns(UserWarning, match="no training pair in pos.txt"):  # users 1 and 2 are untrained
        ds = load_amr_dir(write_dir(tmp_path, pos="0 1\n", neg="3 0\n4 0\n2 4\n"))
    assert ds.num_users == 3 and ds.num_items == 5


def test_float16_features_load_as_float32(tmp_path):
    ds = load_amr_dir(write_dir(tmp_path, feats=np.ones((5, 3), np.float16), cnn="effnet"), cnn="effnet")
    assert ds.features.dtype == np.float32 and ds.feature_dim == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pos": ""}, r"pos.txt: file is empty"),
        ({"pos": "0 1\n1\n"}, r"pos.txt, line 2: found 1 value, expected 2"),
        ({"pos": "0 1\n1 2 3\n"}, r"pos.txt, line 2: found 3 values"),
        ({"pos": "0 1\n1 x\n"}, r"pos.txt, line 2: 'x' is not an integer"),
        ({"pos": "0 1\n-1 2\n"}, r"pos.txt, line 2: negative id -1"),
        ({"pos": "0 9\n"}, r"pos.txt, line 1: item 9 has no feature row"),
        ({"neg": "3 0 2\n4 0\n"}, r"neg.txt, line 2: found 2 values, expected 3"),
        ({"feats": np.array([[1.0, np.nan]] * 5)}, r"row 0, column 1 is nan"),
        ({"feats": np.zeros((5, 2))}, r"all features are zero"),
        ({"feats": np.ones(5)}, r"must be 2-D"),
        ({"feats": np.array([["a"]] * 5)}, r"numeric"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        load_amr_dir(write_dir(tmp_path, **kwargs))


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="dataset directory not found"):
        load_amr_dir(tmp_path / "nope")
    write_dir(tmp_path, cnn="effnet")
    with pytest.raises(DataError, match=r"f_resnet.npy: required file is missing \(found: f_effnet.npy"):
        load_amr_dir(tmp_path)


def test_candidate_that_is_a_training_item_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"neg.txt, line 1: negative candidate 1 is a training item of user 0"):
        load_amr_dir(write_dir(tmp_path, neg="3 1 2\n4 0 1\n"))


def test_write_then_load_round_trip(tmp_path, tiny_dataset):
    write_amr_dir(tiny_dataset, tmp_path, cnn="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_amr_dir(tmp_path, cnn="x")
    assert back.num_users == tiny_dataset.num_users and back.num_items == tiny_dataset.num_items
    np.testing.assert_array_equal(back.train_pairs, tiny_dataset.train_pairs)
    np.testing.assert_array_equal(back.test_candidates, tiny_dataset.test_candidates)
    np.testing.assert_allclose(back.features, tiny_dataset.features, rtol=1e-6)


def test_synthetic_is_seeded_and_well_formed():
    a = make_synthetic(50, 80, 16, num_pairs=150, num_negatives=30, seed=7)
    b = make_synthetic(50, 80, 16, num_pairs=150, num_negatives=30, seed=7)
    c = make_synthetic(50, 80, 16, num_pairs=150, num_negatives=30, seed=8)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.train_pairs) == 150 and a.test_candidates.shape == (50, 31)
    train = a.train_matrix.toarray() > 0
    for u, row in enumerate(a.test_candidates):
        assert not train[u, row].any()  # neither the test item nor the negatives were trained on
        assert len(set(row)) == len(row)


def test_sampler_rejects_training_and_cold_items(tiny_dataset):
    ds = tiny_dataset
    train = ds.train_matrix.toarray() > 0
    cold = ds.cold_start_items
    s = TripletSampler(ds, seed=0)
    u, i, j = s.sample_epoch(0)
    assert sorted(zip(u.tolist(), i.tolist())) == sorted(map(tuple, ds.train_pairs.tolist()))
    assert not train[u, j].any() and not cold[j].any()
    u2, _, j2 = TripletSampler(ds, seed=0, exclude_cold_start=False).sample_epoch(0)
    assert not train[u2, j2].any()
    if cold.any():
        draws = np.concatenate([TripletSampler(ds, seed=0, exclude_cold_start=False).sample_epoch(e)[2] for e in range(20)])
        assert cold[draws].any()  # the switch really lets cold items through


def test_cold_start_rule_follows_the_protocol(tiny_dataset):
    """``auto``: the original's rule (test positives without a training pair) under the original
    protocol; with a validation split, items without a training pair, a rule that reads no test
    item (checked by redrawing every test row: the forbidden items do not move)."""
    from amr_tf.data import carve_holdout
    from amr_tf.data.sampling import resolve_cold_start_rule

    ds = tiny_dataset
    held = carve_holdout(ds)
    assert resolve_cold_start_rule("auto", ds) == "original" and resolve_cold_start_rule("auto", held) == "train"
    assert [resolve_cold_start_rule(r, held) for r in (True, False, "original", "off")] == ["original", "off", "original", "off"]
    with pytest.raises(DataError, match="cold-start rule must be one of"):
        resolve_cold_start_rule("sometimes", ds)
    s = TripletSampler(held, seed=0)
    assert s.cold_start_rule == "train"
    untrained = held.item_popularity == 0
    assert untrained.any() and not held.cold_start_items[~untrained].any()
    j = np.concatenate([s.sample_epoch(e)[2] for e in range(5)])
    assert not untrained[j].any()
    rng = np.random.default_rng(0)
    garbage = dataclasses.replace(held, test_candidates=rng.integers(0, ds.num_items, held.test_candidates.shape))
    assert not np.array_equal(garbage.cold_start_items, held.cold_start_items)
    for e in range(3):
        for x, y in zip(TripletSampler(garbage, seed=0).sample_epoch(e), s.sample_epoch(e)):
            np.testing.assert_array_equal(x, y)
    assert TripletSampler(ds, seed=0).cold_start_rule == "original"


def test_cold_start_rule_flag_reads_old_manifests():
    """Runs before the rule had names recorded ``true``/``false``: they mean original/off."""
    import argparse

    from amr_tf.cli import _stored_flag, _train_actions
    from amr_tf.flags import cold_start_rule

    assert [cold_start_rule(t) for t in ("true", "False", "auto", "TRAIN", "off")] == ["original", "off", "auto", "train", "off"]
    with pytest.raises(argparse.ArgumentTypeError, match="auto, original, train, off"):
        cold_start_rule("maybe")
    action = _train_actions()["cold_start_rule"]
    assert action.default == "auto"
    assert _stored_flag(action, True, "old.json") == "original" and _stored_flag(action, False, "old.json") == "off"
    assert _stored_flag(action, "train", "new.json") == "train"


def test_sampler_epochs_are_reproducible_and_distinct(tiny_dataset):
    a, b = TripletSampler(tiny_dataset, seed=5), TripletSampler(tiny_dataset, seed=5)
    for x, y in zip(a.sample_epoch(3), b.sample_epoch(3)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.sample_epoch(3)[0], a.sample_epoch(4)[0])


def test_triplet_dataset_keeps_the_last_partial_batch(tiny_dataset):
    s = TripletSampler(tiny_dataset, seed=0)
    n = len(tiny_dataset.train_pairs)
    steps = s.steps_per_epoch(64)
    sizes = [int(x[0][0].shape[0]) for x in triplet_dataset(s, 64).take(steps)]
    assert sum(sizes) == n and sizes[-1] == n - 64 * (steps - 1)
    first = next(iter(triplet_dataset(s, n, initial_epoch=2)))[0]
    np.testing.assert_array_equal(first[2].numpy(), s.sample_epoch(2)[2])


@pytest.mark.parametrize("batch_size", [1, 7, 64, 203, 500])
def test_triplet_stream_is_the_samplers_batches(batch_size):
    """The tf.data stream (one NumPy call per epoch, sliced in-graph) yields exactly the sampler's batches."""
    ds = make_synthetic(num_users=40, num_items=60, feature_dim=12, num_pairs=203, num_negatives=20, seed=3)
    sampler = TripletSampler(ds, seed=5)
    stream = iter(triplet_dataset(sampler, batch_size, initial_epoch=3))
    for epoch in range(3, 6):
        for want in sampler.batches(epoch, batch_size):
            (got,) = next(stream)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.numpy(), w)


# ---------------------------------------------------------------------------- validation split


def write_val_dir(tmp_path, val="4 3\n3 4\n", **kw):
    """Items 0..4; user 0 trains on 1 and 2, user 1 on 2; tests 3 and 4."""
    write_dir(tmp_path, pos="0 1\n0 2\n1 2\n", neg="3 0\n4 0\n", **kw)
    if val is not None:
        (tmp_path / "val.txt").write_text(val)
    return tmp_path


def test_val_txt_is_read_checked_and_fingerprinted(tmp_path):
    root = write_val_dir(tmp_path)
    ds = load_amr_dir(root)
    assert ds.validation == "val.txt"
    assert ds.validation_candidates.tolist() == [[4, 3], [3, 4]] and ds.validation_users.tolist() == [0, 1]
    assert ds.record()["validation"] == "val.txt" and "val.txt" in ds.record()["files_sha256"]
    plain = load_amr_dir(root, validation="none")  # the original protocol: val.txt's positives train
    assert plain.validation_candidates is None and plain.validation == "none"
    assert plain.train_pairs.tolist() == [[0, 1], [0, 2], [0, 4], [1, 2], [1, 3]]  # merged in pos.txt's order
    assert ds.fingerprint != plain.fingerprint
    (tmp_path / "merged").mkdir()
    merged = write_dir(tmp_path / "merged", pos="0 1\n0 2\n0 4\n1 2\n1 3\n", neg="3 0\n4 0\n")
    assert load_amr_dir(merged).fingerprint == plain.fingerprint  # = the same data built without val.txt
    assert load_amr_dir(root, validation="holdout").validation == "val.txt"  # a val.txt wins over carving
    # the fingerprint without a validation split is the one the shipped checkpoints record
    import hashlib

    h = hashlib.sha256()
    for a in (plain.train_pairs, plain.test_candidates, plain.features):
        a = np.asarray(a)
        a = a.astype(np.int64) if a.dtype.kind in "iu" else a  # ids hash as int64, however they are held
        h.update(str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    assert plain.fingerprint == h.hexdigest()
    assert plain.train_pairs.dtype == np.int32 and plain.test_candidates.dtype == np.int32  # compact_ids


@pytest.mark.parametrize("val,match", [
    ("4 3\n2 4\n", r"val.txt, line 2: validation item 2 of user 1 is a training pair in pos.txt"),
    ("4 3\n3\n", r"val.txt, line 2: found 1 value, expected 2 integers like line 1"),
    ("4\n3\n", r"val.txt, line 1: found 1 value per row"),
    ("4 3\n3 9\n", r"val.txt, line 2: item 9 has no feature row"),
    ("4 3\n3 x\n", r"val.txt, line 2: 'x' is not an integer"),
    ("4 3\n3 4\n0 3\n", r"val.txt, line 3: 3 rows but pos.txt and neg.txt define only 2 users"),
])
def test_bad_val_txt_gives_line_precise_errors(tmp_path, val, match):
    with pytest.raises(DataError, match=match):
        load_amr_dir(write_val_dir(tmp_path, val=val))


def test_validation_none_appends_to_an_unsorted_pos_txt(tmp_path):
    root = write_dir(tmp_path, pos="0 2\n0 1\n1 2\n", neg="3 0\n4 0\n")
    (root / "val.txt").write_text("4 3\n3 4\n")
    assert load_amr_dir(root, validation="none").train_pairs.tolist() == [[0, 2], [0, 1], [1, 2], [0, 4], [1, 3]]


def test_val_negative_that_repeats_the_validation_item_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"val.txt, line 2: negative candidate 3 repeats user 1's validation item "
                                         r"\(1 such candidate in all\); ties count against the validation item"):
        load_amr_dir(write_val_dir(tmp_path, val="4 3\n3 3\n"))


def test_val_negative_that_is_a_training_item_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"val.txt, line 1: negative candidate 1 is a training item of user 0"):
        load_amr_dir(write_val_dir(tmp_path, val="4 1\n3 4\n"))
    with pytest.warns(UserWarning, match=r"val.txt, line 2: validation item 4 of user 1 is also its test item"):
        load_amr_dir(write_val_dir(tmp_path, val="4 3\n4 3\n"))


def test_holdout_is_seeded_and_leaves_the_pair_out(tiny_dataset):
    from amr_tf.data import carve_holdout

    a, b, c = carve_holdout(tiny_dataset, seed=1), carve_holdout(tiny_dataset, seed=1), carve_holdout(tiny_dataset, seed=2)
    assert a.fingerprint == b.fingerprint != c.fingerprint != tiny_dataset.fingerprint
    assert a.validation == "holdout(seed=1)" and a.record()["validation"] == "holdout(seed=1)"
    full = tiny_dataset.train_matrix.toarray() > 0
    kept = a.train_matrix.toarray() > 0
    counts = full.sum(axis=1)
    assert a.validation_users.tolist() == np.flatnonzero(counts >= 2).tolist()
    n_neg = tiny_dataset.test_candidates.shape[1] - 1
    assert a.validation_candidates.shape == (len(a.validation_users), 1 + n_neg)
    for u, row in zip(a.validation_users, a.validation_candidates):
        held, negs = row[0], row[1:]
        assert full[u, held] and not kept[u, held]  # a training pair of u, moved out of training
        assert (kept[u] == (full[u] & (np.arange(full.shape[1]) != held))).all()  # nothing else moved
        assert not full[u, negs].any() and tiny_dataset.test_candidates[u, 0] not in negs
        assert len(set(negs)) == n_neg and list(negs) == sorted(negs)
    assert len(a.train_pairs) == len(tiny_dataset.train_pairs) - len(a.validation_users)  # no duplicate pairs here


def test_holdout_skips_users_with_one_training_item_and_cannot_be_written(tmp_path):
    ds = load_amr_dir(write_val_dir(tmp_path, val=None), validation="holdout")
    assert ds.validation_users.tolist() == [0]  # user 1 has one training item
    assert ds.validation_candidates[0, 0] in (1, 2) and ds.validation_candidates[0, 1] in (0, 4)  # not 1, 2, test 3
    write_amr_dir(ds, tmp_path / "prefix")  # users 0..k-1 validated: val.txt can say so
    assert load_amr_dir(tmp_path / "prefix").validation_candidates.tolist() == ds.validation_candidates.tolist()
    (tmp_path / "gap").mkdir()
    gap_dir = write_dir(tmp_path / "gap", pos="0 1\n1 1\n1 2\n", neg="3 0\n4 0\n")  # user 0: one item
    gap = load_amr_dir(gap_dir, validation="holdout")
    assert gap.validation_users.tolist() == [1]
    with pytest.raises(DataError, match="skips users"):
        write_amr_dir(gap, tmp_path / "copy")


def test_write_split_round_trips_val_txt(tmp_path):
    (tmp_path / "a").mkdir()
    ds = load_amr_dir(write_val_dir(tmp_path / "a"))
    write_amr_dir(ds, tmp_path / "b")
    assert (tmp_path / "b" / "val.txt").read_text() == "4 3\n3 4\n"
    assert load_amr_dir(tmp_path / "b").fingerprint == ds.fingerprint
    write_amr_dir(load_amr_dir(tmp_path / "a", validation="none"), tmp_path / "b")  # a stale val.txt goes
    assert not (tmp_path / "b" / "val.txt").exists()


def test_validation_flag_reaches_the_loader(tmp_path):
    from amr_tf.cli import _dataset, build_parser
    from amr_tf.data import resolve_dataset

    root = write_val_dir(tmp_path, val=None)
    args = build_parser().parse_args(["evaluate", "--model", "POP", "--dataset", str(root), "--validation", "holdout"])
    assert _dataset(args).validation == "holdout(seed=0)"
    args = build_parser().parse_args(["evaluate", "--model", "POP", "--dataset", str(root)])
    assert args.validation == "auto" and _dataset(args).validation == "none"
    assert resolve_dataset("synthetic", validation="holdout").validation == "holdout(seed=0)"
    with pytest.raises(DataError, match="validation must be one of"):
        resolve_dataset("synthetic", validation="yes")


def _plain_table_text(rng, rows: int, width: int) -> str:
    """A plain table with the irregularities a text file can have: blank lines, CR LF, tabs,
    repeated spaces, leading zeros and leading or trailing whitespace."""
    lines = []
    for _ in range(rows):
        if rng.random() < 0.1:
            lines.append(rng.choice(["", "  ", "\t", "\r"]))
        vals = [str(v).zfill(int(rng.integers(1, 4))) for v in rng.integers(0, 10**int(rng.integers(1, 8)), width)]
        seps = rng.choice([" ", "  ", "\t", " \t "], width - 1)
        line = vals[0] + "".join(s + v for s, v in zip(seps, vals[1:]))
        lines.append(rng.choice(["", " ", "\t"]) + line + rng.choice(["", " ", "\r"]))
    return "\n".join(lines) + rng.choice(["", "\n", "\n\n"])


@pytest.mark.parametrize("chunk", [7, 64, 1 << 22])
def test_vectorised_table_parser_equals_the_careful_one(tmp_path, monkeypatch, chunk):
    """The fast path (numpy over the bytes) reads every plain table exactly as the careful path
    (token by token) does: the same values and line numbers, across chunk boundaries that fall
    anywhere (chunks of 7 bytes split most lines)."""
    from amr_tf.data import dataset as module

    monkeypatch.setattr(module, "_PARSE_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    for case in range(12):
        width = int(rng.integers(1, 6))
        text = _plain_table_text(rng, int(rng.integers(1, 40)), width)
        if case % 3 == 0:
            text = "\ufeff" + text  # a byte-order mark
        path = tmp_path / f"t{case}.txt"
        path.write_bytes(text.encode("utf-8"))
        fast = module._parse_plain_table(path.read_bytes(), width if case % 2 else None)
        assert fast is not None, text
        table, lines = module._parse_text_table(path, text.lstrip("\ufeff"), width, "ids")
        np.testing.assert_array_equal(fast[0], table)
        np.testing.assert_array_equal(fast[1], lines)
        assert fast[0].dtype == table.dtype and fast[1].dtype == lines.dtype


@pytest.mark.parametrize("text", [
    "0 1\n2\n",                         # a short line
    "0 1\n2 3 4\n",                     # a long line
    "0 1\n1 -2\n",                      # a negative id
    "0 1\n1 x\n",                       # not a number
    "0 1\n1 99999999999999999999\n",    # beyond int64
    "0 1\n1 1e3\n",
    "",                                 # empty
    " \n\t\n",                          # blank only
])
def test_vectorised_parser_leaves_every_bad_table_to_the_careful_path(tmp_path, text):
    """Anything but a well-formed plain table makes the fast path step aside (``None``), so every
    error is worded by one function, naming the line."""
    from amr_tf.data import dataset as module

    assert module._parse_plain_table(text.encode(), 2) is None
    path = tmp_path / "pos.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=r"pos.txt(, line \d+)?: "):
        module._read_int_table(path, 2, "ids")


def test_record_gives_the_embedded_data_its_package_relative_path(tmp_path, monkeypatch, tiny_dataset):
    """``Dataset.record()`` (what manifests, metrics.json and best.json store) names the embedded data
    relative to the package, from any working directory, and any other directory as given (failed
    before: record() gave this machine's absolute path; each caller wrapped it in portable_record)."""
    from amr_tf.data.registry import EMBEDDED, PACKAGE_DATA, resolve_dataset

    monkeypatch.chdir(tmp_path)
    if (PACKAGE_DATA / EMBEDDED["movielens-posters"][0] / "pos.txt").exists():
        assert resolve_dataset("movielens-posters").record()["path"] == "amr_tf/datasets/data/movielens_posters"
    write_amr_dir(tiny_dataset, tmp_path / "d", cnn="x")
    assert load_amr_dir("d", cnn="x").record()["path"] == "d"
    assert load_amr_dir(tmp_path / "d", cnn="x").record()["path"] == str(tmp_path / "d")


def test_int32_ids_combine_in_int64():
    """Loaded ids are int32 (:func:`compact_ids`), but every (user, item) key is computed in int64.
    With 90,000 users x 50,000 items, int32 keys wrap modulo 2**32, and user 85,899's item 17,301
    lands on the key of user 0's item 5: int32 arithmetic would make the sampler reject item 5 as a
    negative for user 0, who never trained on it."""
    from amr_tf.data.dataset import compact_ids, pair_keys

    num_items = 50_000
    u2, i2 = divmod(2**32 + 5, num_items)  # (85899, 17301): 2**32 past (user 0, item 5)
    pairs = compact_ids(np.array([[u2, i2], [3, 7]]))
    assert pairs.dtype == np.int32
    assert compact_ids(np.array([[0, 2**31]])).dtype == np.int64  # too large for int32: left as is
    wrapped = (pairs[:, 0] * np.int32(num_items) + pairs[:, 1])[0]  # what int32 arithmetic gives
    assert wrapped == 5 and pair_keys(pairs[:, 0], pairs[:, 1], num_items).tolist() == [2**32 + 5, 3 * num_items + 7]
    ds = AmrDataset(90_000, num_items, np.zeros((num_items, 1), np.float32), pairs, compact_ids(np.array([[1, 2]])))
    sampler = TripletSampler(ds, exclude_cold_start="off")
    users = np.array([0, u2, 3, 3], np.int32)
    assert sampler._rejected(users, np.array([5, i2, 7, 8], np.int32)).tolist() == [False, True, True, False]
