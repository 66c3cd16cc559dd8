"""Read a PyTorch ``state_dict`` checkpoint (``torch.save``) with the standard library and NumPy only.

Both on-disk formats are supported:

* the **legacy** format (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): a stream of
  pickles -- magic number, protocol version, system info, the object itself, the list of storage
  keys -- followed by each storage's raw bytes (an int64 element count, then the data) in key order;
* the **zip** format (PyTorch >= 1.6): ``<root>/data.pkl`` plus one entry ``<root>/data/<key>``
  per storage.

Tensors are rebuilt with their real strides (converted checkpoints are often not C-contiguous) and
returned as C-contiguous NumPy arrays.  Every pickle in the file (the legacy format's header
records included) goes through :class:`amr_tf.safe_io.RestrictedUnpickler` with a small allow-list
of names (``collections.OrderedDict``, the tensor rebuild helpers, the typed storage classes), so a
checkpoint cannot run arbitrary code.  The file is read into memory once (a regular file, size
bounded); storages must fit in the bytes the file holds and tensors in their storages, so a small
file cannot claim large allocations.  Everything that goes wrong raises
:class:`amr_tf.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import collections
import io
import math
import os
import struct
import zipfile
from typing import Any, Dict

import numpy as np

from amr_tf.errors import CheckpointError
from amr_tf.safe_io import MAX_PICKLE_BYTES, RestrictedUnpickler, read_bytes, restricted_load

__all__ = ["load_torch_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# storage class name -> numpy dtype; BFloat16 is read as raw uint16 and widened afterwards.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes are read after (legacy) or beside (zip) the pickle."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.type = storage_type
        self.numel = int(numel)
        self.array: np.ndarray | None = None


class _LazyTensor:
    """Arguments of ``torch._utils._rebuild_tensor_v2``, materialised once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialise(self, name: str, path: str, budget: list) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise CheckpointError(f"{path}: storage {self.storage.key!r} of tensor {name!r} was never read")
        # Stride 0 lets a tiny storage describe a huge tensor: all tensors together may not exceed
        # the bytes the file holds.
        budget[0] -= math.prod(self.size) * data.itemsize
        if budget[0] < 0:
            raise CheckpointError(f"{path}: tensor {name!r} (size {self.size}) makes the tensors larger than the "
                                  "file's data; refused")
        # Bounds check before as_strided, which would otherwise read arbitrary memory.
        if self.size and min(self.size) == 0:
            out = np.zeros(self.size, dtype=data.dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if self.offset < 0 or any(s < 0 for s in self.stride) or last >= data.size:
                raise CheckpointError(
                    f"{path}: tensor {name!r} (size {self.size}, stride {self.stride}, offset {self.offset}) "
                    f"does not fit in its storage of {data.size} elements; the file is corrupt"
                )
            item = data.itemsize
            out = np.lib.stride_tricks.as_strided(
                data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
            )
            out = np.array(out, copy=True, order="C")
        if self.storage.type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(RestrictedUnpickler):
    def __init__(self, file, path: str, storages: Dict[str, _Storage], zip_numel_from_bytes=None):
        allowed = {**_ALLOWED, **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES}}
        super().__init__(file, path, allowed, CheckpointError)
        self._path = path
        self._storages = storages
        self._zip_numel_from_bytes = zip_numel_from_bytes

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r}")
        storage_type, key, _location = pid[1], str(pid[2]), pid[3]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {storage_type!r}")
        if len(pid) >= 5:
            numel = pid[4]
            if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
                raise CheckpointError(f"{self._path}: storage {key!r} has size {numel!r}")
        elif self._zip_numel_from_bytes is not None:
            numel = self._zip_numel_from_bytes(key) // storage_type.dtype.itemsize
        else:
            raise CheckpointError(f"{self._path}: storage {key!r} has no size")
        view = pid[5] if len(pid) >= 6 else None
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type, numel)
        if view is not None:  # very old "view of a shared storage": (view_key, offset, view_size)
            raise CheckpointError(f"{self._path}: storage views (PyTorch < 0.4 checkpoints) are not supported")
        return storage


def _materialise(obj: Any, path: str, file_bytes: int) -> Dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), found {type(obj).__name__}")
    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    budget = [file_bytes]
    for name, value in obj.items():
        if isinstance(value, _LazyTensor):
            out[str(name)] = value.materialise(str(name), path, budget)
    if not out:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return out


def _load_legacy(data: bytes, path: str) -> Dict[str, np.ndarray]:
    f = io.BytesIO(data)
    try:
        # The header records are plain ints, a dict and a list: no globals at all are allowed.
        magic = restricted_load(f, path, error=CheckpointError)
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        protocol = restricted_load(f, path, error=CheckpointError)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported PyTorch legacy protocol version {protocol!r}")
        sys_info = restricted_load(f, path, error=CheckpointError)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: Dict[str, _Storage] = {}
        obj = _Unpickler(f, path, storages).load()
        keys = restricted_load(f, path, error=CheckpointError)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated/corrupt pickle stream
        raise CheckpointError(f"{path}: cannot read the PyTorch checkpoint: {exc}") from None
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: corrupt PyTorch checkpoint (the storage keys are not a list)")
    for key in keys:
        key = str(key)
        storage = storages.get(key)
        if storage is None:
            raise CheckpointError(f"{path}: storage {key!r} is listed but no tensor uses it")
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: the file ends before storage {key!r}; it is truncated")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise CheckpointError(f"{path}: storage {key!r} holds {numel} elements, the pickle says {storage.numel}")
        nbytes = numel * storage.type.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointError(f"{path}: the file ends inside storage {key!r}; it is truncated")
        storage.array = np.frombuffer(raw, dtype=storage.type.dtype)
    return _materialise(obj, path, len(data))


def _load_zip(data: bytes, path: str) -> Dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt zip checkpoint: {exc}") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkl:
            raise CheckpointError(f"{path}: zip checkpoint without data.pkl")
        root = pkl[0][: -len("data.pkl")]
        storages: Dict[str, _Storage] = {}
        # A compressed entry could expand far beyond the file (a zip bomb); PyTorch stores them plain.
        for info in zf.infolist():
            if info.file_size > len(data):
                raise CheckpointError(f"{path}: zip entry {info.filename} expands to {info.file_size} bytes, more "
                                      f"than the {len(data)}-byte file; refused")

        def nbytes(key: str) -> int:
            try:
                return zf.getinfo(f"{root}data/{key}").file_size
            except KeyError:
                raise CheckpointError(f"{path}: zip checkpoint lacks {root}data/{key}") from None

        try:
            obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), path, storages, nbytes).load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read the PyTorch checkpoint: {exc}") from None
        for key, storage in storages.items():
            entry = f"{root}data/{key}"
            try:
                raw = zf.read(entry)
            except KeyError:
                raise CheckpointError(f"{path}: zip checkpoint lacks {entry}") from None
            need = storage.numel * storage.type.dtype.itemsize
            if len(raw) < need:
                raise CheckpointError(f"{path}: {entry} holds {len(raw)} bytes, expected {need}")
            storage.array = np.frombuffer(raw[:need], dtype=storage.type.dtype)
    return _materialise(obj, path, len(data))


def load_torch_state_dict(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Return the tensors of the ``torch.save``'d state_dict at ``path`` as NumPy arrays, in file order.

    Non-tensor entries are dropped.  A checkpoint that wraps the weights as ``{"state_dict": ...}`` is
    unwrapped.  Raises :class:`CheckpointError` if the file is missing, not a PyTorch checkpoint, or
    uses features this reader does not support.
    """
    path = os.fspath(path)
    data = read_bytes(path, "a PyTorch checkpoint", CheckpointError, MAX_PICKLE_BYTES,
                      missing=f"{path}: PyTorch checkpoint not found")
    if data[:4] == b"PK\x03\x04" or zipfile.is_zipfile(io.BytesIO(data)):
        return _load_zip(data, path)
    return _load_legacy(data, path)
