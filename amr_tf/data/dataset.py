"""The in-memory dataset and the loader/writer of the original release's directory format.

Directory format (one directory per dataset, as in the original AMR release):

* ``pos.txt``  -- training pairs ``u i``, one per line, 0-based ints;
* ``neg.txt``  -- one row per user (row index = user id): the held-out test positive first,
  then that user's sampled negative candidates; every row has the same length;
* ``f_<cnn>.npy`` -- item image features, row i = item i.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from amr_tf.errors import DataError
from amr_tf.io import atomic_write_bytes, atomic_write_text


@dataclasses.dataclass(eq=False)
class AmrDataset:
    """Training pairs, per-user test candidates and normalised item features of one dataset."""

    num_users: int
    num_items: int
    features: np.ndarray  # float32 (num_items, F), divided by the global max |value|
    train_pairs: np.ndarray  # int64 (N, 2): user, item
    test_candidates: np.ndarray  # int64 (users, 1 + n): test positive, then negatives
    name: str = "dataset"
    path: str | None = None

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
    def cold_start_items(self) -> np.ndarray:
        """Boolean mask of test positives that never occur in training (the original's "cold" items)."""
        cold = np.zeros(self.num_items, dtype=bool)
        if len(self.test_candidates):
            cold[self.test_candidates[:, 0]] = True
        cold[self.train_pairs[:, 1]] = False
        return cold

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the arrays that define the dataset (what checkpoints and results record)."""
        h = hashlib.sha256()
        for arr in (self.train_pairs, self.test_candidates, self.features):
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        n_cand = self.test_candidates.shape[1] - 1 if self.test_candidates.size else 0
        return (
            f"{self.name}: {self.num_users} users, {self.num_items} items, "
            f"{len(self.train_pairs)} training pairs, {self.feature_dim}-d features, "
            f"{n_cand} negative candidates per test user"
        )


# ---------------------------------------------------------------------------- reading


def _read_int_table(path: Path, expected_cols: int | None) -> np.ndarray:
    """Parse a whitespace-separated table of non-negative ints with line-precise errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8/ASCII text file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: file is empty; expected at least one line of integers")
    width = expected_cols if expected_cols is not None else len(rows[0][1])
    for n, toks in rows:
        if len(toks) != width:
            what = f"{expected_cols} integers" if expected_cols else f"{width} integers like line {rows[0][0]}"
            raise DataError(f"{path}, line {n}: found {len(toks)} values, expected {what}")
    flat = [t for _, toks in rows for t in toks]
    try:
        table = np.array(flat, dtype=np.int64).reshape(len(rows), width)
    except (ValueError, OverflowError):
        for n, toks in rows:
            for t in toks:
                try:
                    int(t)
                except ValueError:
                    raise DataError(f"{path}, line {n}: {t!r} is not an integer id") from None
        raise DataError(f"{path}: integer out of range") from None
    bad = np.argwhere(table < 0)
    if len(bad):
        r, c = bad[0]
        raise DataError(
            f"{path}, line {rows[r][0]}: negative id {table[r, c]}; ids must be 0-based non-negative ints"
        )
    return table


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Load an item-feature ``.npy``, validate it and divide by the global max |value| (as the original)."""
    path = Path(path)
    try:
        raw = np.load(path, allow_pickle=False, mmap_mode=None)
    except FileNotFoundError:
        raise DataError(f"{path}: feature file not found") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path}: contains pickled Python objects; expected a plain numeric array "
                "(pickled files are only accepted for the original release's weights, see load_original_npy)"
            ) from None
        raise DataError(f"{path}: not a valid .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a valid or a truncated .npy file ({exc})") from None
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "fiu":
        raise DataError(f"{path}: features must be a numeric array, got dtype {getattr(raw, 'dtype', type(raw))}")
    if raw.ndim != 2:
        raise DataError(f"{path}: features must be 2-D (items x dims), got shape {raw.shape}")
    feats = raw.astype(np.float32)
    finite = np.isfinite(feats)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise DataError(f"{path}: row {r}, column {c} is {feats[r, c]}; features must be finite")
    scale = float(np.abs(feats).max()) if feats.size else 0.0
    if scale == 0.0:
        raise DataError(f"{path}: all features are zero; cannot normalise by the global max |value|")
    # The original divides by the single global max(|features|), not per row or per column.
    feats /= scale
    return feats


def load_amr_dir(path: str | os.PathLike, cnn: str = "resnet", name: str | None = None) -> AmrDataset:
    """Load and validate a dataset in the original release's directory format."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    pos_path, neg_path, feat_path = root / "pos.txt", root / "neg.txt", root / f"f_{cnn}.npy"
    for p in (pos_path, neg_path, feat_path):
        if not p.is_file():
            extra = ""
            if p is feat_path:
                found = sorted(q.name for q in root.glob("f_*.npy"))
                extra = f" (found: {', '.join(found)}; pass cnn=<name> for f_<name>.npy)" if found else ""
            raise DataError(f"{p}: required file is missing{extra}")
    pairs = _read_int_table(pos_path, expected_cols=2)
    cands = _read_int_table(neg_path, expected_cols=None)
    if cands.shape[1] < 2:
        raise DataError(f"{neg_path}: each row needs the test positive and at least one negative candidate")
    features = load_features(feat_path)

    num_users = int(max(pairs[:, 0].max() + 1, len(cands)))
    num_items = int(max(pairs[:, 1].max() + 1, cands.max() + 1))
    if num_items > features.shape[0]:
        bad_pos = pairs[:, 1] >= features.shape[0]
        if bad_pos.any():
            line = int(np.argmax(bad_pos)) + 1
            raise DataError(
                f"{pos_path}, line {line}: item {pairs[line - 1, 1]} has no feature row; "
                f"{feat_path.name} has {features.shape[0]} rows"
            )
        row = int(np.argmax((cands >= features.shape[0]).any(axis=1)))
        raise DataError(
            f"{neg_path}, line {row + 1}: item {cands[row].max()} has no feature row; "
            f"{feat_path.name} has {features.shape[0]} rows"
        )
    # As the original: num_items comes from the id files; extra feature rows (items that never
    # occur) are dropped after the global normalisation, so Q and the feature matrix align.
    features = features[:num_items]
    ds = AmrDataset(
        num_users=num_users,
        num_items=num_items,
        features=features,
        train_pairs=pairs,
        test_candidates=cands,
        name=name or root.name,
        path=str(root),
    )
    _warn_candidates_in_train(ds, neg_path)
    return ds


def _warn_candidates_in_train(ds: AmrDataset, neg_path: Path) -> None:
    """Warn when a negative candidate is one of that user's training items (it biases the metrics)."""
    users = np.repeat(np.arange(len(ds.test_candidates)), ds.test_candidates.shape[1] - 1)
    items = ds.test_candidates[:, 1:].ravel()
    in_train = np.asarray(ds.train_matrix[users, items]).ravel() > 0
    if in_train.any():
        k = int(np.argmax(in_train))
        warnings.warn(
            f"{neg_path}, line {users[k] + 1}: negative candidate {items[k]} is a training item of user "
            f"{users[k]} ({int(in_train.sum())} such candidates in all); metrics will be pessimistic",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- writing


def write_amr_dir(ds: AmrDataset, path: str | os.PathLike, cnn: str = "resnet", feature_dtype=np.float32) -> Path:
    """Write ``ds`` in the original directory format (each file atomically)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "pos.txt", "".join(f"{u} {i}\n" for u, i in ds.train_pairs))
    atomic_write_text(root / "neg.txt", "".join(" ".join(map(str, row)) + "\n" for row in ds.test_candidates))
    import io

    buf = io.BytesIO()
    np.save(buf, ds.features.astype(feature_dtype), allow_pickle=False)
    atomic_write_bytes(root / f"f_{cnn}.npy", buf.getvalue())
    return root
