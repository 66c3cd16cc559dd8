"""The one safe reader for files that could carry code, references or resource bombs.

Every file the project reads may have been crafted. This module is the only place that opens
the formats able to do harm, and each reader refuses what it does not expect instead of trying
to make sense of it:

* **regular files only** (``open_regular``): opened with ``O_NONBLOCK`` and checked with
  ``fstat`` on the open descriptor, so a FIFO, device, directory or symbolic-link loop is refused
  at once with a message that says what it is (never a hang, never "missing");
* **pickles** (``RestrictedUnpickler``): unpickled from memory with an allow-list of globals; the
  original release's pickled ``.npy`` (``read_pickled_npy``) accepts exactly an object array of
  plain numeric arrays ``[P, Q, E]``, rebuilt by this module (NumPy's own ``_reconstruct`` /
  ``ndarray`` / ``dtype`` are never called from a pickle), every array counted against the file's
  size, and no array used twice;
* **HDF5** (``open_hdf5``, ``read_hdf5_array``): opened through the already-checked descriptor;
  external links, soft links, external raw storage and virtual datasets are refused anywhere in the
  file, and an array is read only if its declared size fits in the file;
* **.npy** (``open_npy``, ``read_npy``; the header by ``read_npy_header``): plain numbers only, the
  declared size checked against the file before any data is read; rows by positioned reads
  (``read_exact``: a short read is named, never a short row) or a read-only mapping of the checked
  descriptor (C or Fortran order);
* **JSON** (``read_json``): bounded size, no ``NaN``/``Infinity``, nesting errors reported;
* **allocations** (``check_allocation``): sizes taken from flags or manifests are compared with the
  memory available before anything is allocated.

Each reader raises the caller's ``AmrError`` subclass (``error=``) with one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickle
import stat
from pathlib import Path

import numpy as np

from amr_tf.errors import AmrError

MAX_JSON_BYTES = 64 << 20  # a manifest or metrics.json is a few KB; this is far beyond any real one
MAX_PICKLE_BYTES = 8 << 30  # the original release's weights and torch checkpoints are read into memory
MAX_HDF5_OBJECTS = 100_000  # links walked in one HDF5 file before giving up


# ---------------------------------------------------------------------------- regular files


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _fail(error, message: str, missing: bool = False, corrupt: bool = False):
    """``error(message)`` marked ``missing`` (no such file) or ``corrupt`` (unreadable format)."""
    exc = error(message)
    exc.missing, exc.corrupt = missing, corrupt
    return exc


def open_regular(path, what: str = "a file", error=AmrError, missing: str | None = None):
    """Open ``path`` for binary reading if, and only if, it is a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once (instead of waiting for a writer); the
    type is then checked on the open descriptor (no race with a rename). Raises ``error`` with a
    message naming what was found: not found (``exc.missing`` is true), a dangling link, a link
    loop, a directory, a FIFO, a device, or the operating system's reason.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if path.is_symlink():
            raise _fail(error, f"{path}: is a dangling symbolic link (its target does not exist); expected {what}",
                        missing=True) from None
        raise _fail(error, missing or f"{path}: {what} not found", missing=True) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "is a symbolic link loop (or a chain of too many links)"
        elif exc.errno == errno.ENOTDIR:
            reason = "a component of the path is a file, not a directory"
        elif exc.errno == errno.EISDIR:
            reason = "is a directory"
        else:
            reason = f"cannot open ({exc.strerror or exc})"
        raise _fail(error, f"{path}: {reason}; expected {what}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _fail(error, f"{path}: is a directory; expected {what}")
        if not stat.S_ISREG(mode):
            raise _fail(error, f"{path}: is {_kind(mode)}, not a regular file; expected {what}")
        with contextlib.suppress(OSError, AttributeError):  # back to blocking reads (a regular file never blocks)
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, what: str = "a file", error=AmrError, limit: int | None = None, missing: str | None = None) -> bytes:
    """The bytes of regular file ``path`` (``open_regular``), refused when larger than ``limit``."""
    with open_regular(path, what, error, missing) as fh:
        size = os.fstat(fh.fileno()).st_size
        if limit is not None and size > limit:
            raise _fail(error, f"{Path(path)}: is {size} bytes, more than the {limit} accepted for {what}")
        try:
            return fh.read() if limit is None else fh.read(limit + 1)[: limit]
        except OSError as exc:
            raise _fail(error, f"{Path(path)}: cannot read ({exc.strerror or exc})") from None


def _article(what: str) -> str:
    """``what`` with its indefinite article ("a manifest", "an original-release weights file")."""
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes, where, what: str = "JSON file", error=AmrError):
    """``json.loads`` without NaN/Infinity, with every failure (nesting too deep included) as ``error``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _fail(error, f"{where}: corrupt {what} ({detail})") from None


def read_json(path, what: str = "JSON file", error=AmrError, limit: int = MAX_JSON_BYTES, missing: str | None = None):
    """Parse the JSON file ``path`` (a regular file of at most ``limit`` bytes)."""
    return parse_json(read_bytes(path, _article(what), error, limit, missing), Path(path), what, error)


# ---------------------------------------------------------------------------- memory


def available_memory() -> int:
    """Bytes of memory this process can still allocate (``MemAvailable``; physical memory elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 1 << 62


def check_allocation(nbytes: float, what: str, error=AmrError) -> None:
    """Raise ``error`` when ``nbytes`` (for ``what``) exceeds the memory available now."""
    available = available_memory()
    if not math.isfinite(nbytes) or nbytes > available:
        raise _fail(error, f"{what} would need {_size(nbytes)}, more than the {_size(available)} of memory "
                           "available; use smaller sizes")


def _size(nbytes: float) -> str:
    if not math.isfinite(nbytes):
        return "an unbounded amount of memory"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"


# ---------------------------------------------------------------------------- pickles


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed`` (``(module, name) -> object``).

    Anything else (``os.system``, ``builtins.eval``, NumPy's constructors...) raises ``error``
    naming the file, before it can be called. Subclasses may override ``persistent_load``; the
    default refuses persistent ids. Read from an in-memory buffer, so that no length declared in
    the pickle can make the reader allocate more than the file holds.
    """

    def __init__(self, fh, where, allowed: dict, error=AmrError, encoding: str = "ASCII"):
        super().__init__(fh, encoding=encoding)
        self._where, self._allowed, self._error = where, dict(allowed), error

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            raise _fail(self._error, f"{self._where}: refers to {module}.{name}, which is not allowed in this "
                                     "file (a crafted file?); nothing was run")
        return found

    def persistent_load(self, pid):
        raise _fail(self._error, f"{self._where}: unexpected persistent id {pid!r} in the pickle")


def restricted_load(fh, where, allowed: dict | None = None, error=AmrError, encoding: str = "ASCII"):
    """Unpickle one object from ``fh`` with ``RestrictedUnpickler`` (default: no globals at all)."""
    return RestrictedUnpickler(fh, where, allowed or {}, error, encoding).load()


class _Budget:
    """Bytes of array data a pickle may rebuild: at most what its file holds."""

    def __init__(self, limit: int, where, error):
        self.left, self.where, self.error = int(limit), where, error

    def charge(self, nbytes: int) -> None:
        self.left -= int(nbytes)
        if self.left < 0:
            raise _fail(self.error, f"{self.where}: the pickle declares more array data than the file holds "
                                    "(arrays sharing bytes?); refused")


class _NdarrayClass:
    """What the pickle's ``numpy.ndarray`` resolves to: a token, so it can only reach ``_reconstruct``."""


_NDARRAY = _NdarrayClass()
_PLAIN_KINDS = "fiub"


class _PendingDtype:
    """A dtype named in the pickle (``numpy.dtype('f4', 0, 1)``), made real after its byte order is set."""

    def __init__(self, spec, where, error):
        if not isinstance(spec, str) or len(spec) > 8:
            raise _fail(error, f"{where}: unsupported dtype {spec!r} in the pickle")
        try:
            self.dtype = np.dtype(spec)
        except TypeError:
            raise _fail(error, f"{where}: unsupported dtype {spec!r} in the pickle") from None
        if self.dtype.kind not in _PLAIN_KINDS + "O" or self.dtype.itemsize > 16 or self.dtype.fields:
            raise _fail(error, f"{where}: dtype {spec!r} is not a plain number; refused")
        self.where, self.error = where, error

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        if order not in ("<", ">", "|", "="):
            raise _fail(self.error, f"{self.where}: bad dtype byte order {order!r} in the pickle")
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)


class _PendingArray:
    """An array named in the pickle (``_reconstruct(ndarray, (0,), b'b')``), filled by its state."""

    def __init__(self, reader):
        self.reader, self.array, self.used = reader, None, False

    def __setstate__(self, state):
        r = self.reader
        if self.array is not None:
            raise _fail(r.error, f"{r.where}: an array is given two states; refused")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _fail(r.error, f"{r.where}: unexpected array state in the pickle")
        shape, dtype, fortran, data = state[-4:]
        if (not isinstance(shape, tuple) or len(shape) > 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise _fail(r.error, f"{r.where}: unexpected array shape {shape!r} in the pickle")
        if not isinstance(dtype, _PendingDtype):
            raise _fail(r.error, f"{r.where}: unexpected array dtype in the pickle")
        dtype, count = dtype.dtype, math.prod(shape)
        if dtype.kind == "O":
            self.array = self._objects(shape, data, count)
            return
        if isinstance(data, str):  # Python 2 byte strings, decoded as latin-1 by the unpickler
            data = data.encode("latin-1")
        if not isinstance(data, (bytes, bytearray)) or len(data) != count * dtype.itemsize:
            raise _fail(r.error, f"{r.where}: an array of shape {shape} ({dtype}) does not match its "
                                 f"{len(data) if isinstance(data, (bytes, bytearray)) else '?'} bytes of data")
        r.budget.charge(len(data))
        self.array = np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order="F" if fortran else "C")

    def _objects(self, shape, data, count):
        r = self.reader
        if len(shape) != 1 or count > r.max_items or not isinstance(data, list) or len(data) != count:
            raise _fail(r.error, f"{r.where}: expected a short list of arrays (at most {r.max_items}), got an "
                                 f"object array of shape {shape}")
        out = []
        for item in data:
            if not isinstance(item, _PendingArray) or item.array is None or item.array.dtype.kind == "O":
                raise _fail(r.error, f"{r.where}: the object array holds something other than numeric arrays")
            if item.used:
                raise _fail(r.error, f"{r.where}: the same array appears twice in the object array; refused")
            item.used = True
            out.append(item.array)
        return out


class _PickledNpyReader:
    """The allow-list for NumPy's pickle of an object array of plain arrays, and its bookkeeping."""

    def __init__(self, where, error, limit: int, max_items: int):
        self.where, self.error, self.max_items = where, error, max_items
        self.budget = _Budget(limit, where, error)

    def reconstruct(self, cls, shape, typecode):
        if cls is not _NDARRAY or shape != (0,):
            raise _fail(self.error, f"{self.where}: unexpected array construction in the pickle")
        return _PendingArray(self)

    def dtype(self, spec, align=0, copy=0):
        return _PendingDtype(spec, self.where, self.error)

    def allowed(self) -> dict:
        out = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): self.dtype}
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out[(module, "_reconstruct")] = self.reconstruct
        return out


def read_npy_header(fh):
    """``(shape, fortran_order, dtype)`` from an open ``.npy`` file, leaving it at the data.

    Reads the header without loading (or unpickling) anything, for every format version.
    """
    from numpy.lib import format as npformat

    version = npformat.read_magic(fh)
    if version == (1, 0):
        return npformat.read_array_header_1_0(fh)
    if version == (2, 0):
        return npformat.read_array_header_2_0(fh)
    return npformat._read_array_header(fh, version)


def read_exact(fh, offset: int, nbytes: int, where, error=AmrError) -> bytes:
    """``nbytes`` bytes at ``offset`` of the open file ``fh``; fewer is ``error`` naming ``where``.

    For readers that seek to records of a file whose size they checked when opening it: a file
    truncated since (or a record past its end) is named instead of yielding a short row.
    """
    fh.seek(offset)
    try:
        data = fh.read(nbytes)
    except OSError as exc:
        raise _fail(error, f"{where}: cannot read ({exc.strerror or exc})") from None
    if len(data) != nbytes:
        raise _fail(error, f"{where}: truncated: {len(data)} of {nbytes} bytes at byte {offset} (the file "
                           "shrank while being read?)", corrupt=True)
    return data


class NpyFile:
    """An open ``.npy`` file whose header :func:`open_npy` checked; its data not read yet.

    ``shape``, ``fortran`` (column order), ``dtype`` (plain numbers) and ``offset`` (of the data)
    come from the header; the data is known to fit in the file. Close it (or use ``with``).
    """

    def __init__(self, path: Path, fh, shape: tuple, fortran: bool, dtype: np.dtype, offset: int, error):
        self.path, self.fh, self.shape, self.fortran, self.dtype, self.offset = path, fh, shape, fortran, dtype, offset
        self._error = error

    def close(self) -> None:
        self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def mapping(self) -> np.ndarray:
        """A read-only ``np.memmap`` of the data in its stored order, from the checked descriptor
        (never by reopening the path); an empty array for zero bytes (which cannot be mapped)."""
        if math.prod(self.shape) * self.dtype.itemsize == 0:
            return np.zeros(self.shape, self.dtype)
        return np.memmap(self.fh, dtype=self.dtype, mode="r", offset=self.offset, shape=tuple(self.shape),
                         order="F" if self.fortran else "C")

    def rows(self, order, block: int = 256):
        """``(rows, where)`` for the rows ``order`` of a 2-D array, in that order.

        C order: one positioned read per row (:func:`read_exact`), since a mapping would count
        read-ahead pages as this process's memory; Fortran order, whose rows are not contiguous:
        blocks of ``block`` rows gathered through :meth:`mapping`.
        """
        if self.fortran:
            arr = self.mapping()
            for start in range(0, len(order), block):
                yield arr[order[start:start + block]], f"{self.path}"
            return
        row_bytes = self.dtype.itemsize * self.shape[1]
        for row in np.asarray(order).tolist():
            where = f"{self.path}, row {row}"
            data = read_exact(self.fh, self.offset + row * row_bytes, row_bytes, where, self._error)
            yield np.frombuffer(data, dtype=self.dtype), where


def open_npy(path, what: str = "a .npy array", error=AmrError, missing: str | None = None,
             expected: str | None = None) -> NpyFile:
    """Open the ``.npy`` file ``path`` (a regular file) and check its header; the data is not read.

    The header is checked against the file's size before any data is touched, so a truncated
    file (or a corrupt header claiming a huge shape) is named instead of allocating memory for
    it; object (pickled) dtypes are refused. ``what`` names the file expected where it cannot be
    opened, ``expected`` (default ``what``) the content expected where it cannot be read.
    """
    path = Path(path)
    fh = open_regular(path, what, error, missing=missing)
    what = expected or what
    try:
        size = os.fstat(fh.fileno()).st_size
        magic = fh.read(6)
        if size == 0:
            raise _fail(error, f"{path}: file is empty; expected {what}", corrupt=True)
        if magic != b"\x93NUMPY":
            if magic.startswith(b"PK"):
                kind = "a .npz/zip archive"
            elif magic[:1] == b"\x80":
                kind = ("a pickled Python object (pickled files are only accepted for the original release's "
                        "weights, see load_original_npy)")
            else:
                kind = "not a .npy file (no NumPy header)"
            raise _fail(error, f"{path}: {kind}; expected {what} (np.save)", corrupt=True)
        fh.seek(0)
        try:
            shape, fortran, dtype = read_npy_header(fh)
        except Exception as exc:  # noqa: BLE001 - NumPy raises ValueError, SyntaxError, TokenError...
            raise _fail(error, f"{path}: corrupt or truncated .npy header ({exc})", corrupt=True) from None
        if dtype.hasobject:
            raise _fail(error, f"{path}: contains pickled Python objects (dtype {dtype}); expected a plain numeric "
                               "array (pickled files are only accepted for the original release's weights, see "
                               "load_original_npy)", corrupt=True)
        offset = fh.tell()
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        available = size - offset
        if available < nbytes:
            raise _fail(error, f"{path}: truncated: the header declares a {dtype} array of shape {shape} "
                               f"({nbytes} bytes of data) but only {available} bytes follow (file not fully "
                               "written?)", corrupt=True)
        return NpyFile(path, fh, tuple(shape), bool(fortran), dtype, offset, error)
    except BaseException:
        fh.close()
        raise


def read_npy(path, what: str = "a .npy array", error=AmrError, missing: str | None = None,
             mmap: bool = False, expected: str | None = None) -> np.ndarray:
    """A plain numeric ``.npy`` array (``np.load(allow_pickle=False)``), every way it can be bad an ``error``.

    Opened and checked by :func:`open_npy` (same ``what``, ``missing``, ``expected``). ``mmap=True``
    returns a read-only ``np.memmap`` of the already-opened regular file (C order only), so that a
    large feature matrix is paged in from disk as rows are read instead of being loaded whole.
    """
    with open_npy(path, what, error, missing, expected) as npy:
        if mmap:
            if npy.fortran and len(npy.shape) > 1:
                raise _fail(error, f"{npy.path}: stored in Fortran (column) order, which cannot be read by rows; "
                                   "re-save it in C (row) order, e.g. from numpy.ascontiguousarray(array)")
            return npy.mapping()
        npy.fh.seek(0)
        try:
            return np.load(npy.fh, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any failure here is the file's
            raise _fail(error, f"{npy.path}: not a valid .npy file ({exc})", corrupt=True) from None


def read_pickled_npy(path, what: str = "weights file", error=AmrError, max_items: int = 16) -> list[np.ndarray]:
    """The arrays of a ``.npy`` file holding a pickled object array of plain numeric arrays.

    This is the original release's weights format (``[P, Q, E]``, written from Python 2). A
    ``.npy`` of plain numbers is read too (one array per row of its first axis). Nothing but
    the arrays is rebuilt; their data must come from the file itself (bytes counted, no array
    twice), so a small file cannot claim large allocations.
    """
    path = Path(path)
    data = read_bytes(path, _article(what), error, MAX_PICKLE_BYTES, missing=f"{path}: {what} not found")
    check_allocation(2 * len(data), f"{path}: reading this {len(data)}-byte file", error)
    fh = io.BytesIO(data)
    try:
        shape, fortran, dtype = read_npy_header(fh)
    except Exception as exc:  # noqa: BLE001 - NumPy raises ValueError, SyntaxError... on a bad header
        raise _fail(error, f"{path}: not a readable {what} ({exc})") from None
    left = len(data) - fh.tell()
    if not dtype.hasobject:
        if dtype.kind not in _PLAIN_KINDS or math.prod(shape) * dtype.itemsize > left:
            raise _fail(error, f"{path}: the header declares a {dtype} array of shape {shape}, which the "
                               f"{left} bytes of data cannot hold")
        fh.seek(0)
        try:
            return list(np.load(fh, allow_pickle=False))
        except Exception as exc:  # noqa: BLE001
            raise _fail(error, f"{path}: not a readable {what} ({exc})") from None
    if dtype != np.dtype(object) or len(shape) != 1 or shape[0] > max_items:
        raise _fail(error, f"{path}: expected a short object array of matrices, the header declares {dtype} "
                           f"of shape {shape}")
    reader = _PickledNpyReader(path, error, left, max_items)
    try:
        obj = restricted_load(fh, path, reader.allowed(), error, encoding="latin1")
    except AmrError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise _fail(error, f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, _PendingArray) or not isinstance(obj.array, list) or len(obj.array) != shape[0]:
        raise _fail(error, f"{path}: expected an object array of {shape[0]} numeric arrays")
    return obj.array


def write_pickled_npy(path, arrays: np.ndarray) -> None:
    """Write an object array of plain arrays as a ``.npy`` (the original release's format), atomically.

    The writing counterpart of ``read_pickled_npy``, kept here so that every pickle is in one module.
    """
    from amr_tf.io import atomic_write_npy

    if arrays.dtype != np.dtype(object) or any(np.asarray(a).dtype.kind not in _PLAIN_KINDS for a in arrays):
        raise TypeError("write_pickled_npy writes an object array of numeric arrays only")
    atomic_write_npy(path, arrays, allow_pickle=True)


# ---------------------------------------------------------------------------- HDF5


def _check_hdf5_links(f, where, error) -> None:
    """Refuse external/soft links, external storage and virtual datasets anywhere in open file ``f``."""
    import h5py

    seen, stack = 0, [f]
    while stack:
        group = stack.pop()
        for name in group:
            seen += 1
            if seen > MAX_HDF5_OBJECTS:
                raise _fail(error, f"{where}: holds more than {MAX_HDF5_OBJECTS} objects; refused")
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise _fail(error, f"{where}: {group.name.rstrip('/')}/{name} is an external link to "
                                   f"{link.filename}; refused (checkpoints never link to other files)")
            if not isinstance(link, h5py.HardLink):
                raise _fail(error, f"{where}: {group.name.rstrip('/')}/{name} is a {type(link).__name__}; "
                                   "refused (checkpoints hold only plain groups and arrays)")
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                stack.append(obj)
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise _fail(error, f"{where}: {obj.name} keeps its data in external file(s) "
                                       f"{[e[0] for e in obj.external]}; refused")
                if obj.is_virtual:
                    raise _fail(error, f"{where}: {obj.name} is a virtual dataset (data from other files); refused")


@contextlib.contextmanager
def open_hdf5(path, what: str = "weights file", error=AmrError, missing: str | None = None):
    """Open the HDF5 file ``path`` read-only through a checked descriptor, after refusing links out of it.

    Yields the ``h5py.File``; every failure of the format is ``error`` naming the file.
    """
    import h5py

    path = Path(path)
    fh = open_regular(path, _article(what), error, missing)
    with fh:
        try:
            f = h5py.File(fh, "r")
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError, ValueError... on damage
            raise _fail(error, f"{path}: truncated or corrupt {what} ({exc})", corrupt=True) from None
        with f:
            try:
                _check_hdf5_links(f, path, error)
            except AmrError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _fail(error, f"{path}: truncated or corrupt {what} ({exc})", corrupt=True) from None
            f.file_size = os.fstat(fh.fileno()).st_size
            yield f


def check_hdf5(path, what: str = "weights file", error=AmrError, missing: str | None = None) -> None:
    """Raise unless ``path`` is a regular HDF5 file without links, external storage or virtual data.

    For readers that must open the file by name themselves (Keras' ``load_weights``).
    """
    with open_hdf5(path, what, error, missing):
        pass


def read_hdf5_array(f, name: str, where, error=AmrError) -> np.ndarray:
    """Array ``name`` of the file ``open_hdf5`` yielded: plain numbers whose declared size fits the file."""
    import h5py

    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise _fail(error, f"{where}: {name} is missing or not an array")
    if obj.dtype.kind not in _PLAIN_KINDS:
        raise _fail(error, f"{where}: {name} has dtype {obj.dtype}, expected numbers")
    nbytes = math.prod(obj.shape or ()) * obj.dtype.itemsize
    if nbytes > getattr(f, "file_size", nbytes):
        raise _fail(error, f"{where}: {name} declares {nbytes} bytes of data, more than the file's "
                           f"{f.file_size} (compressed or corrupt); refused")
    try:
        return np.asarray(obj[()])
    except Exception as exc:  # noqa: BLE001
        raise _fail(error, f"{where}: cannot read {name} ({exc})") from None


def read_hdf5_attribute(f, name: str, where, error=AmrError, limit: int = MAX_JSON_BYTES):
    """Root attribute ``name`` of an open file as ``str`` (``None`` when absent or not text)."""
    if name not in f.attrs:
        return None
    value = f.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    if len(value) > limit:
        raise _fail(error, f"{where}: attribute {name} is larger than {limit} bytes; refused")
    return value


def write_hdf5_attribute(tmp, name: str, text: str) -> None:
    """Store ``text`` as root attribute ``name`` of the temporary HDF5 file ``tmp`` this process just wrote."""
    import h5py

    with h5py.File(tmp, "a") as f:
        f.attrs[name] = text


def release_space(tmp) -> None:
    """Truncate the temporary file ``tmp`` to nothing (a failed write: its space goes back to the disk).

    Through a descriptor of our own, not HDF5's: a handle left open by a writer that failed stays
    valid and can then close (flush) cleanly instead of failing again on a full disk.
    """
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
