"""MovieLens-100K poster dataset: title matcher, builder rules, determinism, real-data counts.

The builder is run with a fake feature extractor (a hash of each poster's bytes), so no CNN is
needed. The real-data checks use ``../shared/data`` beside the repository and skip without it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from amr_tf.datasets import build_movielens_posters as cli
from amr_tf.datasets import movielens_posters as mlp
from amr_tf.datasets.movielens_posters import (
    TitleMatcher,
    build,
    parse_title,
    read_ml100k_items,
    read_ml1m_movies,
    repair_mojibake,
    title_key,
)
from amr_tf.errors import AmrError, DataError
from tests.conftest import SHARED

SHARED_DATA = SHARED / "data"
HAVE_SHARED = all(
    (SHARED_DATA / p).exists()
    for p in ("ml-100k/u.data", "ml-100k/u.item", "ml-1m/movies.dat", "ml1m-posters/images")
)
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"{SHARED_DATA} with MovieLens and posters not present")

FAKE_DIM = 8


def fake_extractor(image_paths, batch_size=32, progress=True):
    """Deterministic stand-in for the CNN: 8 numbers from the SHA-256 of each file's bytes."""
    out = np.empty((len(image_paths), FAKE_DIM), dtype=np.float32)
    for row, path in enumerate(image_paths):
        digest = hashlib.sha256(Path(path).read_bytes()).digest()
        out[row] = np.frombuffer(digest[:FAKE_DIM], dtype=np.uint8) / 255.0
    return out


def read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ------------------------------------------------------------------------------------------
# Title matcher
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trailing, leading",
    [
        ("Shawshank Redemption, The", "The Shawshank Redemption"),
        ("Fish Called Wanda, A", "A Fish Called Wanda"),
        ("American in Paris, An", "An American in Paris"),
        ("Postino, Il", "Il Postino"),
        ("Enfer, L'", "L'Enfer"),
        ("Boot, Das", "Das Boot"),
        ("Bewegte Mann, Der", "Der Bewegte Mann"),
        ("Mariachi, El", "El Mariachi"),
        ("Misérables, Les", "Les Miserables"),
        ("Promesse, La", "La Promesse"),
    ],
)
def test_title_key_articles_both_ways(trailing, leading):
    assert title_key(trailing) == title_key(leading)
    assert title_key(trailing, drop_article=False) == title_key(leading, drop_article=False)


def test_title_key_accents_case_punctuation():
    assert title_key("Cérémonie, La") == title_key("CEREMONIE, LA") == "ceremonie"
    assert title_key("Á köldum klaka", drop_article=False) == "akoldumklaka"
    assert title_key("Jungle2Jungle") == title_key("Jungle 2 Jungle")
    assert title_key("Batman & Robin") == title_key("Batman and Robin")
    assert title_key("Face/Off") == title_key("Face Off")
    assert title_key("The") == "the"  # a title that is only an article keeps it


def test_parse_title_year_alternates():
    p = parse_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
    assert p.year == 1995
    assert p.keys == ("cityoflostchildren", "citedesenfantsperdus")
    assert p.exact == "thecityoflostchildren"
    assert parse_title("Land Before Time III: The Time of the Great Giving (1995) (V)").year == 1995
    assert parse_title("Hard 8 (a.k.a. Sydney, a.k.a. Hard Eight) (1996)").keys == ("hard8", "sydney", "hardeight")
    assert parse_title("unknown").year is None


@pytest.mark.parametrize(
    "title, ml1m, expected, how",
    [
        ("Shawshank Redemption, The (1994)", {318: "The Shawshank Redemption (1994)"}, 318, "exact"),
        ("The Shawshank Redemption (1994)", {318: "Shawshank Redemption, The (1994)"}, 318, "exact"),
        ("Misérables, Les (1995)", {73: "Miserables, Les (1995)", 74: "Miserables, Les (1998)"}, 73, "exact"),
        ("Jungle2Jungle (1997)", {1: "Jungle 2 Jungle (1997)"}, 1, "exact"),
        # alternate titles, on either side
        ("City of Lost Children, The (Cité des enfants perdus, La) (1995)", {29: "Cité des enfants perdus, La (1995)"}, 29, "alternate"),
        ("Cité des enfants perdus, La (1995)", {29: "City of Lost Children, The (Cité des enfants perdus, La) (1995)"}, 29, "alternate"),
        ("Boot, Das (1981)", {1: "Boat, The (Das Boot) (1981)"}, 1, "alternate"),
        ("Hard Eight (1996)", {2952: "Hard 8 (a.k.a. Sydney, a.k.a. Hard Eight) (1996)"}, 2952, "alternate"),
        # the article is part of the exact key: "Les Boys" is not "The Boys"
        ("Boys, Les (1997)", {1: "Boys, Les (1997)", 2: "Boys, The (1997)"}, 1, "exact"),
        ("Star Wars (1977)", {260: "Star Wars: Episode IV - A New Hope (1977)"}, 260, "subtitle"),
        ("Alien 3 (1992)", {1320: "Alien\ufffd (1992)", 1214: "Alien (1979)"}, 1320, "lossy"),
        # year: the same year wins; one year off only when unique; two years off never
        ("Hamlet (1996)", {1: "Hamlet (1990)", 2: "Hamlet (1996)", 3: "Hamlet (1997)"}, 2, "exact"),
        ("Howling, The (1981)", {1000: "Howling, The (1980)"}, 1000, "year+-1"),
        ("Heat (1995)", {1: "Heat (1994)", 2: "Heat (1996)"}, None, "ambiguous"),
        ("Drunks (1995)", {1119: "Drunks (1997)"}, None, "none"),
        # no match at all
        ("Good Morning (1971)", {3448: "Good Morning, Vietnam (1987)"}, None, "none"),
        ("Some Obscure Film (1990)", {1: "Toy Story (1995)"}, None, "none"),
        ("unknown", {1: "unknown (1995)"}, None, "no-year"),
    ],
)
def test_matcher_cases(title, ml1m, expected, how):
    match = TitleMatcher(ml1m).match(title)
    assert (match.ml1m_id, match.how) == (expected, how)


def test_repair_mojibake():
    assert repair_mojibake("Mis\u959eables, Les (1995)") == "Misérables, Les (1995)"
    mangled = "Cérémonie, La (1995)".encode("iso-8859-1").decode("gbk")  # how the bad copy came about
    assert mangled != "Cérémonie, La (1995)"
    assert repair_mojibake(mangled) == "Cérémonie, La (1995)"
    assert repair_mojibake("Alien\ufffd (1992)") == "Alien\ufffd (1992)"
    assert repair_mojibake("Misérables, Les (1995)") == "Misérables, Les (1995)"  # genuine Latin-1: untouched
    assert repair_mojibake("Toy Story (1995)") == "Toy Story (1995)"


def test_readers_accept_latin1_and_utf8(tmp_path):
    text = "73::Misérables, Les (1995)::Drama|Musical\r\n1::Toy Story (1995)::Animation\r\n"
    (tmp_path / "latin1.dat").write_bytes(text.encode("iso-8859-1"))
    (tmp_path / "utf8.dat").write_bytes(text.encode("utf-8"))
    expected = {73: "Misérables, Les (1995)", 1: "Toy Story (1995)"}
    assert read_ml1m_movies(tmp_path / "latin1.dat") == expected
    assert read_ml1m_movies(tmp_path / "utf8.dat") == expected
    (tmp_path / "u.item").write_bytes("x|Toy Story (1995)|01-Jan-1995\n".encode())
    with pytest.raises(DataError, match=r"u\.item:1: movie id 'x'"):
        read_ml100k_items(tmp_path / "u.item")


@pytest.mark.parametrize("reader, sep, layout", [(read_ml100k_items, "|", "id|title|..."),
                                                (read_ml1m_movies, "::", "id::title::genres")])
def test_movie_list_readers_name_each_defect(tmp_path, reader, sep, layout):
    """Both movie lists (one reader, two layouts) name the line of each defect, as before."""
    path = tmp_path / "movies"
    for lines, message in ((["1{s}A (1995){s}x", "", "only one field"], f"movies:3: expected '{layout}', got 'only"),
                           (["1{s}A (1995){s}x", "1{s}B (1996){s}x"], "movies:2: movie id 1 appears twice"),
                           (["x{s}A (1995){s}x"], "movies:1: movie id 'x' is not an integer"),
                           (["", " "], "movies: no movies")):
        path.write_text("\n".join(line.format(s=sep) for line in lines) + "\n")
        with pytest.raises(DataError, match=re.escape(message)):
            reader(path)
    path.write_text(f"2{sep}B (1996){sep}x\n\n1{sep} A (1995) {sep}x\n")
    assert reader(path) == {2: "B (1996)", 1: "A (1995)"}


# ------------------------------------------------------------------------------------------
# Builder on a tiny synthetic MovieLens-like fixture
# ------------------------------------------------------------------------------------------

ML100K_ITEMS = {
    1: "Toy Story (1995)",
    2: "Shawshank Redemption, The (1994)",
    3: "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
    4: "Chasing Amy (1997)",
    5: "Chasing Amy (1997)",  # duplicate of 4 -> merged into 4
    6: "No Poster Movie (1990)",  # matched, but no poster file
    7: "Unmatched Film (1980)",  # not in MovieLens-1M
    8: "Howling, The (1981)",  # MovieLens-1M says 1980
    9: "Heat (1995)",
}
ML1M_MOVIES = {
    1: "Toy Story (1995)",
    318: "The Shawshank Redemption (1994)",
    29: "Cité des enfants perdus, La (1995)",
    1639: "Chasing Amy (1997)",
    500: "No Poster Movie (1990)",
    1000: "Howling, The (1980)",
    6: "Heat (1995)",
}
POSTERS = (1, 318, 29, 1639, 1000, 6)
RATINGS = [  # user, ML-100K item, rating, timestamp
    # user 10: latest positive is item 3; item 9 rated 2 (not positive, never a negative)
    (10, 1, 5, 100), (10, 2, 4, 200), (10, 3, 4, 300), (10, 9, 2, 150),
    # user 20: items 1, 2, 8 tie at t=500 -> the largest item (8) is the test item
    (20, 1, 4, 500), (20, 2, 5, 500), (20, 8, 4, 500), (20, 3, 1, 10),
    # user 30: rated both copies of Chasing Amy; the later rating (5 on id 5) wins -> positive
    (30, 4, 2, 100), (30, 5, 5, 200), (30, 9, 4, 50), (30, 6, 5, 300), (30, 7, 5, 400),
    # user 40: a single positive -> removed
    (40, 1, 5, 100), (40, 2, 3, 200),
    # user 50: the later copy rating is 3, so only one positive (item 9) -> removed
    (50, 9, 5, 10), (50, 4, 4, 20), (50, 5, 3, 30),
]


def write_fixture(root: Path) -> Path:
    """A MovieLens-shaped ``shared/data`` folder: Latin-1 files, tab-separated ratings, posters."""
    (root / "ml-100k").mkdir(parents=True)
    (root / "ml-1m").mkdir()
    images = root / "ml1m-posters" / "images"
    images.mkdir(parents=True)
    (root / "ml-100k" / "u.item").write_bytes(
        "".join(f"{i}|{t}|01-Jan-1995||http://x|0|1\n" for i, t in ML100K_ITEMS.items()).encode("iso-8859-1")
    )
    (root / "ml-100k" / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in RATINGS))
    (root / "ml-1m" / "movies.dat").write_bytes(
        "".join(f"{i}::{t}::Drama\r\n" for i, t in ML1M_MOVIES.items()).encode("iso-8859-1")
    )
    for movie_id in POSTERS:
        (images / f"{movie_id}.jpg").write_bytes(f"poster of {movie_id}".encode() * 3)
    return root


@pytest.fixture
def fixture_dir(tmp_path):
    return write_fixture(tmp_path / "shared")


def test_build_synthetic_exact(fixture_dir, tmp_path):
    out = tmp_path / "out"
    report = build(fixture_dir, out, validation=False, extract_features=fake_extractor, num_negatives=2, seed=7)

    assert sorted(p.name for p in out.iterdir()) == sorted(mlp.OUTPUT_FILES)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left
    assert report.match_tiers == {"exact": 6, "alternate": 1, "none": 1, "year+-1": 1}
    assert (report.matched_movies, report.poster_movies, report.poster_ratings) == (8, 7, 16)
    assert (report.duplicate_ids_merged, report.duplicate_ratings_collapsed) == (1, 2)
    assert (report.positive_interactions, report.positive_users, report.positive_items) == (10, 5, 6)
    assert report.ml100k_users == 5
    assert (report.users_removed, report.positives_removed) == (2, 2)
    assert (report.num_users, report.num_items, report.train_pairs, report.test_pairs) == (3, 6, 5, 3)
    assert (report.items_without_train_positive, report.max_negatives, report.feature_dim) == (3, 2, FAKE_DIM)

    # dense ids in ML-100K order: users 10, 20, 30 -> 0, 1, 2; items 1, 2, 3, 4, 8, 9 -> 0..5
    assert (out / "users.tsv").read_text() == "user\tml100k_id\n0\t10\n1\t20\n2\t30\n"
    items = [line.split("\t") for line in (out / "items.tsv").read_text(encoding="utf-8").splitlines()]
    assert items[0] == ["item", "ml100k_id", "ml1m_id", "title"]
    assert [row[:3] for row in items[1:]] == [
        ["0", "1", "1"], ["1", "2", "318"], ["2", "3", "29"], ["3", "4", "1639"], ["4", "8", "1000"], ["5", "9", "6"],
    ]
    assert items[3][3] == ML100K_ITEMS[3]

    # leave-one-out by time: u0 -> ML item 3 (latest), u1 -> ML item 8 (tie broken to the larger id),
    # u2 -> ML item 4 (the later duplicate rating); the rest trains, sorted by user then item
    assert (out / "pos.txt").read_text() == "0 0\n0 1\n1 0\n1 1\n2 5\n"
    neg = np.loadtxt(out / "neg.txt", dtype=np.int64, ndmin=2)
    assert neg.shape == (3, 3)
    assert neg[:, 0].tolist() == [2, 4, 3]
    # negatives: never rated at any value (u0 rated item 5 with 2, u1 item 2 with 1, u2 both Amy copies)
    assert neg[0, 1:].tolist() == [3, 4]
    assert neg[1, 1:].tolist() == [3, 5]
    assert set(neg[2, 1:].tolist()) <= {0, 1, 2, 4} and len(set(neg[2, 1:].tolist())) == 2

    feats = np.load(out / "f_effnet.npy")
    assert feats.dtype == np.float16 and feats.shape == (6, FAKE_DIM)
    expected = fake_extractor([str(fixture_dir / "ml1m-posters" / "images" / f"{m}.jpg") for m in (1, 318, 29, 1639, 1000, 6)])
    np.testing.assert_array_equal(feats, expected.astype(np.float16))

    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_users"] == 3 and stats["num_negatives"] == 2 and stats["seed"] == 7
    card = (out / "README.md").read_text(encoding="utf-8")
    for name in mlp.DATA_FILES:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() in card
    assert "Harper and Joseph A. Konstan" in card and "not** included" in card


def test_build_synthetic_is_byte_identical_and_seeded(fixture_dir, tmp_path):
    a = build(fixture_dir, tmp_path / "a", validation=False, extract_features=fake_extractor, num_negatives=2, seed=1)
    build(fixture_dir, tmp_path / "b", validation=False, extract_features=fake_extractor, num_negatives=2, seed=1)
    assert read_dir(tmp_path / "a") == read_dir(tmp_path / "b")
    # rebuilding in place replaces the old build and gives the same bytes
    before = read_dir(a.out_dir)
    build(fixture_dir, a.out_dir, validation=False, extract_features=fake_extractor, num_negatives=2, seed=1)
    assert read_dir(a.out_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "shared"]


def test_features_are_written_by_the_builders_one_writer(fixture_dir, tmp_path):
    """``f_effnet.npy`` goes through ``writer.write_staged``'s FeatureWriter, as every builder's: C
    order whatever the extractor returns, so the loader can map it by rows (failed before: the
    MovieLens builder's own copy np.save'd a Fortran-ordered array, which load_amr_dir refuses)."""
    from amr_tf.data import load_amr_dir

    def fortran(paths, **kwargs):
        return np.asfortranarray(fake_extractor(paths, **kwargs))

    build(fixture_dir, tmp_path / "c", validation=False, extract_features=fake_extractor, num_negatives=2)
    build(fixture_dir, tmp_path / "f", validation=False, extract_features=fortran, num_negatives=2)
    assert (tmp_path / "f" / "f_effnet.npy").read_bytes() == (tmp_path / "c" / "f_effnet.npy").read_bytes()
    assert load_amr_dir(tmp_path / "f", cnn="effnet").feature_dim == FAKE_DIM


def test_negatives_max_and_too_many(fixture_dir, tmp_path):
    report = build(fixture_dir, tmp_path / "max", validation=False, extract_features=fake_extractor, num_negatives=None)
    assert report.num_negatives == report.max_negatives == 2
    with pytest.raises(DataError, match=r"cannot sample 3 negatives per user.*num_negatives <= 2"):
        build(fixture_dir, tmp_path / "three", validation=False, extract_features=fake_extractor, num_negatives=3)
    assert not (tmp_path / "three").exists()


def test_failed_build_leaves_previous_build_untouched(fixture_dir, tmp_path):
    out = tmp_path / "out"
    build(fixture_dir, out, validation=False, extract_features=fake_extractor, num_negatives=2)
    before = read_dir(out)

    def broken(paths, batch_size=32, progress=True):
        raise RuntimeError("CNN crashed")

    with pytest.raises(RuntimeError, match="CNN crashed"):
        build(fixture_dir, out, extract_features=broken, num_negatives=2, validation=False)
    with pytest.raises(AmrError, match=r"returned shape \(6, 0\)"):
        build(fixture_dir, out, extract_features=lambda p, **k: np.zeros((len(p), 0)), num_negatives=2, validation=False)
    with pytest.raises(AmrError, match="overflow float16"):
        build(fixture_dir, out, extract_features=lambda p, **k: np.full((len(p), 3), 1e6), num_negatives=2, validation=False)
    assert read_dir(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "shared"]


def test_build_rejects_bad_arguments(fixture_dir, tmp_path):
    with pytest.raises(AmrError, match="min_positives must be at least 2"):
        build(fixture_dir, tmp_path / "o", validation=False, extract_features=fake_extractor, min_positives=1)
    with pytest.raises(AmrError, match="num_negatives must be at least 1"):
        build(fixture_dir, tmp_path / "o", validation=False, extract_features=fake_extractor, num_negatives=0)
    with pytest.raises(DataError, match="shared data folder not found"):
        build(tmp_path / "nowhere", tmp_path / "o", extract_features=fake_extractor)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(AmrError, match="refusing to replace"):
        build(fixture_dir, foreign, validation=False, extract_features=fake_extractor, num_negatives=2)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with open(fixture_dir / "ml-100k" / "u.data", "a") as fh:
        fh.write("10\t99\t5\t1\n")
    with pytest.raises(DataError, match="movie id 99 is not in u.item"):
        build(fixture_dir, tmp_path / "o", validation=False, extract_features=fake_extractor, num_negatives=2)


def test_min_positives_filter(fixture_dir, tmp_path):
    # Only users 10 and 20 have 3 positives; their positives cover 4 items, all of which user 20
    # rated, so no negative is left for user 20 and the builder says so.
    with pytest.raises(DataError, match=r"user 1 \(MovieLens-100K user 20\) rated all but 0 of the 4 items"):
        build(fixture_dir, tmp_path / "o", validation=False, extract_features=fake_extractor, num_negatives=1, min_positives=3)


def test_cli(fixture_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mlp, "_default_extractor", fake_extractor)
    out = tmp_path / "cli"
    args = ["--shared", str(fixture_dir), "--out", str(out), "--negatives", "max", "--seed", "3", "--no-progress",
            "--no-validation"]
    assert cli.main(args) == 0
    assert "3 users, 6 items, 5 training pairs, 2 negatives per user" in capsys.readouterr().out
    assert cli.main(["--shared", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "shared data folder not found" in capsys.readouterr().err


def test_output_loads_with_project_loader(fixture_dir, tmp_path):
    dataset = pytest.importorskip("amr_tf.data.dataset")
    build(fixture_dir, tmp_path / "o", validation=False, extract_features=fake_extractor, num_negatives=2)
    ds = dataset.load_amr_dir(tmp_path / "o", cnn="effnet")
    assert (ds.num_users, ds.num_items, ds.feature_dim) == (3, 6, FAKE_DIM)


# ------------------------------------------------------------------------------------------
# Real MovieLens-100K + posters (../shared/data)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    if not HAVE_SHARED:
        pytest.skip(f"{SHARED_DATA} not present")
    out = tmp_path_factory.mktemp("real") / "movielens_posters"
    return build(SHARED_DATA, out, extract_features=fake_extractor)


@needs_shared
def test_real_matching_counts():
    ml100k = read_ml100k_items(SHARED_DATA / "ml-100k" / "u.item")
    ml1m = read_ml1m_movies(SHARED_DATA / "ml-1m" / "movies.dat")
    assert len(ml100k) == 1682
    matches = mlp.match_movies(ml100k, ml1m)
    assert matches[64].ml1m_id == 318  # Shawshank Redemption, The (1994)
    assert matches[50].ml1m_id == 260  # Star Wars (1977) -> Star Wars: Episode IV - A New Hope
    assert matches[246].ml1m_id == matches[268].ml1m_id  # Chasing Amy, listed twice
    assert matches[267].how == "no-year"  # "unknown"
    assert 1600 <= sum(m.ml1m_id is not None for m in matches.values()) <= 1682


@needs_shared
def test_real_build_counts_and_invariants(real_build):
    r = real_build
    assert 1350 <= r.poster_movies <= 1500
    assert 94_000 <= r.poster_ratings <= 100_000
    assert 50_000 <= r.positive_interactions <= 57_000
    assert r.ml100k_users == 943
    assert 930 <= r.num_users <= 943 and 1250 <= r.num_items <= 1400
    assert r.validation_pairs == r.num_users and r.min_positives == 3
    assert r.train_pairs + r.test_pairs + r.validation_pairs == r.positive_interactions - r.positives_removed
    out = r.out_dir
    neg = np.loadtxt(out / "neg.txt", dtype=np.int64, ndmin=2)
    val = np.loadtxt(out / "val.txt", dtype=np.int64, ndmin=2)
    assert neg.shape == val.shape == (r.num_users, 1 + r.num_negatives)
    pos = np.loadtxt(out / "pos.txt", dtype=np.int64, ndmin=2)
    assert np.all(np.diff(pos[:, 0] * r.num_items + pos[:, 1]) > 0)  # sorted, no duplicates
    assert set(np.unique(np.concatenate([pos[:, 1], neg[:, 0], val[:, 0]])).tolist()) == set(range(r.num_items))
    held = set(zip(range(r.num_users), val[:, 0].tolist())) | set(zip(range(r.num_users), neg[:, 0].tolist()))
    assert len(held) == 2 * r.num_users and not held & set(map(tuple, pos.tolist()))

    # check against the raw ratings: negatives never rated, test item is the user's latest positive
    items = [line.split("\t") for line in (out / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    ml1m_to_new = {int(row[2]): int(row[0]) for row in items}
    matches = mlp.match_movies(read_ml100k_items(SHARED_DATA / "ml-100k" / "u.item"),
                               read_ml1m_movies(SHARED_DATA / "ml-1m" / "movies.dat"))
    to_new = {mid: ml1m_to_new.get(m.ml1m_id, -1) for mid, m in matches.items()}
    users = {int(line.split("\t")[1]): int(line.split("\t")[0])
             for line in (out / "users.tsv").read_text().splitlines()[1:]}
    raw = mlp.read_ml100k_ratings(SHARED_DATA / "ml-100k" / "u.data")
    rated = np.zeros((r.num_users, r.num_items), dtype=bool)
    last_rating: dict[tuple[int, int], tuple[int, int]] = {}  # (user, item) -> latest (ts, rating)
    for u, i, rating, ts in raw.tolist():
        nu, ni = users.get(u, -1), to_new[i]
        if nu >= 0 and ni >= 0:
            rated[nu, ni] = True
            last_rating[(nu, ni)] = max(last_rating.get((nu, ni), (ts, rating)), (ts, rating))
    positives: dict[int, list[tuple[int, int]]] = {}  # user -> (ts, item) of each positive
    for (nu, ni), (ts, rating) in last_rating.items():
        if rating >= 4:
            positives.setdefault(nu, []).append((ts, ni))
    by_time = {u: sorted(p) for u, p in positives.items()}
    assert [by_time[u][-1][1] for u in range(r.num_users)] == neg[:, 0].tolist()  # latest: test
    assert [by_time[u][-2][1] for u in range(r.num_users)] == val[:, 0].tolist()  # second latest: validation
    for rows in (neg, val):
        assert not rated[np.arange(r.num_users)[:, None], rows[:, 1:]].any()
        assert np.all(np.sort(rows[:, 1:], axis=1) == rows[:, 1:])
        assert all(len(set(row)) == len(row) for row in rows.tolist())
    assert np.load(out / "f_effnet.npy").shape == (r.num_items, FAKE_DIM)


@needs_shared
def test_real_rebuild_is_byte_identical(real_build, tmp_path):
    again = build(SHARED_DATA, tmp_path / "again", extract_features=fake_extractor)
    assert read_dir(again.out_dir) == read_dir(real_build.out_dir)


SHIPPED = mlp.DEFAULT_OUT_DIR


@needs_shared
def test_rebuild_reproduces_the_shipped_files(tmp_path):
    """The staged builder, fed the shipped poster features (the CNN is not rerun), writes every
    shipped file byte for byte: split, negatives, ids, stats and card."""
    shipped = np.load(SHIPPED / mlp.FEATURE_FILE, allow_pickle=False)

    def shipped_features(paths, batch_size=32, progress=False):
        assert len(paths) == len(shipped) and batch_size == 32
        return shipped.astype(np.float32)  # float16 -> float32 -> float16 is exact

    build(SHARED_DATA, tmp_path / "rebuilt", extract_features=shipped_features,
          feature_description=mlp.DEFAULT_FEATURE_DESCRIPTION)
    assert read_dir(tmp_path / "rebuilt") == read_dir(SHIPPED)


# The previous release (commit 69e2624) shipped no val.txt: its pos.txt held the validation pairs
# too. Its pos.txt's SHA-256, and the fingerprint of the dataset it gave (recorded by the
# checkpoints trained on it), are constants of that release.
PREVIOUS_POS_SHA256 = "c738e9dccd53c5cb19e2bb5e20e08c79ffd37381f57844607d9d815b71bbc5ee"
PREVIOUS_FINGERPRINT = "24bd752b79a63e040db5dca898b257af4340e760ebc708e228a11f1f2fd6cfbb"


def test_validation_none_gives_the_previous_release():
    """``--validation none`` on the shipped dataset is the original protocol of the previous
    release: the validation positives back in training, in pos.txt's order (same bytes when
    written, same fingerprint, so the old checkpoints' numbers are unchanged)."""
    ds = mlp_load(SHIPPED, validation="none")
    assert ds.validation == "none" and ds.validation_candidates is None
    assert ds.fingerprint == PREVIOUS_FINGERPRINT
    with_val = mlp_load(SHIPPED)
    assert with_val.validation == "val.txt" and with_val.fingerprint != PREVIOUS_FINGERPRINT
    assert len(ds.train_pairs) == len(with_val.train_pairs) + len(with_val.validation_candidates)
    np.testing.assert_array_equal(ds.test_candidates, with_val.test_candidates)


def test_validation_none_writes_the_previous_pos_txt(tmp_path):
    from amr_tf.data.dataset import write_split

    write_split(tmp_path, mlp_load(SHIPPED, validation="none").train_pairs, np.zeros((1, 2), dtype=np.int64))
    assert hashlib.sha256((tmp_path / "pos.txt").read_bytes()).hexdigest() == PREVIOUS_POS_SHA256


@needs_shared
def test_rebuild_without_validation_is_the_previous_release(tmp_path):
    """``--no-validation`` (features reused from the shipped build) writes the previous release's
    pos.txt, and the same neg.txt, features and ids as the shipped build."""
    report = build(SHARED_DATA, tmp_path / "old", validation=False, reuse_features=SHIPPED)
    out = report.out_dir
    assert report.validation_pairs == 0 and not (out / "val.txt").exists()
    assert hashlib.sha256((out / "pos.txt").read_bytes()).hexdigest() == PREVIOUS_POS_SHA256
    for name in ("neg.txt", mlp.FEATURE_FILE, "items.tsv", "users.tsv"):
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert mlp_load(out).fingerprint == PREVIOUS_FINGERPRINT


@needs_shared
def test_rebuild_with_reused_features(tmp_path):
    """``reuse_features`` (no CNN) rebuilds every shipped file, val.txt and the card included;
    features of another item list are refused."""
    build(SHARED_DATA, tmp_path / "again", reuse_features=SHIPPED)
    assert read_dir(tmp_path / "again") == read_dir(SHIPPED)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("f_effnet.npy", "stats.json"):
        (other / name).write_bytes((SHIPPED / name).read_bytes())
    (other / "items.tsv").write_text((SHIPPED / "items.tsv").read_text(encoding="utf-8")[:-40], encoding="utf-8")
    with pytest.raises(DataError, match=r"items.tsv: lists other items than this build"):
        build(SHARED_DATA, tmp_path / "o", reuse_features=other)
    assert not (tmp_path / "o").exists()


def test_shipped_validation_rows():
    """The shipped val.txt: one row per user, the positive not a training pair nor the test item,
    negatives distinct, sorted, never a training item nor the test item; counts as the card says."""
    ds = mlp_load(SHIPPED)
    val, test = ds.validation_candidates, ds.test_candidates
    users = np.arange(ds.num_users)
    assert val.shape == test.shape == (942, 501) and (ds.num_items, len(ds.train_pairs)) == (1325, 53113)
    np.testing.assert_array_equal(ds.validation_users, users)
    train = ds.train_matrix.toarray() > 0
    assert not train[users, val[:, 0]].any() and not (val[:, 0] == test[:, 0]).any()
    assert not train[users[:, None], val[:, 1:]].any()
    assert not (val[:, 1:] == test[:, :1]).any() and not (test[:, 1:] == val[:, :1]).any()
    assert np.all(np.diff(val[:, 1:], axis=1) > 0)
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    assert "| validation pairs (one per user, `val.txt`) | 942 |" in card
    assert "| validation negatives (`val.txt`, 500 per row) | 471,000 |" in card
    stats = json.loads((SHIPPED / "stats.json").read_text())
    assert stats["validation_pairs"] == 942 and stats["train_pairs"] == 53113


def mlp_load(path, validation="auto"):
    from amr_tf.data import load_amr_dir

    return load_amr_dir(path, cnn="effnet", validation=validation)
