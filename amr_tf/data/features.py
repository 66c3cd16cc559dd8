"""Item features held once, as stored: the raw matrix (memory-mapped) and the global max it is divided by.

The original divides the whole feature matrix by its single global ``max |value|``. Holding that
normalised matrix as float32 costs twice the float16 file it comes from, and the dataset object and
the model each used to hold one. :class:`ItemFeatures` instead keeps the file's own array (a
read-only ``np.memmap`` of ``f_<cnn>.npy``, float16 for the shipped data) and the scale, computed
once; rows are cast to float32 and divided by the scale only when they are read. Because the
original's normalisation is ``float32(raw) / float32(scale)`` elementwise, any row read this way
equals, bit for bit, the same row of the float32 matrix the project used to build whole.

:class:`ItemFeatures` behaves as that float32 matrix where code needs one (``np.asarray(f)``,
``f[rows]``, ``f @ E``, ``f.shape``), materialising only what is asked for; the training path hands
it to the model, which keeps the raw rows resident on the device (:mod:`amr_tf.models.vbpr`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from amr_tf.errors import DataError
from amr_tf.safe_io import read_npy

CHUNK_BYTES = 32 << 20  # rows are scanned and copied in blocks of about this many bytes


def row_chunks(num_rows: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES):
    """``(start, stop)`` row ranges of about ``chunk_bytes`` each, covering ``0..num_rows``."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    return [(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]


def release_rows(array, start: int, stop: int) -> None:
    """Tell the kernel that rows ``start:stop`` of a memory-mapped ``array`` are no longer needed.

    Pages of a file mapping that were read count in the process's resident set until the
    mapping goes; after one pass over a multi-gigabyte file that would double the peak memory
    (the mapping plus the copy made from it). ``MADV_DONTNEED`` drops them from this process (the
    page cache keeps them for a later read). A no-op for anything but a ``np.memmap``.
    """
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row = array.strides[0]
    base = array.offset if hasattr(array, "offset") else 0
    first = base + start * row
    last = base + stop * row
    page = mmap.PAGESIZE
    lo = -(-first // page) * page  # only whole pages inside the range (neighbours may still be in use)
    hi = (last // page) * page
    if hi > lo:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


class ItemFeatures(NDArrayOperatorsMixin):
    """A (items x F) feature matrix: raw values as stored, read as ``float32(raw) / scale``.

    ``raw`` is any 2-D numeric array (a read-only memmap for a loaded dataset); ``scale`` is the
    global ``max |float32(raw)|`` (computed here, once, when not given). As a NumPy operand it is
    the normalised float32 matrix (``np.asarray`` builds it); ``f[key]`` normalises only the
    rows it selects; :meth:`chunks` streams it by row blocks.
    """

    def __init__(self, raw, scale: float | None = None, source: str | None = None):
        if raw.ndim != 2:
            raise DataError(f"{source or 'features'}: features must be 2-D (items x dims), got shape {raw.shape}")
        self.raw = raw
        self.source = source
        self.scale = np.float32(_global_max(raw, source) if scale is None else scale)
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise DataError(f"{source or 'features'}: scale must be a positive finite number, got {self.scale}")

    # ----------------------------------------------------------------- the array it stands for
    shape = property(lambda self: tuple(self.raw.shape))
    ndim = 2
    dtype = np.dtype(np.float32)
    size = property(lambda self: int(self.raw.shape[0]) * int(self.raw.shape[1]))
    nbytes = property(lambda self: 4 * self.size)  # of the float32 matrix it stands for

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def normalise(self, raw_rows) -> np.ndarray:
        """``float32(raw_rows) / scale``: the original's normalisation, on some rows only."""
        with np.errstate(over="ignore"):
            out = np.asarray(raw_rows).astype(np.float32)
        out /= self.scale
        return out

    def __getitem__(self, key) -> np.ndarray:
        return self.normalise(self.raw[key])

    def first_rows(self, n: int) -> "ItemFeatures":
        """The first ``n`` rows, held the same way (a view of the file) and scaled by the same global max."""
        return self if n >= len(self) else ItemFeatures(self.raw[:n], scale=self.scale, source=self.source)

    def chunks(self, chunk_bytes: int = CHUNK_BYTES):
        """Yield ``(start, stop, rows)``: the normalised float32 rows by blocks, releasing mapped pages after each."""
        for start, stop in row_chunks(len(self), 4 * self.shape[1], chunk_bytes):
            yield start, stop, self.normalise(self.raw[start:stop])
            release_rows(self.raw, start, stop)

    def raw_chunks(self, chunk_bytes: int = CHUNK_BYTES):
        """Yield ``(start, stop, raw rows)`` (a copy, in the stored dtype), releasing mapped pages after each."""
        for start, stop in row_chunks(len(self), self.raw.dtype.itemsize * self.shape[1], chunk_bytes):
            yield start, stop, np.array(self.raw[start:stop])
            release_rows(self.raw, start, stop)

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.float32)
        for start, stop, rows in self.chunks():
            out[start:stop] = rows
        return out if dtype is None else out.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's operators and ufuncs (``f @ E``, ``f + d``...) on the normalised float32 matrix."""
        inputs = tuple(np.asarray(x) if isinstance(x, ItemFeatures) else x for x in inputs)
        out = kwargs.get("out")
        if out:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, ItemFeatures) else x for x in out)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    def copy(self) -> np.ndarray:
        return np.asarray(self)

    def update_hash(self, h) -> None:
        """Feed ``h`` exactly what hashing the float32 matrix's dtype, shape and bytes would (chunked)."""
        h.update(b"float32" + str(self.shape).encode())
        for _, _, rows in self.chunks():
            h.update(rows.tobytes())

    def __repr__(self) -> str:
        return (f"ItemFeatures({self.shape[0]} x {self.shape[1]}, stored {self.raw.dtype}"
                f"{' memory-mapped' if isinstance(self.raw, np.memmap) else ''}, scale {float(self.scale)!r})")


def _global_max(raw, source) -> float:
    """The original's scale, ``max |float32(raw)|``, in one chunked pass that also checks every value."""
    where = source or "features"
    if raw.dtype.kind not in "fiu":
        raise DataError(f"{where}: features must be a numeric (float or int) array, got dtype {raw.dtype}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise DataError(f"{where}: features have shape {raw.shape}; expected at least one item and one dimension")
    best = np.float32(0.0)
    # Small blocks: the checks below make a few temporaries of a block's size each.
    for start, stop in row_chunks(raw.shape[0], raw.dtype.itemsize * raw.shape[1], CHUNK_BYTES // 4):
        block = np.asarray(raw[start:stop])
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            r, c = np.argwhere(~np.isfinite(block))[0]
            raise DataError(f"{where}: row {start + r}, column {c} is {block[r, c]}; features must be finite")
        if block.dtype == np.float16:  # float16 -> float32 is exact: the max of the raw values is the same number
            best = max(best, np.float32(np.abs(block).max()))
        else:
            with np.errstate(over="ignore"):
                cast = block.astype(np.float32)
            if not np.isfinite(cast).all():
                r, c = np.argwhere(~np.isfinite(cast))[0]
                raise DataError(f"{where}: row {start + r}, column {c} is {block[r, c]}, beyond float32's range; "
                                "rescale the features")
            best = max(best, np.abs(cast).max())
        release_rows(raw, start, stop)
    if best == 0.0:
        raise DataError(f"{where}: all features are zero; cannot normalise by the global max |value|")
    return best


def read_feature_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """A feature ``.npy`` through :func:`amr_tf.safe_io.read_npy` (memory-mapped unless ``mmap=False``),
    with the feature file's messages (``DataError``)."""
    path = Path(path)
    return read_npy(path, "a .npy feature file", DataError, missing=f"{path}: feature file not found", mmap=mmap,
                    expected="a .npy array of item features")


def load_item_features(path: str | os.PathLike) -> ItemFeatures:
    """An item-feature ``.npy`` as :class:`ItemFeatures`: memory-mapped (through :func:`amr_tf.safe_io.read_npy`),
    every value checked and the global max |value| computed in one pass, nothing held in memory."""
    path = Path(path)
    raw = read_feature_npy(path)
    if raw.dtype.kind not in "fiu":
        raise DataError(f"{path}: features must be a numeric (float or int) array, got dtype {raw.dtype}")
    if raw.ndim != 2:
        raise DataError(f"{path}: features must be 2-D (items x dims), got shape {raw.shape}")
    return ItemFeatures(raw, source=str(path))


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Load an item-feature ``.npy``, validate it and divide by the global max |value| (as the original):
    the whole normalised float32 matrix in memory (see :func:`load_item_features` for the held-once form)."""
    return np.asarray(load_item_features(path))
