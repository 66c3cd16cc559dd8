"""Amazon product reviews with image features (McAuley et al.'s files), in the AMR directory format.

Inputs, both streamed (the real files are gigabytes):

* ``reviews_<Category>.json.gz`` (or uncompressed): one review per line, strict JSON or the older
  Python-literal dicts (``{'reviewerID': 'A1..', ...}``, parsed with :func:`ast.literal_eval`, never
  ``eval``). Used fields: ``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``. Only these four
  values of each review are kept, never the file.
* ``image_features_<Category>.b``: consecutive records of a 10-byte ASIN (ASCII) followed by 4,096
  little-endian float32 values. A first pass reads only the ASINs (seeking over the values); the
  values of the items the split keeps are read in a second pass and written row by row, so the
  features of products nobody reviewed are never loaded.

Reviews of products without a feature record are dropped (reported), then the shared protocol of
:mod:`amr_tf.datasets.protocol` applies. Output: ``pos.txt``, ``neg.txt``, ``val.txt``,
``f_amazon.npy`` (float16, unscaled), ``items.tsv`` (item, ASIN), ``users.tsv`` (user,
reviewerID), ``stats.json`` and ``README.md``.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from amr_tf.data.dataset import open_input
from amr_tf.datasets.protocol import InteractionLog, Protocol, sorted_codes, split as protocol_split
from amr_tf.datasets.writer import BuildResult, write_build
from amr_tf.errors import DataError
from amr_tf.safe_io import read_exact

__all__ = ["ASIN_BYTES", "FEATURE_DIM", "RECORD_BYTES", "build_amazon", "read_feature_index", "read_reviews"]

ASIN_BYTES = 10
FEATURE_DIM = 4096
RECORD_BYTES = ASIN_BYTES + 4 * FEATURE_DIM
CNN = "amazon"
REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime", "overall")


def _open_text_lines(path: Path) -> Iterator[bytes]:
    with open_input(path, "review file not found", "a reviews_<Category>.json(.gz) file") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        stream = gzip.GzipFile(fileobj=fh) if gz else fh
        try:
            yield from stream
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
            raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or not gzip") from None


def _parse_review(line: bytes, path: Path, lineno: int) -> dict:
    text = line.decode("utf-8", errors="replace").strip()
    try:
        record = json.loads(text)
    except ValueError:
        try:
            record = ast.literal_eval(text)  # the older dumps: Python dict literals; never eval
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            shown = text if len(text) <= 60 else text[:60] + "..."
            raise DataError(f"{path}, line {lineno}: not a JSON object or Python dict literal: {shown!r}") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}, line {lineno}: expected one review object per line, got {type(record).__name__}")
    return record


def read_reviews(path: str | os.PathLike, keep: Callable[[str], bool] | None = None):
    """Stream the review file; return ``(users, items, ts, rating, user_names, item_names, lines)``.

    ``users``/``items`` are int codes into the name lists (in order of first appearance); reviews
    whose ASIN fails ``keep`` are skipped (counted in ``lines["no_features"]``). Only the four
    used values per review are held. ``DataError`` names the line of a malformed review.
    """
    path = Path(path)
    log = InteractionLog()
    lines = {"reviews": 0, "no_features": 0, "blank": 0}
    for lineno, line in enumerate(_open_text_lines(path), 1):
        if not line.strip():
            lines["blank"] += 1
            continue
        record = _parse_review(line, path, lineno)
        missing = [f for f in REVIEW_FIELDS if f not in record]
        if missing:
            raise DataError(f"{path}, line {lineno}: review has no {', '.join(missing)} (fields: {', '.join(REVIEW_FIELDS)})")
        user, asin, when, overall = (record[f] for f in REVIEW_FIELDS)
        if not isinstance(user, str) or not user or not isinstance(asin, str) or not asin:
            raise DataError(f"{path}, line {lineno}: reviewerID and asin must be non-empty strings")
        try:
            when, overall = int(when), float(overall)
        except (TypeError, ValueError):
            raise DataError(f"{path}, line {lineno}: unixReviewTime {when!r} / overall {overall!r} are not numbers") from None
        lines["reviews"] += 1
        if keep is not None and not keep(asin):
            lines["no_features"] += 1
            continue
        log.add(user, asin, when, overall)
    if lines["reviews"] == 0:
        raise DataError(f"{path}: no reviews")
    return (*log.arrays(), lines)


def _decode_asin(raw: bytes, path: Path, record: int) -> str:
    where = f"{path}, record {record} (byte {record * RECORD_BYTES})"
    stripped = raw.rstrip(b"\x00 ")
    if raw.isascii() and stripped.isalnum() and len(stripped) != ASIN_BYTES:
        raise DataError(f"{where}: ASIN {stripped.decode()!r} has {len(stripped)} characters, expected {ASIN_BYTES}")
    if not (raw.isascii() and raw.isalnum()):
        raise DataError(
            f"{where}: {raw!r} is not a 10-character ASIN; expected records of a {ASIN_BYTES}-byte ASIN followed "
            f"by {FEATURE_DIM} little-endian float32 ({RECORD_BYTES} bytes each)"
        )
    return raw.decode("ascii")


def _open_features(path: Path):
    return open_input(path, "feature file not found", "an image_features_<Category>.b file")


def read_feature_index(path: str | os.PathLike) -> tuple[dict[str, int], int]:
    """First pass over the ``.b`` file: ``{asin: record number}`` (the first record of an ASIN
    listed twice wins) and how many duplicate records there were. Reads only the ASINs."""
    path = Path(path)
    with _open_features(path) as fh:
        return _index_records(fh, path)


def _index_records(fh, path: Path) -> tuple[dict[str, int], int]:
    """:func:`read_feature_index` of the open file ``fh``."""
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        raise DataError(f"{path}: file is empty")
    index: dict[str, int] = {}
    duplicates = 0
    n_records = size // RECORD_BYTES
    for record in range(n_records):
        raw = read_exact(fh, record * RECORD_BYTES, ASIN_BYTES, f"{path}, record {record}", DataError)
        asin = _decode_asin(raw, path, record)
        if asin in index:
            duplicates += 1
        else:
            index[asin] = record
    if size % RECORD_BYTES:  # what is left after the last whole record is shorter than a record
        raise DataError(
            f"{path}, record {n_records} (byte {n_records * RECORD_BYTES}): truncated: "
            f"{size - n_records * RECORD_BYTES} bytes left, a record is {RECORD_BYTES} (a {ASIN_BYTES}-byte ASIN "
            f"and {FEATURE_DIM} float32); the file was not fully written"
        )
    return index, duplicates


def _write_features(fh, src: Path, records: np.ndarray, out) -> None:
    """Second pass: the feature rows of ``records`` (in item order) from the open file ``fh`` (the
    one the first pass indexed, not the path opened again) to ``out``, one at a time."""
    for record in records.tolist():
        where = f"{src}, record {record}"
        data = read_exact(fh, record * RECORD_BYTES + ASIN_BYTES, 4 * FEATURE_DIM, where, DataError)
        out.write(np.frombuffer(data, dtype="<f4"), where)


def build_amazon(reviews: str | os.PathLike, features: str | os.PathLike, out_dir: str | os.PathLike,
                 protocol: Protocol, command: str = "", log: Callable[[str], None] | None = None) -> BuildResult:
    """Build the AMR directory ``out_dir`` from an Amazon review file and its ``.b`` feature file."""
    reviews, features, out_dir = Path(reviews), Path(features), Path(out_dir)
    say = log or (lambda _msg: None)
    protocol.check()
    with _open_features(features) as fh:  # open once: both passes read this file, whatever the path names later
        index, duplicate_records = _index_records(fh, features)
        return _build(reviews, features, fh, index, duplicate_records, out_dir, protocol, command, say)


def _build(reviews: Path, features: Path, fh, index: dict, duplicate_records: int, out_dir: Path,
           protocol: Protocol, command: str, say) -> BuildResult:
    """:func:`build_amazon` once the feature file ``fh`` is open and indexed."""
    say(f"{features}: {len(index):,} products with features")
    users, items, ts, rating, user_names, item_names, lines = read_reviews(reviews, keep=index.__contains__)
    say(f"{reviews}: {lines['reviews']:,} reviews, {lines['no_features']:,} of products without features")
    if len(users) == 0:
        raise DataError(f"{reviews}: none of the {lines['reviews']} reviews is of a product in {features.name}")
    # Codes in sorted-name order, so that new ids follow reviewerID and ASIN order.
    user_sorted, user_codes = sorted_codes(user_names, users)
    item_sorted, item_codes = sorted_codes(item_names, items)
    sp = protocol_split(user_codes, item_codes, ts, rating, protocol,
                        user_label=lambda key: f"reviewerID {user_sorted[key]}", log=say)
    kept_asins = item_sorted[sp.item_keys]
    records = np.fromiter((index[a] for a in kept_asins.tolist()), dtype=np.int64, count=len(kept_asins))
    drops = [
        (lines["no_features"], "reviews of products without a feature record"),
        (duplicate_records, f"duplicate feature records of an ASIN in {features.name} (the first is used)"),
        (sp.counts["duplicates_collapsed"], "repeated reviews of a product by the same user (the latest is kept)"),
        (sp.counts["below_min_rating"], "reviews below --min-rating (kept as interactions: never sampled as negatives)"),
        (sp.counts["users_removed"], "users below --min-user (k-core)"),
        (sp.counts["items_removed"], "products below --min-item (k-core)"),
    ]
    return write_build(
        out_dir, sp, protocol, cnn=CNN, feature_dim=FEATURE_DIM,
        write_features=lambda out: _write_features(fh, features, records, out),
        users_header="user\treviewerID", user_names=user_sorted[sp.user_keys],
        items_header="item\tasin", item_names=kept_asins,
        sources=[("reviews", reviews), ("image features", features)],
        title="Amazon product reviews with image features (AMR directory format)",
        intro=("Implicit feedback from an Amazon review dump (a review is an interaction) with the 4,096-d "
               "image features distributed beside it, as used by VBPR (He and McAuley, AAAI 2016) and "
               "AMR's product-recommendation task. Built by `amr-tf build-dataset amazon` "
               "(`amr_tf/datasets/amazon.py`); every number below comes from that build."),
        feature_note=(f"the {FEATURE_DIM} float32 values of the product's record in the `.b` file "
                      "(CNN image features of the product photo, computed by the data set's authors)"),
        drops=drops, command=command, log=say,
    )
