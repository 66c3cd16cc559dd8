"""The in-memory dataset and the loader/writer of the original release's directory format.

Directory format (one directory per dataset, as in the original AMR release):

* ``pos.txt``  -- training pairs ``u i``, one per line, 0-based ints;
* ``neg.txt``  -- one row per user (row index = user id): the held-out test positive first,
  then that user's sampled negative candidates; every row has the same length;
* ``val.txt``  -- optional, in ``neg.txt``'s layout: row u = user u's validation positive (never
  a training pair in ``pos.txt``), then its sampled negatives; it may have fewer rows than there
  are users (the users beyond its last row are not validated);
* ``f_<cnn>.npy`` -- item image features, row i = item i.

Which validation split a loaded dataset has is its ``validation`` label: ``"none"`` (the original
protocol; a ``val.txt``'s positives are then folded back into the training pairs), ``"val.txt"``,
or ``"holdout(seed=S)"`` (carved from ``pos.txt`` at load time, see :mod:`amr_tf.data.validation`). The label and the validation rows enter the fingerprint, so runs on
different splits never compare as the same dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from amr_tf.errors import DataError
from amr_tf.data.features import ItemFeatures, load_features, load_item_features  # noqa: F401
from amr_tf.io import atomic_path, atomic_write_npy, portable_path, sha256_file
from amr_tf.safe_io import open_regular, read_bytes


@dataclasses.dataclass(eq=False)
class AmrDataset:
    """Training pairs, per-user test candidates and normalised item features of one dataset."""

    num_users: int
    num_items: int
    # (num_items, F), divided by the global max |value|: a float32 array, or (loaded from a directory)
    # ItemFeatures, the memory-mapped file and its scale, which reads as that float32 array
    features: np.ndarray | ItemFeatures
    # Integer ids: int32 when loaded from a directory and every id fits (:func:`compact_ids`), else
    # int64. Combine two ids with :func:`pair_keys` (int64), never ``user * num_items`` in place.
    train_pairs: np.ndarray  # (N, 2): user, item
    test_candidates: np.ndarray  # (users, 1 + n): test positive, then negatives
    name: str = "dataset"
    path: str | None = None
    # The files a directory dataset was read from (names inside ``path``), for ``files_sha256``.
    source_files: tuple[str, ...] = ()
    # Held-out validation rows in ``neg.txt``'s layout (validation positive, then negatives), row k
    # for user ``validation_users[k]``; both None without a validation split.
    validation_candidates: np.ndarray | None = None
    validation_users: np.ndarray | None = None
    validation: str = "none"  # "none", "val.txt" or "holdout(seed=S)"

    def __post_init__(self):
        if (self.validation_candidates is None) != (self.validation_users is None):
            raise ValueError("validation_candidates and validation_users go together (both or neither)")
        if self.validation_candidates is None and self.validation != "none":
            raise ValueError(f"validation={self.validation!r} needs validation_candidates")
        if self.validation_candidates is not None and self.validation == "none":
            raise ValueError("validation_candidates given but validation='none'")

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @cached_property
    def train_matrix(self) -> sp.csr_matrix:
        """Binary users x items CSR matrix of training interactions (duplicates collapsed)."""
        u, i = self.train_pairs[:, 0], self.train_pairs[:, 1]
        m = sp.csr_matrix(
            (np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.num_users, self.num_items)
        )
        m.data[:] = 1.0
        m.sort_indices()
        return m

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Number of training pairs per item."""
        return np.bincount(self.train_pairs[:, 1], minlength=self.num_items).astype(np.int64)

    @cached_property
    def untrained_items(self) -> np.ndarray:
        """Boolean mask of items with no training pair (known from the training pairs alone)."""
        return self.item_popularity == 0

    @cached_property
    def cold_start_items(self) -> np.ndarray:
        """Boolean mask of test positives that never occur in training (the original's "cold" items;
        reads the test split, see :func:`amr_tf.data.sampling.resolve_cold_start_rule`)."""
        cold = np.zeros(self.num_items, dtype=bool)
        if len(self.test_candidates):
            cold[self.test_candidates[:, 0]] = True
        cold[self.train_pairs[:, 1]] = False
        return cold

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the arrays that define the dataset (what checkpoints and results record)."""
        h = hashlib.sha256()
        arrays = [(self.train_pairs, True), (self.test_candidates, True), (self.features, False)]
        if self.validation_candidates is not None:
            # Only with a validation split, so the original protocol keeps its fingerprint (the
            # shipped checkpoints record it).
            h.update(f"validation={self.validation}".encode())
            arrays += [(self.validation_users, True), (self.validation_candidates, True)]
        for arr, ids in arrays:
            if isinstance(arr, ItemFeatures):  # hashed by chunks, as the float32 matrix it stands for
                arr.update_hash(h)
                continue
            a = np.asarray(arr)
            if ids and a.dtype.kind in "iu":  # ids hash as int64 whatever they are held as (compact_ids)
                h.update(b"int64" + str(a.shape).encode())
                for rows in np.array_split(a, max(1, a.size // (1 << 22))):  # by chunks: no int64 copy of it all
                    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
                continue
            a = np.ascontiguousarray(a)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def record(self) -> dict:
        """What result files store about the dataset: name, ``fingerprint`` (SHA-256 over the
        parsed arrays) and, for a directory, its path (:func:`amr_tf.io.portable_path`: relative
        to the package for the embedded data, so no machine's directories are recorded) and the
        SHA-256 of each source file."""
        out = {"name": self.name, "fingerprint": self.fingerprint, "validation": self.validation}
        if self.path is not None:
            out["path"] = portable_path(self.path)
            out["files_sha256"] = self._files_sha256
        return out

    @cached_property
    def _files_sha256(self) -> dict:
        """SHA-256 of the files the dataset was read from (not of other files in its directory)."""
        root = Path(self.path)
        return {name: sha256_file(root / name) for name in self.source_files if (root / name).is_file()}

    def summary(self) -> str:
        n_cand = self.test_candidates.shape[1] - 1 if self.test_candidates.size else 0
        text = (
            f"{self.name}: {self.num_users} users, {self.num_items} items, "
            f"{len(self.train_pairs)} training pairs, {self.feature_dim}-d features, "
            f"{n_cand} negative candidates per test user"
        )
        if self.validation_candidates is not None:
            text += (f"; validation {self.validation}: {len(self.validation_candidates)} users, "
                     f"{self.validation_candidates.shape[1] - 1} negatives each")
        return text


# ---------------------------------------------------------------------------- reading

_PLAIN_INTS = re.compile(r"[0-9 \t\r\n]*")  # the common case: ASCII digits and whitespace only
_DIGITS = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_MAX_ID = 2**62  # far beyond any real id; keeps products like ``user * num_items`` inside int64


def _decode_text(path: Path, data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is tolerated
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not text; expected {what} (UTF-8/ASCII)"
        ) from None


def pair_keys(users, items, num_items: int) -> np.ndarray:
    """One int64 key per (user, item) pair, ``user * num_items + item``: sorted keys sort by user,
    then item. Computed in int64 whatever the ids are held as (int32 ids would overflow at 200k
    users x 1M items)."""
    return np.asarray(users, np.int64) * np.int64(num_items) + np.asarray(items, np.int64)


def compact_ids(table: np.ndarray) -> np.ndarray:
    """``table`` as int32 when every id fits (the training pairs and candidate lists of a
    million-item catalogue then take 115 MiB less), else unchanged. The training triplets are
    int32 anyway (:class:`amr_tf.data.sampling.TripletSampler`)."""
    return table.astype(np.int32) if table.size and int(table.max()) <= np.iinfo(np.int32).max else table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_BOM = b"\xef\xbb\xbf"
_PLAIN_BYTES = np.zeros(256, bool)  # ASCII digits, space, tab, CR, LF: the bytes _PLAIN_INTS accepts
_PLAIN_BYTES[[ord(c) for c in "0123456789 \t\r\n"]] = True
_PARSE_CHUNK = 1 << 22  # bytes parsed at a time by the fast path (bounds its working arrays)


def _parse_plain_chunk(b: np.ndarray, first_line: int, width: int | None):
    """``(values, row lines, width, line ends)`` of a chunk of bytes that ends at a line end (or the
    file's end), or ``None`` unless the chunk is plain (digits and whitespace), every id has at most 18
    digits and every non-blank line has ``width`` values (the first line's count when ``None``)."""
    if not _PLAIN_BYTES[b].all():
        return None
    digit = (b >= 48) & (b <= 57)
    edge = np.diff(digit.view(np.int8), prepend=0, append=0)
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    lengths = ends - starts
    longest = int(lengths.max()) if len(lengths) else 0
    if longest >= 19:  # possibly beyond _MAX_ID: the careful path decides and words it
        return None
    values = np.zeros(len(starts), np.int64)
    for k in range(longest):  # Horner's rule, one digit position at a time over all tokens
        more = np.flatnonzero(lengths > k)
        values[more] = values[more] * 10 + (b[starts[more] + k] - 48)
    line_ends = np.flatnonzero(b == 10)
    lines = first_line + np.searchsorted(line_ends, starts)
    row_starts = np.flatnonzero(np.diff(lines, prepend=-1))  # tokens come in file order
    counts = np.diff(row_starts, append=len(lines))
    if width is None and len(counts):
        width = int(counts[0])
    if (counts != width).any():
        return None
    return values, lines[row_starts], width, len(line_ends)


def _parse_plain_table(data: bytes, expected_cols: int | None):
    """The common case of :func:`_read_int_table` without a Python object per value: ``(table,
    row lines)`` for a file of well-formed lines of plain digits, ``None`` for anything else (the
    careful path then parses it and names the offending line). Loading a million-item catalogue's
    ``neg.txt`` (20 million ids) this way avoids as many short-lived strings, their time and the
    freed memory they leave in the process."""
    start = len(_BOM) if data.startswith(_BOM) else 0
    b = np.frombuffer(data, np.uint8)
    values, rows, line, width = [], [], 1, expected_cols
    while start < len(b):
        stop = data.find(b"\n", min(start + _PARSE_CHUNK, len(b)) - 1)  # no line straddles two chunks
        stop = len(b) if stop < 0 else stop + 1
        parsed = _parse_plain_chunk(b[start:stop], line, width)
        if parsed is None:
            return None
        v, r, width, line_ends = parsed
        values.append(v)
        rows.append(r)
        line += line_ends
        start = stop
    rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    if not len(rows):  # empty or blank: the careful path words it
        return None
    return np.concatenate(values).reshape(len(rows), width), rows


def _read_int_table(path: Path, expected_cols: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a whitespace-separated table of non-negative ints with line-precise errors.

    Lines are counted as an editor does (``\\n``); blank lines are skipped. With
    ``expected_cols=None`` every line must have as many values as the first. Returns the table
    and the 1-based line number of each of its rows (for later messages about a row). Well-formed
    plain files take a vectorised path (:func:`_parse_plain_table`); anything else, including every
    file with an error, the careful one below, which words the errors.
    """
    # Regular files only: a FIFO, device, directory or link loop is named, never waited on.
    data = read_bytes(path, what, DataError, missing=f"{path}: required file is missing")
    fast = _parse_plain_table(data, expected_cols)
    if fast is not None:
        return fast
    return _parse_text_table(path, _decode_text(path, data, what), expected_cols, what)


def _parse_text_table(path: Path, text: str, expected_cols: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_read_int_table`'s careful path: token by token, naming the first bad line."""
    rows = [(n, line.split()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: file is empty; expected {what}")
    width = expected_cols if expected_cols is not None else len(rows[0][1])
    plain = _PLAIN_INTS.fullmatch(text) is not None
    # Plain digits can only be out of range with 19+ of them: then no token needs a look.
    check_tokens = not plain or re.search(r"[0-9]{19}", text) is not None
    for n, toks in rows:
        if len(toks) != width:
            want = f"{expected_cols} integers" if expected_cols else f"{width} integers like line {rows[0][0]}"
            raise DataError(f"{path}, line {n}: found {_count(len(toks), 'value')}, expected {want}")
        for t in toks if check_tokens else ():
            if plain and len(t) < 19:
                continue
            if _DIGITS.fullmatch(t):
                if int(t) >= _MAX_ID:
                    raise DataError(f"{path}, line {n}: id {t} is too large; ids are 0-based row indices")
            elif _NEGATIVE.fullmatch(t):
                raise DataError(f"{path}, line {n}: negative id {t}; ids must be 0-based non-negative ints")
            else:
                shown = t if len(t) <= 40 else t[:40] + "..."
                raise DataError(f"{path}, line {n}: {shown!r} is not an integer id; expected {what}")
    table = np.array([t for _, toks in rows for t in toks], dtype=np.int64).reshape(len(rows), width)
    return table, np.array([n for n, _ in rows], dtype=np.int64)


def open_input(path, missing: str, expected: str, mode: str = "rb", **kwargs):
    """Open an input file for reading through :func:`amr_tf.safe_io.open_regular` (regular files only,
    never waiting on a FIFO), with one ``DataError`` line naming the path for every way it can be
    absent or unreadable: ``"<path>: <missing>"``, a directory, a FIFO, a link loop, ... ``mode``
    ``"r"`` wraps it as text (``**kwargs``: ``encoding``, ``newline``, ...)."""
    fh = open_regular(path, expected, DataError, missing=f"{path}: {missing}")
    if "b" in mode:
        return fh
    return io.TextIOWrapper(fh, **kwargs)


VALIDATION_MODES = ("auto", "holdout", "none")


def load_amr_dir(path: str | os.PathLike, cnn: str = "resnet", name: str | None = None,
                 validation: str = "auto", holdout_seed: int = 0) -> AmrDataset:
    """Load and validate a dataset in the original release's directory format.

    ``validation``: ``"auto"`` reads ``val.txt`` when the directory has one (else no validation
    split); ``"none"`` is the original protocol: a ``val.txt``'s positives are training pairs
    again (:func:`fold_validation`), so the training pairs are those of the same build without
    ``val.txt``; ``"holdout"`` reads
    ``val.txt`` if present, else carves one validation pair per user out of ``pos.txt`` with
    :func:`amr_tf.data.validation.carve_holdout` (``holdout_seed``).

    Errors (``DataError``) name the file, line or row and what was expected. Legal but suspicious
    data only warns: users of ``pos.txt`` without a ``neg.txt`` row (trained, not evaluated),
    ``neg.txt`` users without training pairs, and candidates that are training items of their user.
    """
    if validation not in VALIDATION_MODES:
        raise DataError(f"validation must be one of {', '.join(VALIDATION_MODES)}, got {validation!r}")
    root = Path(path)
    if not root.is_dir():
        what = "is a file, not a dataset directory" if root.exists() else "dataset directory not found"
        raise DataError(f"{root}: {what} (expected a directory with pos.txt, neg.txt and f_<cnn>.npy)")
    pos_path, neg_path, feat_path = root / "pos.txt", root / "neg.txt", root / f"f_{cnn}.npy"
    for p in (pos_path, neg_path, feat_path):
        if not os.path.lexists(p):  # anything else there (a FIFO, a link loop...) is named by its reader
            extra = ""
            if p is feat_path:
                found = sorted(q.name for q in root.glob("f_*.npy"))
                extra = f" (found: {', '.join(found)}; pass cnn=<name> for f_<name>.npy)" if found else ""
            raise DataError(f"{p}: required file is missing{extra}")
    pairs, pos_lines = _read_int_table(pos_path, expected_cols=2, what="lines 'user item' of two 0-based integer ids")
    cands, neg_lines = _read_int_table(neg_path, expected_cols=None,
                            what="one row per user: the test item, then its negative candidates (integer ids)")
    if cands.shape[1] < 2:
        raise DataError(
            f"{neg_path}, line 1: found 1 value per row; each row needs the test item and at least one "
            "negative candidate"
        )
    val_path = root / "val.txt"
    val = None
    if val_path.is_file():  # read under "none" too: its positives go back into training
        val, val_lines = _read_int_table(val_path, expected_cols=None,
                                         what="one row per user: the validation item, then its negative candidates")
        if val.shape[1] < 2:
            raise DataError(f"{val_path}, line {val_lines[0]}: found 1 value per row; each row needs the "
                            "validation item and at least one negative candidate")
    features = load_item_features(feat_path)

    n_rows = features.shape[0]
    tables = [(pairs[:, 1:], pos_path, pos_lines), (cands, neg_path, neg_lines)]
    if val is not None:
        tables.append((val, val_path, val_lines))
    for items, file, lines in tables:
        bad = (items >= n_rows).any(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            item = int(items[row][items[row] >= n_rows][0])
            raise DataError(
                f"{file}, line {lines[row]}: item {item} has no feature row; "
                f"{feat_path.name} has {n_rows} rows (items 0..{n_rows - 1})"
            )
    num_users = int(max(pairs[:, 0].max() + 1, len(cands)))
    num_items = int(max(pairs[:, 1].max() + 1, cands.max() + 1, val.max() + 1 if val is not None else 0))
    known_users = len(np.union1d(pairs[:, 0], np.arange(len(cands))))
    if num_users > 2 * known_users + 1000:
        row = int(np.argmax(pairs[:, 0]))
        raise DataError(
            f"{pos_path}, line {pos_lines[row]}: user id {pairs[row, 0]} implies {num_users} users but "
            f"only {known_users} appear in pos.txt and neg.txt; user ids must be consecutive 0-based indices"
        )
    # As the original: num_items comes from the id files; extra feature rows (items that never
    # occur) are dropped after the global normalisation, so Q and the feature matrix align.
    features = features.first_rows(num_items)  # still memory-mapped, same scale
    pairs, cands = compact_ids(pairs), compact_ids(cands)
    if val is not None:
        val = compact_ids(val)
    ds = AmrDataset(
        num_users=num_users,
        num_items=num_items,
        features=features,
        train_pairs=pairs,
        test_candidates=cands,
        name=name or root.name,
        path=str(root),
        source_files=(pos_path.name, neg_path.name, feat_path.name),
    )
    _warn_about_users(ds, pos_path, pos_lines, neg_path, neg_lines)
    _warn_candidates(ds, cands, neg_path, neg_lines)
    if val is not None:
        _check_validation(ds, val, val_path, val_lines)
        source_files = ds.source_files + (val_path.name,)
        # A new object, not attribute edits: the checks above cached values from pos.txt alone
        # (train_matrix, item_popularity, ...), and the constructor's checks see the validation split.
        if validation == "none":
            ds = dataclasses.replace(ds, source_files=source_files, train_pairs=fold_validation(pairs, val))
        else:
            ds = dataclasses.replace(ds, source_files=source_files, validation_candidates=val,
                                     validation_users=np.arange(len(val), dtype=np.int64), validation="val.txt")
    elif validation == "holdout":
        from amr_tf.data.validation import carve_holdout  # a module of its own: one job

        ds = carve_holdout(ds, seed=holdout_seed)
    return ds


def fold_validation(pairs: np.ndarray, val: np.ndarray) -> np.ndarray:
    """The training pairs of the original protocol: ``pairs`` (``pos.txt``) with the validation
    positives of ``val`` (row u = user u) put back.

    When ``pos.txt`` is sorted by user then item (every builder of :mod:`amr_tf.datasets` writes it
    so) the pairs are merged into that order, so a directory built with ``val.txt`` gives, under
    ``validation="none"``, exactly the arrays (and fingerprint) of the same build without it;
    otherwise they are appended after ``pos.txt``'s lines.
    """
    dtype = np.result_type(pairs.dtype, val.dtype)  # int32 ids stay int32 (compact_ids)
    held = np.stack([np.arange(len(val), dtype=dtype), val[:, 0].astype(dtype)], axis=1)
    merged = np.concatenate([pairs, held])
    if _rows_sorted(pairs):
        merged = merged[np.lexsort((merged[:, 1], merged[:, 0]))]
    return merged


def _rows_sorted(pairs: np.ndarray) -> bool:
    """Whether ``pairs`` is sorted by user, then item."""
    same_user = pairs[1:, 0] == pairs[:-1, 0]
    return bool(np.all(np.diff(pairs[:, 0]) >= 0) and np.all(pairs[1:, 1][same_user] >= pairs[:-1, 1][same_user]))


def _check_validation(ds: AmrDataset, val: np.ndarray, val_path: Path, val_lines) -> None:
    """``val.txt``: no more rows than users, positives that are not training pairs; warn about
    a validation item that is also the test item, and (:func:`_warn_candidates`) negatives that
    are training items of their user or repeat the validation item."""
    if len(val) > ds.num_users:
        raise DataError(
            f"{val_path}, line {val_lines[ds.num_users]}: {_count(len(val), 'row')} but pos.txt and neg.txt "
            f"define only {_count(ds.num_users, 'user')}; row u of val.txt is user u"
        )
    users = np.arange(len(val))
    in_train = np.asarray(ds.train_matrix[users, val[:, 0]]).ravel() > 0
    if in_train.any():
        u = int(np.argmax(in_train))
        raise DataError(
            f"{val_path}, line {val_lines[u]}: validation item {val[u, 0]} of user {u} is a training pair in "
            f"pos.txt ({_count(int(in_train.sum()), 'such row')} in all); a validation positive must be held out"
        )
    tested = users[users < len(ds.test_candidates)]
    same = val[tested, 0] == ds.test_candidates[tested, 0]
    if same.any():
        u = int(tested[np.argmax(same)])
        warnings.warn(
            f"{val_path}, line {val_lines[u]}: validation item {val[u, 0]} of user {u} is also its test item "
            f"({_count(int(same.sum()), 'such user')} in all); validation would select on the test item",
            stacklevel=3,
        )
    _warn_candidates(ds, val, val_path, val_lines, "validation", stacklevel=4)


def _warn_about_users(ds: AmrDataset, pos_path: Path, pos_lines, neg_path: Path, neg_lines) -> None:
    """Warn about users who are trained but not evaluated, or evaluated but never trained."""
    n_rows = len(ds.test_candidates)
    beyond = ds.train_pairs[:, 0] >= n_rows
    if beyond.any():
        row = int(np.argmax(beyond))
        n_users = len(np.unique(ds.train_pairs[beyond, 0]))
        warnings.warn(
            f"{pos_path}, line {pos_lines[row]}: user {ds.train_pairs[row, 0]} has no row in neg.txt "
            f"({_count(n_rows, 'row')}); {_count(n_users, 'user')} in all will be trained but not evaluated",
            stacklevel=3,
        )
    untrained = np.ones(n_rows, dtype=bool)
    untrained[ds.train_pairs[:, 0][~beyond]] = False
    if untrained.any():
        u = int(np.argmax(untrained))
        warnings.warn(
            f"{neg_path}, line {neg_lines[u]}: user {u} has no training pair in pos.txt; "
            f"{_count(int(untrained.sum()), 'user')} in all will be evaluated with untrained embeddings",
            stacklevel=3,
        )


def _warn_candidates(ds: AmrDataset, cands: np.ndarray, path: Path, lines, split: str = "test",
                     stacklevel: int = 3) -> None:
    """Warn when a candidate of ``cands`` (``neg.txt`` or ``val.txt``: row u = user u, the held-out
    positive first) is one of that user's training items or repeats the row's positive.

    Either makes the sampled metrics pessimistic: the held-out item must outrank the candidate,
    and ties count against it.
    """
    n_neg = cands.shape[1] - 1
    users = np.repeat(np.arange(len(cands)), n_neg)
    items = cands[:, 1:].ravel()
    in_train = np.asarray(ds.train_matrix[users, items]).ravel() > 0
    metrics = "metrics" if split == "test" else f"{split} metrics"
    if in_train.any():
        k = int(np.argmax(in_train))
        warnings.warn(
            f"{path}, line {lines[users[k]]}: negative candidate {items[k]} is a training item "
            f"of user {users[k]} ({_count(int(in_train.sum()), 'such candidate')} in all); {metrics} will be pessimistic",
            stacklevel=stacklevel,
        )
    same = cands[:, 1:] == cands[:, :1]
    if same.any():
        u = int(np.argmax(same.any(axis=1)))
        warnings.warn(
            f"{path}, line {lines[u]}: negative candidate {cands[u, 0]} repeats user {u}'s {split} item "
            f"({_count(int(same.sum()), 'such candidate')} in all); ties count against the {split} item",
            stacklevel=stacklevel,
        )


# ---------------------------------------------------------------------------- writing


def _write_rows(path: Path, rows, block: int = 256) -> None:
    """Rows of ints as space-separated lines, atomically, a block of rows at a time (a large
    ``neg.txt`` never exists as one string or one list of Python ints)."""
    rows = np.asarray(rows)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
        for start in range(0, len(rows), block):
            fh.write("".join(" ".join(map(str, row)) + "\n" for row in rows[start:start + block].tolist()))


def write_split(path: str | os.PathLike, train_pairs, test_candidates, validation_candidates=None) -> Path:
    """Write ``pos.txt``, ``neg.txt`` and, when given, ``val.txt`` (each atomically) into ``path``.

    ``validation_candidates`` row u is user u, as in ``neg.txt``. The one writer of the id files:
    :func:`write_amr_dir` and the dataset builders (:mod:`amr_tf.datasets`) call it.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    _write_rows(root / "pos.txt", train_pairs)
    _write_rows(root / "neg.txt", test_candidates)
    if validation_candidates is not None:
        _write_rows(root / "val.txt", validation_candidates)
    elif (root / "val.txt").is_file():
        (root / "val.txt").unlink()  # a stale split from an earlier write would be read back
    return root


def write_amr_dir(ds: AmrDataset, path: str | os.PathLike, cnn: str = "resnet", feature_dtype=np.float32) -> Path:
    """Write ``ds`` in the original directory format (each file atomically), with ``val.txt`` when
    ``ds`` has a validation split for users 0.. in order (a holdout that skipped users cannot be
    written in that layout: ``DataError``)."""
    val = ds.validation_candidates
    if val is not None and not np.array_equal(ds.validation_users, np.arange(len(val))):
        raise DataError(
            f"{ds.name}: validation split {ds.validation} skips users (row k is not user k), which val.txt "
            "cannot express; write the dataset without it (validation='none')"
        )
    root = write_split(path, ds.train_pairs, ds.test_candidates, val)
    atomic_write_npy(root / f"f_{cnn}.npy", ds.features.astype(feature_dtype))
    return root
