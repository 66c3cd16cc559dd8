"""Resumable feature extraction: :func:`amr_tf.vision.features.extract_features` in cached chunks.

Extracting CNN features of a large catalogue can run for hours. ``extract_cached`` splits the
image list into chunks of ``chunk`` images; each finished chunk is saved (atomically) in
``cache_dir`` under a key that hashes the image bytes of the chunk in order, the feature
extractor's identity and the batch size (float rounding may differ between batch sizes). A rerun
after an interruption loads the finished chunks and extracts only the rest; a changed image only
invalidates its own chunk. Chunks are yielded in order, so a caller can stream them to disk.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from amr_tf.errors import DataError
from amr_tf.io import atomic_write_npy

__all__ = ["DEFAULT_CHUNK", "extract_cached"]

DEFAULT_CHUNK = 256
# Bump when the extractor's output changes (weights, preprocessing): old cache entries then miss.
_EXTRACTOR_ID = "efficientnet-lite0-imagenet-gap1280-centre224/256-v1"


def _chunk_key(paths: Sequence[str], batch_size: int) -> str:
    h = hashlib.sha256(f"{_EXTRACTOR_ID}|batch={batch_size}|n={len(paths)}".encode())
    for p in paths:
        try:
            with open(p, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        except OSError as exc:
            raise DataError(f"{p}: cannot read image ({exc.strerror or exc})") from None
    return h.hexdigest()


def _load_entry(path: Path, rows: int, dim: int) -> np.ndarray | None:
    """A finished chunk, or None when it is absent or unusable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001 - a damaged entry is recomputed, not trusted
        return None
    if arr.shape != (rows, dim) or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    return arr


def extract_cached(image_paths: Sequence, cache_dir: str | os.PathLike, batch_size: int = 32,
                   chunk: int = DEFAULT_CHUNK, progress: bool = True, model=None) -> Iterator[np.ndarray]:
    """Yield float32 ``(n, 1280)`` feature blocks for ``image_paths`` in order, ``chunk`` images at a
    time, reusing and filling the cache in ``cache_dir`` (see the module docstring). The CNN is built
    only if some chunk is not cached. Shows one tqdm bar over all images when ``progress``."""
    from tqdm import tqdm

    from amr_tf.vision.efficientnet_lite import FEATURE_DIM
    from amr_tf.vision.features import extract_features

    paths = [os.fspath(p) for p in image_paths]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(paths), unit="img", desc="features", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            entry = cache / f"{_chunk_key(part, batch_size)}.npy"
            feats = _load_entry(entry, len(part), FEATURE_DIM)
            if feats is None:
                if model is None:
                    from amr_tf.vision.efficientnet_lite import build_feature_extractor

                    model = build_feature_extractor(weights="imagenet")
                feats = extract_features(part, batch_size=batch_size, progress=False, model=model)
                atomic_write_npy(entry, feats)
            bar.update(len(part))
            yield feats
