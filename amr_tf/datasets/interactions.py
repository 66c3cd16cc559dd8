"""Any interaction log (CSV or TSV) with item images or item features, in the AMR directory format.

* interactions: a ``.csv`` (comma) or ``.tsv``/``.tab`` (tab) file with a header row; the columns
  named by ``columns`` (default ``user,item,timestamp,rating``) are used; the rating column is
  optional (without it every interaction is a positive). Timestamps are integers (or numbers,
  truncated) used only for their order. Streamed: only the four used values per row are kept.
* item features, one of:

  - ``images``: a folder with one image per item named ``<item id>.<jpg|jpeg|png|webp|bmp|gif>``;
    features are 1280-d EfficientNet-Lite0 features (:mod:`amr_tf.vision`), extracted in batches
    with a progress bar and a resumable cache (:func:`amr_tf.vision.feature_cache.extract_cached`);
    only this path imports TensorFlow;
  - ``features`` + ``item_ids``: an ``.npy`` array whose row r belongs to the item on line r + 1
    of ``item_ids``. The array is opened once (:func:`amr_tf.safe_io.open_npy`: a regular file,
    never a FIFO), its header checked (no pickled objects, 2-D, numeric, not truncated), and only
    the kept rows are read (:meth:`~amr_tf.safe_io.NpyFile.rows`: one seek each, a Fortran-ordered
    array through a read-only mapping).

An interaction naming an item without an image or feature row is an error (the first such line
is named). Then the shared protocol of :mod:`amr_tf.datasets.protocol` applies.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from amr_tf.data.dataset import open_input
from amr_tf.datasets.protocol import InteractionLog, Protocol, sorted_codes, split as protocol_split
from amr_tf.datasets.writer import BuildResult, write_build
from amr_tf.errors import DataError
from amr_tf.safe_io import NpyFile, open_npy, read_bytes

__all__ = ["DEFAULT_COLUMNS", "IMAGE_SUFFIXES", "build_interactions", "read_interactions"]

DEFAULT_COLUMNS = ("user", "item", "timestamp", "rating")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_ROWS_PER_BLOCK = 256


def _delimiter(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise DataError(f"{path}: expected a .csv or .tsv interactions file")


def read_interactions(path: str | os.PathLike, columns: Sequence[str] = DEFAULT_COLUMNS,
                      has_item: Callable[[str], bool] | None = None, what_missing: str = "has no feature"):
    """Stream the log; return ``(users, items, ts, rating, user_names, item_names, rows)``.

    ``columns`` = (user, item, timestamp[, rating]) header names. ``has_item(item)`` False for any
    row raises ``DataError`` naming the first such line and how many there are.
    """
    path = Path(path)
    if len(columns) not in (3, 4) or len(set(columns)) != len(columns):
        raise DataError(f"--columns: expected 3 or 4 distinct names user,item,timestamp[,rating], got {','.join(columns)}")
    fh = open_input(path, "interactions file not found", "a .csv or .tsv file", "r", newline="", encoding="utf-8-sig")
    log = InteractionLog()
    missing_first, missing_count = None, 0
    with fh:
        reader = csv.reader(fh, delimiter=_delimiter(path))
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty; expected a header row and interactions") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}, line 1: cannot read the header ({exc})") from None
        header = [h.strip() for h in header]
        wanted = list(columns)
        if len(wanted) == 4 and wanted[3] not in header and tuple(columns) == DEFAULT_COLUMNS:
            wanted = wanted[:3]  # the default rating column is optional
        absent = [c for c in wanted if c not in header]
        if absent:
            raise DataError(f"{path}, line 1: no column {', '.join(map(repr, absent))} in the header "
                            f"({', '.join(header)}); name the columns with --columns user,item,timestamp[,rating]")
        idx = [header.index(c) for c in wanted]
        width = max(idx) + 1
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not f.strip() for f in row):
                    continue
                if len(row) < width:
                    raise DataError(f"{path}, line {line}: {len(row)} fields, expected at least {width} "
                                    f"(columns {', '.join(header)})")
                user, item, when = row[idx[0]].strip(), row[idx[1]].strip(), row[idx[2]].strip()
                if not user or not item:
                    raise DataError(f"{path}, line {line}: empty {wanted[0] if not user else wanted[1]}")
                try:
                    stamp = int(when)
                except ValueError:
                    try:
                        stamp = int(float(when))
                    except (ValueError, OverflowError):
                        raise DataError(f"{path}, line {line}: {wanted[2]} {when!r} is not a number") from None
                value = float("nan")
                if len(idx) == 4:
                    try:
                        value = float(row[idx[3]])
                    except ValueError:
                        raise DataError(f"{path}, line {line}: {wanted[3]} {row[idx[3]]!r} is not a number") from None
                if has_item is not None and not has_item(item):
                    missing_count += 1
                    missing_first = missing_first or (line, item)
                    continue
                log.add(user, item, stamp, value)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}, line {reader.line_num}: cannot parse ({exc})") from None
    if missing_first is not None:
        line, item = missing_first
        raise DataError(f"{path}, line {line}: item {item!r} {what_missing} ({missing_count} interaction(s) in all "
                        "name items without one)")
    if len(log) == 0:
        raise DataError(f"{path}: no interactions after the header")
    return (*log.arrays(), len(log), len(idx) == 4)


def _image_index(images: Path) -> dict[str, Path]:
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found")
    index: dict[str, Path] = {}
    for entry in sorted(images.iterdir()):
        if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            if entry.stem in index:
                raise DataError(f"{images}: two images for item {entry.stem!r} ({index[entry.stem].name}, {entry.name})")
            index[entry.stem] = entry
    if not index:
        raise DataError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return index


def _read_item_ids(item_ids: Path, features: Path) -> dict[str, int]:
    """``{item id: row}`` from ``item_ids`` (line r + 1 names row r of ``features``)."""
    data = read_bytes(item_ids, "an item id file", DataError, missing=f"{item_ids}: item id file not found")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{item_ids}: cannot read ({exc})") from None
    rows: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if not name:
            raise DataError(f"{item_ids}, line {n}: empty item id (line r is row r - 1 of {features.name})")
        if name in rows:
            raise DataError(f"{item_ids}, line {n}: item {name!r} repeats line {rows[name] + 1}")
        rows[name] = n - 1
    return rows


def _open_features(path: Path) -> NpyFile:
    """The ``.npy`` feature array, opened once and its header checked by :func:`amr_tf.safe_io.open_npy`
    (a regular file; no pickled objects; not truncated), then checked to be 2-D and numeric."""
    table = open_npy(path, "an .npy feature array", DataError, missing=f"{path}: feature file not found")
    if len(table.shape) != 2 or table.dtype.kind not in "fiu" or table.shape[1] == 0:
        table.close()
        raise DataError(f"{path}: expected a 2-D numeric array (items x dims), got {table.dtype} {table.shape}")
    return table


def build_interactions(interactions: str | os.PathLike, out_dir: str | os.PathLike, protocol: Protocol, *,
                       columns: Sequence[str] = DEFAULT_COLUMNS, images: str | os.PathLike | None = None,
                       features: str | os.PathLike | None = None, item_ids: str | os.PathLike | None = None,
                       batch_size: int = 32, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                       command: str = "", log: Callable[[str], None] | None = None) -> BuildResult:
    """Build the AMR directory ``out_dir`` from an interaction log and item images or features."""
    interactions, out_dir = Path(interactions), Path(out_dir)
    say = log or (lambda _msg: None)
    protocol.check()
    if (images is None) == (features is None) or (features is not None) != (item_ids is not None):
        raise DataError("give either --images DIR or --features F.npy with --item-ids ids.txt")
    with contextlib.ExitStack() as stack:  # the feature file stays open (once) until the build is written
        table = rows = image_index = None
        if images is not None:
            image_index = _image_index(Path(images))
            has_item, missing = image_index.__contains__, f"has no image in {images}"
        else:
            features, item_ids = Path(features), Path(item_ids)
            rows = _read_item_ids(item_ids, features)
            table = _open_features(features)
            stack.callback(table.close)
            if table.shape[0] != len(rows):
                raise DataError(f"{features}: {table.shape[0]} rows but {item_ids.name} lists {len(rows)} item ids")
            has_item, missing = rows.__contains__, f"is not listed in {item_ids}"
        return _build(interactions, out_dir, protocol, columns, has_item, missing, image_index, table, rows,
                      item_ids, batch_size, cache_dir, progress, command, say)


def _build(interactions, out_dir, protocol, columns, has_item, missing, image_index, table, rows, item_ids,
           batch_size, cache_dir, progress, command, say) -> BuildResult:
    """:func:`build_interactions` once its item source is open: ``image_index`` (images) or
    ``table`` (an open :class:`~amr_tf.safe_io.NpyFile`) with ``rows`` (item id -> row)."""
    users, items, ts, rating, user_names, item_names, n_rows, rated = read_interactions(
        interactions, columns, has_item, missing)
    if protocol.min_rating is not None and not rated:
        raise DataError(f"{interactions}: --min-rating needs a rating column (--columns user,item,timestamp,rating)")
    say(f"{interactions}: {n_rows:,} interactions of {len(user_names):,} users on {len(item_names):,} items")
    user_sorted, user_codes = sorted_codes(user_names, users)
    item_sorted, item_codes = sorted_codes(item_names, items)
    sp = protocol_split(user_codes, item_codes, ts, rating, protocol,
                        user_label=lambda key: f"user id {user_sorted[key]}", log=say)
    kept = item_sorted[sp.item_keys].tolist()

    if table is None:
        from amr_tf.vision.feature_cache import extract_cached  # TensorFlow only on this path
        from amr_tf.vision.efficientnet_lite import FEATURE_DIM

        cnn, dim = "effnet", FEATURE_DIM
        cache = Path(cache_dir) if cache_dir else out_dir.parent / f".{out_dir.name}.feature-cache"
        paths = [image_index[k] for k in kept]
        say(f"extracting features of {len(paths):,} images (cache: {cache})")
        sources = [("interactions", interactions)]
        feature_note = ("1280-d EfficientNet-Lite0 (ImageNet) features of each item's image "
                        f"(`amr_tf.vision.features.extract_features`, batch size {batch_size})")

        def write_features(out):
            for block in extract_cached(paths, cache, batch_size=batch_size, progress=progress):
                out.write(block, "image features")
    else:
        cnn, dim = "custom", int(table.shape[1])
        order = np.fromiter((rows[k] for k in kept), dtype=np.int64, count=len(kept))
        sources = [("interactions", interactions), ("item features", table.path), ("item ids", item_ids)]
        feature_note = f"the rows of `{table.path.name}` named by `{item_ids.name}`"

        def write_features(out):
            for block, where in table.rows(order, _ROWS_PER_BLOCK):
                out.write(block, where)

    drops = [
        (sp.counts["duplicates_collapsed"], "repeated interactions of a user with an item (the latest is kept)"),
        (sp.counts["below_min_rating"], "interactions below --min-rating (never sampled as negatives)"),
        (sp.counts["users_removed"], "users below --min-user (k-core)"),
        (sp.counts["items_removed"], "items below --min-item (k-core)"),
    ]
    return write_build(
        out_dir, sp, protocol, cnn=cnn, feature_dim=dim, write_features=write_features,
        users_header="user\tuser_id", user_names=user_sorted[sp.user_keys],
        items_header="item\titem_id", item_names=kept, sources=sources,
        title=f"{interactions.stem}: interactions with item {'images' if table is None else 'features'} "
              "(AMR directory format)",
        intro=("Implicit feedback from an interaction log, with visual item features. Built by "
               "`amr-tf build-dataset interactions` (`amr_tf/datasets/interactions.py`); every number below "
               "comes from that build."),
        feature_note=feature_note, drops=drops, command=command, log=say,
    )
